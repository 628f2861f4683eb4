"""The local web UI (``[web]``): status, control, sessions and installer pages over aiohttp.

A client of :mod:`chargepoint.api` only. ``server.WebServer`` runs it in the controller's event loop;
``app.make_app`` builds the aiohttp application (tests use it with aiohttp's test client);
``config.parse_web_config`` reads ``[web]``; ``setpassword`` is ``chargepoint set-password``. Nothing is
imported here, so that the configuration check and the CLI do not load aiohttp.
"""
