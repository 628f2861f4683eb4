"""The aiohttp application of the local web UI: a client of :class:`chargepoint.api.StationApi` only.

Requests never wait on the control loop's work beyond an API call, and the control loop never waits on a
browser: live updates come from :meth:`StationApi.subscribe` (a bounded queue per browser; the API drops the
oldest state change when it is full), are coalesced into at most :data:`LIVE_MIN_INTERVAL_S` per browser, and
a browser that does not read its stream within :data:`WRITE_TIMEOUT_S` is disconnected.

Security (README "Web UI"): a session cookie (HttpOnly, SameSite=Strict, Secure over HTTPS) and a per-session
CSRF token checked on every POST, plus the Origin header when the browser sends one; roles from
:class:`chargepoint.api.Role` (anonymous = viewer only when ``[web] viewer = true``); login failures limited
per client and overall; scrypt verification in a worker thread, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from chargepoint.api import CommandError, CommandResult, Role, StationApi
from chargepoint.frontends.web import pages
from chargepoint.frontends.web.auth import LoginLimiter, SessionStore, WebSession, csrf_ok, verify_password
from chargepoint.frontends.web.config import WebConfig
from chargepoint.frontends.web.forms import (
    FormError,
    field,
    parse_amps,
    parse_connector_id,
    parse_id_tag,
    parse_switch,
)

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
COOKIE = "cp_session"
LIVE_MIN_INTERVAL_S = 0.1  # at most 10 live updates per second per browser
KEEPALIVE_S = 15.0
WRITE_TIMEOUT_S = 10.0
MAX_EVENT_STREAMS = 16
SUBSCRIPTION_SIZE = 64
COMMAND_TIMEOUT_S = 30.0
MAX_BODY = 256 * 1024  # the installer's configuration edit is the largest form

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")

CODE_STATUS = {
    CommandError.UNKNOWN_CONNECTOR: 404,
    CommandError.BAD_VALUE: 400,
    CommandError.NOT_PERMITTED: 403,
    CommandError.NOT_POSSIBLE: 409,
}

KEY: web.AppKey[WebUi] = web.AppKey("webui")
SESSION: web.RequestKey[WebSession | None] = web.RequestKey("session", WebSession)  # type: ignore[arg-type]
NEW_SESSION: web.RequestKey[WebSession] = web.RequestKey("new_session", WebSession)
FORM: web.RequestKey[Any] = web.RequestKey("form", object)


@dataclasses.dataclass
class WebContext:
    """What the installer and sessions pages may need beyond the API (all optional)."""

    config_path: str | None = None  # the installer pages read and check this file
    state_dir: str | None = None
    status_socket: str | None = None  # `chargepoint diagnostics` asks the controller through it
    history: Any = None  # sessions_page.SessionHistory (chargepoint.sessions), None: no history page


class WebUi:
    #: The header's links (None: the charge point's, by role) and the login page's hint when no admin
    #: password is configured; the local controller's site page (chargepoint.localcontroller.web) sets both.
    nav: tuple[tuple[str, str], ...] | None = None
    no_password_hint = "No admin password is set: run `sudo chargepoint set-password` and restart the service."

    def __init__(self, api: StationApi, config: WebConfig, context: WebContext | None = None) -> None:
        self.api = api
        self.config = config
        self.context = context or WebContext()
        self.sessions = SessionStore()
        self.limiter = LoginLimiter()
        self._verify_lock = asyncio.Lock()
        self.streams = 0
        self.closing = asyncio.Event()
        self.live: set[asyncio.Event] = set()  # one per open event stream; all set at shutdown

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    def session(self, request: web.Request, *, create: bool = False) -> WebSession | None:
        s = request.get(SESSION)
        if s is None:
            s = self.sessions.get(request.cookies.get(COOKIE), self.now())
            if s is None and create:
                s = self.sessions.new(self.now())
                request[NEW_SESSION] = s
            request[SESSION] = s
        return s

    def role(self, request: web.Request) -> Role | None:
        s = self.session(request)
        if s is not None and s.role is not None:
            return s.role
        return Role.VIEWER if self.config.viewer else None

    def csrf(self, request: web.Request) -> str:
        s = self.session(request, create=True)
        assert s is not None
        return s.csrf

    def html(self, text: str, status: int = 200) -> web.Response:
        return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")

    def reply(self, request: web.Request, ok: bool, message: str, status: int = 200,
              back: str = "/") -> web.Response:
        """JSON for the page's JavaScript (it asks with ``Accept: application/json``), HTML otherwise."""
        if "application/json" in request.headers.get("Accept", ""):
            return web.json_response({"ok": ok, "message": message}, status=status)
        title = "Done" if ok else ("Refused" if status < 500 else "Error")
        return self.html(pages.message_page(title, message, role=self.role(request),
                                            csrf=self.csrf(request), ok=ok, back=back, nav=self.nav), status)

    def need(self, request: web.Request, role: Role) -> Role:
        have = self.role(request)
        if have is None or have < role:
            if have is None or have == Role.VIEWER:
                raise FormError(401, "log in first")
            raise FormError(403, f"the {pages.ROLE_NAMES[role]} role is needed for this")
        return have

    def redirect(self, location: str) -> web.Response:
        return web.Response(status=303, headers={"Location": location})

    # ------------------------------------------------------------------ pages
    async def status_page(self, request: web.Request) -> web.Response:
        role = self.role(request)
        if role is None:
            return self.redirect("/login?next=/")
        return self.html(pages.status_page(self.api.snapshot(), role=role, csrf=self.csrf(request)))

    async def status_json(self, request: web.Request) -> web.Response:
        if self.role(request) is None:
            raise FormError(401, "log in first")
        return web.json_response(dataclasses.asdict(self.api.snapshot()))

    def live_payload(self) -> str:
        s = self.api.snapshot()
        return json.dumps({"station": pages.station_live(s),
                           **{f"c{c.id}": pages.connector_live(c) for c in s.connectors}})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: one ``snapshot`` event (the live blocks, rendered) after each burst of
        changes, coalesced to :data:`LIVE_MIN_INTERVAL_S`; a comment line every :data:`KEEPALIVE_S`."""
        if self.role(request) is None:
            raise FormError(401, "log in first")
        if self.streams >= MAX_EVENT_STREAMS:
            raise FormError(429, "too many live pages open; close one")
        self.streams += 1
        sub = self.api.subscribe(maxsize=SUBSCRIPTION_SIZE)
        dirty = asyncio.Event()

        async def read() -> None:
            async for _change in sub:
                dirty.set()

        reader = asyncio.create_task(read(), name="web-sse-reader")
        self.live.add(dirty)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        loop = asyncio.get_running_loop()
        try:
            await resp.prepare(request)
            chunk = _sse(self.live_payload())
            while not self.closing.is_set():
                async with asyncio.timeout(WRITE_TIMEOUT_S):  # a browser that does not read is dropped
                    await resp.write(chunk)
                last = loop.time()
                try:
                    async with asyncio.timeout(KEEPALIVE_S):
                        await dirty.wait()
                except TimeoutError:
                    chunk = b": keepalive\n\n"
                    continue
                wait = last + LIVE_MIN_INTERVAL_S - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                dirty.clear()
                chunk = _sse(self.live_payload())
        except (ConnectionResetError, TimeoutError, asyncio.CancelledError):
            pass
        finally:
            self.live.discard(dirty)
            reader.cancel()
            sub.close()
            self.streams -= 1
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        return resp

    # ------------------------------------------------------------------ login
    async def login_form(self, request: web.Request) -> web.Response:
        nxt = request.query.get("next", "/")
        message = "" if self.config.password_hash else self.no_password_hint
        return self.html(pages.login_page(csrf=self.csrf(request), next_url=_local(nxt), message=message,
                                          nav=self.nav))

    async def login(self, request: web.Request) -> web.Response:
        form = request[FORM]
        client = request.remote or "?"
        nxt = _local(field(form, "next"))
        wait = self.limiter.retry_after(client, self.now())
        if wait > 0:
            resp = self.html(pages.login_page(csrf=self.csrf(request), next_url=nxt, nav=self.nav,
                                              message=f"Too many failed logins: try again in {wait:.0f} s."), 429)
            resp.headers["Retry-After"] = str(int(wait) + 1)
            return resp
        password = form.get("password", "")
        role: Role | None = None
        if isinstance(password, str) and password:
            async with self._verify_lock:  # one scrypt at a time: logins never eat both cores
                for r, stored in ((Role.ADMIN, self.config.password_hash),
                                  (Role.USER, self.config.user_password_hash)):
                    if stored and await asyncio.to_thread(verify_password, password, stored):
                        role = r
                        break
        if role is None:
            self.limiter.failed(client, self.now())
            log.warning("web UI: failed login from %s", client)
            return self.html(pages.login_page(csrf=self.csrf(request), next_url=nxt, nav=self.nav,
                                              message="Wrong password."), 401)
        s = self.sessions.login(self.session(request), role, self.now())
        request[SESSION] = s
        request[NEW_SESSION] = s
        log.info("web UI: %s logged in from %s", pages.ROLE_NAMES[role], client)
        return self.redirect(nxt)

    async def logout(self, request: web.Request) -> web.Response:
        s = self.session(request)
        if s is not None:
            self.sessions.logout(s)
        resp = self.redirect("/")
        resp.del_cookie(COOKIE, path="/")
        return resp

    # ------------------------------------------------------------------ commands
    async def command(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        needed = Role.ADMIN if action == "clear-fault" else Role.USER
        role = self.need(request, needed)
        cid = parse_connector_id(request.match_info["cid"])
        form = request[FORM]
        snapshot = self.api.snapshot()
        if snapshot.connector(cid) is None:
            raise FormError(404, f"no connector {cid}: this charge point has "
                                 + ", ".join(str(c.id) for c in snapshot.connectors))
        call: Callable[[], Awaitable[CommandResult]]
        if action == "start":
            tag = parse_id_tag(field(form, "id_tag"))
            if tag is None and not snapshot.free_vend:
                raise FormError(400, "give an id tag (free vend is not enabled on this charger)")
            call = lambda: self.api.start_session(cid, tag, role=role)  # noqa: E731
        elif action == "stop":
            call = lambda: self.api.stop_session(cid, role=role)  # noqa: E731
        elif action == "limit":
            amps = parse_amps(field(form, "amps"))
            call = lambda: self.api.set_local_limit(cid, amps, role=role)  # noqa: E731
        elif action == "available":
            available = parse_switch(field(form, "available", required=True))
            call = lambda: self.api.set_available(cid, available, role=role)  # noqa: E731
        elif action == "clear-fault":
            call = lambda: self.api.clear_fault(cid, role=role)  # noqa: E731
        elif action == "charge-now":  # override the off-peak schedule for this session
            on = parse_switch(field(form, "on", required=True), "on")
            charge_now = getattr(self.api, "charge_now", None)
            if charge_now is None:
                raise FormError(409, "this charger has no off-peak schedule to override")
            call = lambda: charge_now(cid, on, role=role)  # noqa: E731
        else:
            raise FormError(404, f"no such command {action[:30]!r}")
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                result = await call()
        except CommandError as exc:
            return self.reply(request, False, exc.message, CODE_STATUS.get(exc.code, 400))
        except TimeoutError:
            return self.reply(request, False, "the charger did not answer in time; see the status", 504)
        log.info("web UI: %s %s on connector %d: %s", pages.ROLE_NAMES[role], action, cid,
                 "accepted" if result.accepted else f"refused ({result.message})")
        if result.accepted:
            return self.reply(request, True, result.message or f"{action}: done")
        return self.reply(request, False, result.message or f"{action}: refused", 409)

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ("app.js", "style.css"):
            raise FormError(404, "not found")
        resp = web.FileResponse(STATIC_DIR / name)
        resp.headers["Cache-Control"] = "max-age=300"
        return resp


def _sse(payload: str) -> bytes:
    return b"event: snapshot\ndata: " + payload.encode() + b"\n\n"


def _local(url: str) -> str:
    """Only a path on this server as the target after a login (no open redirect)."""
    if not url.startswith("/") or url.startswith("//") or "\\" in url or any(ord(ch) < 32 for ch in url):
        return "/"
    return quote(url, safe="/?=&-_.~%")


@web.middleware
async def _middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    ui: WebUi = request.app[KEY]
    try:
        if request.method == "POST":
            await _check_post(ui, request)
        resp = await handler(request)
    except FormError as exc:
        resp = ui.reply(request, False, exc.message, exc.status)
    except web.HTTPException as exc:
        if exc.status >= 500:
            raise
        resp = ui.reply(request, False, exc.reason or "refused", exc.status)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("web UI: %s %s failed", request.method, request.path)
        resp = web.json_response({"ok": False, "message": "internal error (logged)"}, status=500)
    new = request.get(NEW_SESSION)
    if new is not None and not resp.prepared:
        resp.set_cookie(COOKIE, new.sid, httponly=True, samesite="Strict", secure=ui.config.tls, path="/")
    if not resp.prepared:
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault("Cache-Control", "no-store")
    return resp


async def _check_post(ui: WebUi, request: web.Request) -> None:
    """Every POST: a same-origin request (Origin, when sent), a form body, the session's CSRF token."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise FormError(403, "cross-site request refused")
    ctype = request.content_type
    if ctype not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise FormError(415, "send a form (application/x-www-form-urlencoded or multipart/form-data)")
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge:
        raise FormError(413, "the form is too large") from None
    except Exception:
        raise FormError(400, "malformed form") from None
    request[FORM] = form
    token = request.headers.get("X-CSRF-Token")
    if token is None:
        value = form.get("csrf")
        token = value if isinstance(value, str) else None
    if not csrf_ok(ui.session(request), token):
        raise FormError(403, "missing or wrong CSRF token: reload the page and try again")


def make_base_app(ui: WebUi) -> web.Application:
    """What every web UI of this project shares: the middleware (session cookie, CSRF, security headers,
    errors), ``ui.status_page`` at ``/``, ``/status.json``, the live ``/events``, login/logout and the
    static files. :func:`make_app` adds the charge point's commands and pages; the local controller's
    site page (chargepoint.localcontroller.web) nothing."""
    app = web.Application(middlewares=[_middleware], client_max_size=MAX_BODY)
    app[KEY] = ui

    async def on_shutdown(app: web.Application) -> None:
        ui.closing.set()
        for dirty in ui.live:
            dirty.set()

    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/", ui.status_page)
    app.router.add_get("/status.json", ui.status_json)
    app.router.add_get("/events", ui.events)
    app.router.add_get("/login", ui.login_form)
    app.router.add_post("/login", ui.login)
    app.router.add_post("/logout", ui.logout)
    app.router.add_get("/static/{name}", ui.static)
    return app


def make_app(api: StationApi, config: WebConfig, context: WebContext | None = None) -> web.Application:
    context = context or WebContext()
    if context.history is None:  # the API's session history, when the implementation keeps one
        context = dataclasses.replace(context, history=getattr(api, "history", None))
    ui = WebUi(api, config, context)
    app = make_base_app(ui)
    app.router.add_post("/connectors/{cid}/{action}", ui.command)
    from chargepoint.frontends.web import installer, sessions_page

    sessions_page.add_routes(app, ui)
    installer.add_routes(app, ui)
    return app
