"""The local web UI (``[web]``): status, control, sessions and installer pages over aiohttp.

A client of :mod:`chargepoint.api` only. :class:`WebServer` runs it in the controller's event loop;
:func:`make_app` builds the aiohttp application (tests use it with aiohttp's test client).
"""

from chargepoint.frontends.web.app import WebContext, make_app
from chargepoint.frontends.web.config import WebConfig, parse_web_config
from chargepoint.frontends.web.server import WebServer

__all__ = ["WebConfig", "WebContext", "WebServer", "make_app", "parse_web_config"]
