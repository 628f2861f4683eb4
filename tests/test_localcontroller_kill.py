"""Kill the local controller (SIGKILL) mid-session: the boxes fall back to their safe default; restarted, the
allocations resume and no transaction message reaches the central system twice."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import pytest
from lc_helpers import PASSWORD, IdentityLog, Sim, start_lc_process

from chargepoint.csms import CentralSystem, poll_until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _start_lc(cfg: Path, tmp: Path) -> asyncio.subprocess.Process:
    return (await start_lc_process(cfg, tmp))[0]


@pytest.mark.timeout(200)
async def test_kill_and_restart(tmp_path: Path) -> None:
    port = _free_port()
    ids = ["K-1", "K-2", "K-3"]
    with IdentityLog() as seen:
        async with CentralSystem() as cs:
            cfg = tmp_path / "lc.toml"
            cfg.write_text(
                f'[local_controller]\nid = "LC-K"\ncsms_url = "{cs.url}"\nlisten = "127.0.0.1:{port}"\n'
                "site_limit_a = 30\nlease_s = 10\nfollow_s = 3\n"
                + "".join(f'[[local_controller.charge_points]]\nid = "{i}"\npassword = "{PASSWORD}"\n' for i in ids))
            lc = await _start_lc(cfg, tmp_path)
            sims = [await Sim.start(f"ws://127.0.0.1:{port}", i, tmp_path) for i in ids]
            try:
                async with asyncio.timeout(190):
                    await poll_until(lambda: len({c for c, _ in seen.of("BootNotification")}) == 4, 60)
                    for s in sims[:2]:
                        await s.send("plug 1")
                        await s.send(f"tap {s.id}-1")

                    async def offered() -> list[float]:
                        return list(await asyncio.gather(*(s.offered() for s in sims)))

                    for _ in range(60):
                        if (await offered())[:2] == [15.0, 15.0]:
                            break
                        await asyncio.sleep(1)
                    assert (await offered())[:2] == [15.0, 15.0]
                    lc.send_signal(signal.SIGKILL)
                    await lc.wait()
                    worst = 0.0
                    for _ in range(16):  # lease 10 s: then every box is within its safe default (10 A)
                        now = await offered()
                        worst = max(worst, sum(now))
                        assert sum(now) <= 30.0
                        await asyncio.sleep(1)
                    assert all(a <= 10.0 for a in await offered()), await offered()
                    lc = await _start_lc(cfg, tmp_path)
                    for _ in range(60):
                        if (await offered())[:2] == [15.0, 15.0]:
                            break
                        await asyncio.sleep(1)
                    assert (await offered())[:2] == [15.0, 15.0]  # allocations resumed
                    for s in sims[:2]:
                        await s.send("unplug 1")
                    await poll_until(lambda: len(seen.of("StopTransaction")) >= 2, 30)
                    await asyncio.sleep(3)
            finally:
                for s in sims:
                    await s.quit()
                if lc.returncode is None:
                    lc.send_signal(signal.SIGTERM)
                    await asyncio.wait_for(lc.wait(), 15)
    starts = seen.of("StartTransaction")
    assert sorted(p["idTag"] for _, p in starts) == ["K-1-1", "K-2-1"]
    stops = seen.of("StopTransaction")
    assert len(stops) == 2 and len({p["transactionId"] for _, p in stops}) == 2
    meter_keys = [(cp, str(p["meterValue"])) for cp, p in seen.of("MeterValues")]
    assert len(meter_keys) == len(set(meter_keys))  # no MeterValues twice
