"""``[web]`` in the configuration file: the local web UI (off unless ``enabled = true``).

Parsed here and registered in :func:`chargepoint.config.parse_config`, so ``check-config`` reports its
problems with every other one (``key = value: what is allowed``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chargepoint.frontends.web.auth import password_hash_problem

WEB_KEYS = ("enabled", "listen", "port", "tls_cert", "tls_key", "viewer", "password_hash", "user_password_hash")


@dataclass(frozen=True)
class WebConfig:
    enabled: bool = False
    listen: str = "127.0.0.1"  # the example configuration and install.sh put "0.0.0.0" (the LAN)
    port: int = 8080
    tls_cert: str | None = None  # both or neither: HTTPS with this certificate, else plain HTTP
    tls_key: str | None = None
    viewer: bool = False  # the status page without a login (read-only viewer role)
    # admin (chargepoint set-password). None: nobody can log in, the login page says how to set one
    # (the example configuration enables the UI before install.sh has asked for the password).
    password_hash: str | None = None
    user_password_hash: str | None = None  # optional user role: sessions, limits, availability

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def _type_name(kind: type) -> str:
    return {str: "string", int: "whole number", bool: "true or false"}[kind]


def parse_web_config(table: Any) -> tuple[WebConfig, list[tuple[str, Any, str]]]:
    """The ``[web]`` table (``{}`` when absent) → (config, problems as (key, value, allowed))."""
    from chargepoint.config import unknown_key_text

    problems: list[tuple[str, Any, str]] = []
    if table is None:
        table = {}
    if not isinstance(table, dict):
        return WebConfig(), [("web", table, "a table: [web] with enabled, listen, port, password_hash …")]
    for name in table:
        if name not in WEB_KEYS:
            problems.append((f"web.{name}", table[name], unknown_key_text(name, WEB_KEYS)))
    d = WebConfig()

    def get(name: str, kind: type, default: Any) -> Any:
        value = table.get(name, default)
        if value is default:
            return default
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            problems.append((f"web.{name}", value, f"a {_type_name(kind)}"))
            return default
        return value

    enabled = get("enabled", bool, d.enabled)
    listen = get("listen", str, d.listen)
    try:
        ipaddress.ip_address(listen)
    except ValueError:
        problems.append(("web.listen", listen, 'an IP address: "127.0.0.1" (this machine only), "0.0.0.0" '
                                                '(every IPv4 interface) or one interface\'s address'))
    port = get("port", int, d.port)
    if not 1 <= port <= 65535:
        problems.append(("web.port", port, "a whole number from 1 to 65535"))
        port = d.port
    cert = get("tls_cert", str, None) or None
    key = get("tls_key", str, None) or None
    if (cert is None) != (key is None):
        problems.append(("web.tls_cert" if cert is None else "web.tls_key", cert or key,
                         "tls_cert and tls_key together (HTTPS), or neither (plain HTTP)"))
    for name, path in (("tls_cert", cert), ("tls_key", key)):
        if path is not None and not Path(path).is_file():
            problems.append((f"web.{name}", path, "an existing PEM file"))
    viewer = get("viewer", bool, d.viewer)
    hashes = {}
    for name in ("password_hash", "user_password_hash"):
        value = get(name, str, None) or None
        if value is not None and (problem := password_hash_problem(value)):
            problems.append((f"web.{name}", "(hidden)", problem))
            value = None
        hashes[name] = value
    return WebConfig(enabled=enabled, listen=listen, port=port, tls_cert=cert, tls_key=key, viewer=viewer,
                     password_hash=hashes["password_hash"], user_password_hash=hashes["user_password_hash"]), \
        problems
