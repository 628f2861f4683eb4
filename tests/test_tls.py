"""wss:// with the server certificate checked against a configured CA file (security profile 2)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import trustme

from chargepoint.config import simulated_config
from chargepoint.controller import Controller
from chargepoint.csms import CentralSystem


def _server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    return ctx


def _config(url: str, state: Path, ca_file: Path | None, password: str) -> object:
    cfg = simulated_config(charge_point_id="CP-TLS", csms_url=url, state_dir=state, password=password)
    if ca_file is not None:
        from dataclasses import replace

        cfg = replace(cfg, csms=replace(cfg.csms, ca_file=str(ca_file)))
    return cfg


async def test_wss_with_ca_file_and_basic_auth(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with CentralSystem(ssl_context=_server_context(ca), password="tls-password-123456") as cs:
        assert cs.url.startswith("wss://127.0.0.1:")
        c = Controller(_config(cs.url, tmp_path / "s", ca_file, "tls-password-123456"))  # type: ignore[arg-type]
        await c.start()
        try:
            await cs.wait_for(lambda: c.boot_accepted, 10)
        finally:
            await c.stop()


async def test_wss_refuses_an_untrusted_certificate(tmp_path: Path) -> None:
    ca, other_ca = trustme.CA(), trustme.CA()
    other_file = tmp_path / "other.pem"
    other_ca.cert_pem.write_to_path(str(other_file))
    async with CentralSystem(ssl_context=_server_context(ca)) as cs:
        c = Controller(_config(cs.url, tmp_path / "s", other_file, ""))  # type: ignore[arg-type]
        await c.start()
        try:
            await asyncio.sleep(1.0)
            assert not c.boot_accepted and cs.received("BootNotification") == []
            assert c.link is not None and c.link.attempts >= 2  # it keeps trying, with back-off
        finally:
            await c.stop()
