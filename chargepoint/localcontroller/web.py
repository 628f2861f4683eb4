"""The local controller's site page (``[local_controller.web]``): a client of :class:`.api.SiteApi` only.

Built on the charge point's web UI (:mod:`chargepoint.frontends.web`), not a copy of it: the same login
(scrypt hashes, rate limit), session cookie, CSRF check, security headers, live updates over server-sent
events (``/events``, rendered blocks swapped in by the same ``app.js``) and stylesheet. What differs is the
page: the site bar (limit per phase and what sets it, committed per phase, fuse) and one row per downstream
charge point (link, upstream, connector statuses, allocation, measured current per phase, safe default,
queue, why).

Decision: the site view shows, it does not command. Allocations are the site policy's; the limits come
from the configuration and the central system. Every role (a logged-in admin or user, or the anonymous
viewer when ``viewer = true``) sees the same page; there is no POST besides login and logout.

The site snapshot holds no id tags (charge point identities, statuses, currents and reasons only), so
nothing here needs :func:`chargepoint.privacy.mask_id_tag`; every value is HTML-escaped.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from chargepoint.frontends.web import pages
from chargepoint.frontends.web.app import WebUi, make_base_app
from chargepoint.frontends.web.config import WebConfig
from chargepoint.frontends.web.forms import FormError
from chargepoint.frontends.web.pages import e
from chargepoint.frontends.web.server import WebServer
from chargepoint.localcontroller.api import SiteApi

log = logging.getLogger(__name__)

NAV = (("/", "Site"),)


def _a(value: Any) -> str:
    return "—" if not isinstance(value, int | float) or isinstance(value, bool) else f"{value:.1f}"


def _per_phase(values: Sequence[Any] | None) -> str:
    return " / ".join(_a(v) for v in values or []) or "—"


def _badge(text: str, kind: str, css: str | None = None) -> str:
    """A badge in the charge point's colours (``css``: the class word when it differs from the text)."""
    word = "".join(ch for ch in (css or text).lower() if ch.isalnum())
    return f'<span class="badge {kind}-{e(word)}">{e(text)}</span>'


def site_live(snap: Mapping[str, Any]) -> str:
    """The site bar: the central system link, and per phase the limit (and what sets it), what is committed
    to the charge points, and the fuse. A ``<meter>`` per phase shows committed against the limit."""
    site = snap.get("site") or {}
    limits = list(site.get("limit_a") or [])
    committed = list(site.get("committed_a") or [])
    fuse = list(site.get("fuse_a") or [])
    bars = []
    for i, lim in enumerate(limits):
        c = committed[i] if i < len(committed) else 0.0
        bars.append(f'<label class="phase">L{i + 1} <meter min="0" max="{e(max(lim, 0.1))}" value="{e(c)}" '
                    f'data-k="bar{i + 1}"></meter> <span>{_a(c)} of {_a(lim)} A</span></label>')
    csms = str(snap.get("csms") or "offline")
    rows = [
        pages._row("Central system", f"{_badge(csms, 'link')} <small>boot {e(snap.get('boot'))}</small>", "csms"),
        pages._row("Queued messages", e(snap.get("queued")), "queued"),
        pages._row("Site limit per phase", f"{_per_phase(limits)} A <small>from {e(site.get('limit_source'))}"
                   "</small>", "limit"),
        pages._row("Committed per phase", f"{_per_phase(committed)} A", "committed"),
        pages._row("Fuse per phase", f"{_per_phase(fuse)} A", "fuse"),
    ]
    return f'<table class="kv">{"".join(rows)}</table><div class="phases">{"".join(bars)}</div>'


def _box_row(b: Mapping[str, Any]) -> str:
    statuses = " ".join(f"{e(k)}: {_badge(str(v), 'st')}" for k, v in (b.get("statuses") or {}).items()) or "—"
    phases = list(b.get("phases") or [])
    measured = list(b.get("measured_a") or [])
    meas = " / ".join(f"{e(phases[i]) if i < len(phases) else '?'} {_a(v)}" for i, v in enumerate(measured)) or "—"
    alloc = _a(b.get("allocation_a"))
    pending = b.get("pending_a")
    if isinstance(pending, int | float) and pending != b.get("allocation_a"):
        alloc += f" <small>→ {_a(pending)} sent</small>"
    safe = _a(b.get("safe_default_a")) + ("" if b.get("safe_default_installed") else " <small>(not installed)</small>")
    upstream = str(b.get("upstream") or "offline")
    up = _badge(upstream, "link")
    if b.get("upstream_error") and upstream != "connected":
        up += f" <small>{e(str(b['upstream_error'])[:120])}</small>"
    link = "up" if b.get("connected") else "down"
    cells = [
        ("id", e(b.get("id"))), ("link", _badge(link, "link", "connected" if link == "up" else "offline")), ("upstream", up), ("status", statuses),
        ("allocation", alloc), ("measured", meas), ("safe", safe), ("queued", e(b.get("queued"))),
        ("why", e(b.get("why"))),
    ]
    return f'<tr data-cp="{e(b.get("id"))}">' + "".join(f'<td data-k="{k}">{v}</td>' for k, v in cells) + "</tr>"


HEADERS = ("Charge point", "Link", "Upstream", "Connectors", "Allocation A", "Measured A per phase",
           "Safe default A", "Queued", "Why")


def boxes_live(snap: Mapping[str, Any]) -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in HEADERS)
    rows = "".join(_box_row(b) for b in snap.get("charge_points") or [])
    return (f'<div class="scroll"><table class="list" id="charge-points"><thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table></div>")


def site_page(snap: Mapping[str, Any], *, role: Any, csrf: str | None) -> str:
    title = f"{snap.get('id')} — site"
    body = (f'<div class="site" data-events="/events">'
            f'<section class="card"><h2>{e(snap.get("id"))} <small>local controller</small> '
            f'<span id="live-dot" class="dot" title="live updates"></span></h2>'
            f'<div class="live" data-live="site">{site_live(snap)}</div></section>'
            f'<section class="card"><h2>Charge points</h2><div class="live" data-live="boxes">{boxes_live(snap)}'
            f'</div><p class="hint">Read-only: allocations follow the site policy; limits come from the '
            f"configuration and the central system.</p></section></div>")
    return pages.layout(title, body, role=role, csrf=csrf, active="/", nav=NAV)


class SiteWebUi(WebUi):
    """The charge point's WebUi (login, sessions, CSRF, events) with the site page in place of the status
    page. Its ``api`` is a :class:`SiteApi`: ``subscribe()`` is all the inherited ``events`` uses of it."""

    nav = NAV
    no_password_hint = ("No admin password is set: put a hash in [local_controller.web] password_hash "
                        "(README, local controller) and restart the local controller.")

    def __init__(self, api: SiteApi, config: WebConfig) -> None:
        super().__init__(api, config)  # type: ignore[arg-type]
        self.site: SiteApi = api

    async def status_page(self, request: web.Request) -> web.Response:
        role = self.role(request)
        if role is None:
            return self.redirect("/login?next=/")
        return self.html(site_page(self.site.snapshot(), role=role, csrf=self.csrf(request)))

    async def status_json(self, request: web.Request) -> web.Response:
        if self.role(request) is None:
            raise FormError(401, "log in first")
        return web.json_response(self.site.snapshot())

    def live_payload(self) -> str:
        snap = self.site.snapshot()
        return json.dumps({"site": site_live(snap), "boxes": boxes_live(snap)})


def make_site_app(api: SiteApi, config: WebConfig) -> web.Application:
    return make_base_app(SiteWebUi(api, config))


class SiteWebServer(WebServer):
    """:class:`chargepoint.frontends.web.server.WebServer` serving the site page."""

    def __init__(self, api: SiteApi, config: WebConfig) -> None:
        super().__init__(api, config)  # type: ignore[arg-type]
        self.site = api

    def build_app(self) -> web.Application:
        return make_site_app(self.site, self.config)


async def start_site_web(api: SiteApi, config: WebConfig | None) -> SiteWebServer | None:
    """The site page when configured; one that cannot start (port taken, bad certificate) is logged and
    None: the local controller goes on without it."""
    if config is None or not config.enabled:
        return None
    server = SiteWebServer(api, config)
    try:
        await server.start()
    except (OSError, ssl.SSLError, ValueError) as exc:
        log.error("site web page not started on %s:%d: %s", config.listen, config.port, exc)
        return None
    return server


__all__ = ["SiteWebServer", "SiteWebUi", "boxes_live", "make_site_app", "site_live", "site_page", "start_site_web"]
