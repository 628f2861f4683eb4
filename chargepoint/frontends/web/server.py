"""Starting and stopping the web UI inside the controller's process and event loop."""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from chargepoint.api import StationApi
from chargepoint.frontends.web.app import WebContext, make_app
from chargepoint.frontends.web.config import WebConfig

log = logging.getLogger(__name__)


class WebServer:
    """``await start()`` binds ``[web] listen:port`` (HTTPS when a certificate is configured);
    ``await stop()`` closes the live streams and the socket. A failure to bind is logged and raised as
    OSError: the caller decides (the controller goes on without its web UI)."""

    def __init__(self, api: StationApi, config: WebConfig, context: WebContext | None = None) -> None:
        self.api = api
        self.config = config
        self.context = context
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.config.tls else "http"
        return f"{scheme}://{self.config.listen}:{self.port}"

    def build_app(self) -> web.Application:
        """The application to serve (the local controller's site page serves its own)."""
        return make_app(self.api, self.config, self.context)

    async def start(self) -> None:
        self.app = self.build_app()
        ctx = None
        if self.config.tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(self.config.tls_cert, self.config.tls_key)  # type: ignore[arg-type]
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.listen, self.config.port, ssl_context=ctx,
                           reuse_address=True)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        server = site._server  # the bound port (config port 0 in tests)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port
        log.info("web UI on %s", self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def station_api(controller: Any) -> StationApi:
    """The controller's application API (chargepoint.api's implementation). The web UI sees nothing else
    of the controller: this is the one place that knows how the API is reached from it."""
    api = getattr(controller, "api", None)
    if api is not None:
        return api  # type: ignore[no-any-return]
    from chargepoint import api as api_module

    implementation = getattr(api_module, "ControllerApi", None)
    if implementation is None:
        raise RuntimeError("this build has no implementation of chargepoint.api (issue 13)")
    return implementation(controller)  # type: ignore[no-any-return]


def simulator_web_config(listen: str, config: Any) -> tuple[WebConfig, str | None]:
    """``simulate --web HOST:PORT``: the configuration's [web] password if it has one, else a fresh random
    admin password (returned, for the simulator to print)."""
    import secrets

    from chargepoint.frontends.web.auth import hash_password

    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--web {listen!r}: HOST:PORT, e.g. 127.0.0.1:8080")
    base: WebConfig = getattr(config, "web", None) or WebConfig()
    password = None
    stored = base.password_hash
    if stored is None:
        password = secrets.token_urlsafe(12)
        stored = hash_password(password)
    web_config = WebConfig(enabled=True, listen=host or "127.0.0.1", port=int(port), viewer=base.viewer,
                           password_hash=stored, user_password_hash=base.user_password_hash)
    return web_config, password


async def start_web(controller: Any, config: Any) -> WebServer | None:
    """``chargepoint run``: the web UI when ``[web] enabled = true``, else None. One that cannot start (port
    taken, bad certificate, no API) is logged and None: the charger goes on without it."""
    from pathlib import Path

    web_config: WebConfig | None = getattr(config, "web", None)
    if web_config is None or not web_config.enabled:
        return None
    source = str(getattr(config, "source", ""))
    context = WebContext(source if Path(source).is_file() else None, str(config.state_dir), config.status_socket)
    try:
        server = WebServer(station_api(controller), web_config, context)
        await server.start()
    except (OSError, ssl.SSLError, ValueError, RuntimeError) as exc:
        log.error("web UI not started on %s:%d: %s", web_config.listen, web_config.port, exc)
        return None
    return server


async def serve_alongside(controller: Any, web_config: WebConfig, context: WebContext | None = None, *,
                          body: Awaitable[int] | None = None, stop: asyncio.Event | None = None) -> int:
    """Run the controller with its web UI: ``body`` (the simulator, which starts and stops the controller
    itself), or start the controller and wait for ``stop``. A web UI that cannot start (port taken, bad
    certificate) is logged; the charger goes on without it."""
    server: WebServer | None = None
    if body is None:
        await controller.start()
    try:
        try:
            server = WebServer(station_api(controller), web_config, context)
            await server.start()
            print(f"web UI: {server.url}", file=sys.stderr)
        except (OSError, ssl.SSLError, ValueError, RuntimeError) as exc:
            log.error("web UI not started on %s:%d: %s", web_config.listen, web_config.port, exc)
            server = None
        if body is not None:
            return await body
        assert stop is not None
        await stop.wait()
        return 0
    finally:
        if server is not None:
            await server.stop()
        if body is None:
            log.info("stopping: outputs go to their safe state")
            await controller.stop()
