"""The local controller's downstream TLS (``tls_cert``/``tls_key``: wss://) with a throwaway CA: boxes that
trust the CA are served and forwarded upstream under their own identity; a client that does not trust it,
and a plain ws:// one, fail at the door without harming the local controller; our own charge point
(`chargepoint simulate` with ``[csms] ca_file``) connects over it too."""

from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path

import pytest
import trustme
import websockets
from lc_helpers import ROOT, IdentityLog, OcppBox, Sim, start_lc_process, stop_lc_process
from ocpp.v16 import call

from chargepoint.csms import CentralSystem, poll_until


def _client(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


async def _boot(box: OcppBox) -> str:
    ans = await box.call(call.BootNotification(charge_point_model="tls-test", charge_point_vendor="tests"))
    return str(ans.status)


async def _start_sim(url: str, cp_id: str, ca_file: Path, tmp: Path) -> Sim:
    """`chargepoint simulate --config FILE`: the file's ``[csms] ca_file`` verifies the local controller."""
    cfg = tmp / f"{cp_id}.toml"
    cfg.write_text(
        f'[chargepoint]\nid = "{cp_id}"\nstate_dir = "{tmp / "unused"}"\n'
        f'[csms]\nurl = "{url}"\nca_file = "{ca_file}"\n'
        '[[connectors]]\nid = 1\npilot = { driver = "sim" }\ncontactor = { driver = "sim" }\n'
        'meter = { driver = "sim" }\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chargepoint", "simulate", "--config", str(cfg), "--state-dir", str(tmp / cp_id),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=(tmp / f"{cp_id}.log").open("ab"), cwd=ROOT)
    return Sim(proc, cp_id)


@pytest.mark.timeout(60)
async def test_wss_downstream_serves_trusted_boxes_and_refuses_the_rest(tmp_path: Path) -> None:
    ca, stranger = trustme.CA(), trustme.CA()
    ca_file, stranger_file = tmp_path / "ca.pem", tmp_path / "stranger.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    stranger.cert_pem.write_to_path(str(stranger_file))
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "lc.pem", tmp_path / "lc.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ids = ["TLS-1", "TLS-2", "TLS-3", "TLS-SIM"]
    with IdentityLog() as seen:
        async with CentralSystem() as cs:
            cfg = tmp_path / "lc.toml"
            cfg.write_text(
                f'[local_controller]\nid = "LC-TLS"\ncsms_url = "{cs.url}"\nlisten = "127.0.0.1:0"\n'
                f'site_limit_a = 32\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
                + "".join(f'[[local_controller.charge_points]]\nid = "{i}"\n' for i in ids))
            lc, url = await start_lc_process(cfg, tmp_path)
            boxes: list[OcppBox] = []
            sim: Sim | None = None
            try:
                async with asyncio.timeout(50):
                    assert url.startswith("wss://127.0.0.1:")
                    # A box that trusts the CA: served, its BootNotification reaches the CSMS as its own.
                    boxes.append(await OcppBox.connect(url, "TLS-1", ssl=_client(ca_file)))
                    assert await _boot(boxes[0]) == "Accepted"
                    # (answered at once by the LC if its upstream for the box is not up yet, delivered then)
                    await poll_until(lambda: "TLS-1" in {cp for cp, _ in seen.of("BootNotification")}, 10)
                    await poll_until(lambda: boxes[0].limits_at(8), 10, 0.05)  # and the LC talks to it

                    # A client that does not trust the certificate gives up in the handshake.
                    with pytest.raises(ssl.SSLCertVerificationError):
                        await OcppBox.connect(url, "TLS-2", ssl=_client(stranger_file))
                    # Plain ws:// on the TLS port: no websocket (the TLS server drops the cleartext request).
                    plain = "ws://" + url.removeprefix("wss://")
                    with pytest.raises((websockets.InvalidHandshake, OSError, EOFError)) as refused:
                        await OcppBox.connect(plain, "TLS-2")
                    assert not isinstance(refused.value, TimeoutError), "refused only by the client's timeout"

                    # Neither harmed the local controller: the first box still goes through it, a new one
                    # is served.
                    n = len(seen.of("Heartbeat"))
                    await boxes[0].call(call.Heartbeat())
                    await poll_until(lambda: [cp for cp, _ in seen.of("Heartbeat")[n:]] == ["TLS-1"], 5)
                    boxes.append(await OcppBox.connect(url, "TLS-3", ssl=_client(ca_file)))
                    assert await _boot(boxes[1]) == "Accepted"
                    assert lc.returncode is None

                    # Our own charge point, verifying the local controller with the CA file of its config.
                    sim = await _start_sim(url, "TLS-SIM", ca_file, tmp_path)
                    await poll_until(lambda: "TLS-SIM" in {cp for cp, _ in seen.of("BootNotification")}, 20)
                    booted = {cp for cp, _ in seen.of("BootNotification")}
                    assert booted == {"LC-TLS", "TLS-1", "TLS-3", "TLS-SIM"}  # never TLS-2
            finally:
                if sim is not None:
                    await sim.quit()
                for b in boxes:
                    await b.close()
                assert await stop_lc_process(lc) == 0
