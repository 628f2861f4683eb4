"""Starting and stopping the web UI inside the controller's process and event loop."""

from __future__ import annotations

import logging
import ssl

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

    async def start(self) -> None:
        self.app = make_app(self.api, self.config, self.context)
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
