"""The local controller's site meter with real parts: `chargepoint local-controller` as its own process, its
site meter a Modbus RTU SDM630 (a pymodbus server on a socat pty pair), one OCPP box charging behind it and a
loopback central system upstream.

The house load is what the meter measures minus what the boxes report (MeterValues, Current.Import per
phase); the allocation (ChargePointMaxProfile at stack_level + 1) is what the fuse leaves after it, minus the
margin. A silent meter leaves each charging box its minimum only (site.py).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from lc_helpers import ROOT, OcppBox, start_lc_process, stop_lc_process
from ocpp.v16 import call

from chargepoint.csms import CentralSystem, poll_until
from tests.fakes.modbus_meters import Silencer, f32, image, pty_pair, serve_rtu, sim_device

pytestmark = pytest.mark.hardware_stack  # socat

FUSE_A = 32.0
MARGIN_A = 1.0
STACK = 8
BOX_MAX_A = 16.0
BOX_MIN_A = 6.0
BOX_DRAWS_A = 8.0  # what the car takes, per phase


class SiteMeter:
    """The currents the SDM630 reports: the house's per phase plus what the box draws."""

    def __init__(self, house: Sequence[float]) -> None:
        self.house = list(house)

    async def action(self, function_code: int, start_address: int, address: int, count: int,
                     registers: list[int], set_values: Any) -> None:
        """pymodbus' per-request hook: the current registers (0x06, 0x08, 0x0A, float32) written afresh."""
        for i, amps in enumerate(self.house):
            at = 0x06 + 2 * i - start_address
            registers[at:at + 2] = f32(amps + BOX_DRAWS_A)


class Box(OcppBox):
    """The box charging: its car draws BOX_DRAWS_A per phase, whatever the limit (it stays under every limit
    sent here), and says so in MeterValues."""

    @property
    def allocations(self) -> list[float]:
        return self.limits_at(STACK + 1)

    async def charge(self) -> None:
        """Boot, start a transaction and report BOX_DRAWS_A per phase every half second."""
        now = datetime.now(UTC).isoformat()
        await self.call(call.BootNotification(charge_point_model="meter-test", charge_point_vendor="tests"))
        await self.call(call.StatusNotification(connector_id=1, error_code="NoError", status="Preparing"))
        start = await self.call(call.StartTransaction(connector_id=1, id_tag="METER-1", meter_start=0,
                                                      timestamp=now))
        await self.call(call.StatusNotification(connector_id=1, error_code="NoError", status="Charging"))
        while True:
            sampled = [{"value": f"{BOX_DRAWS_A:.1f}", "measurand": "Current.Import", "phase": ph, "unit": "A"}
                       for ph in ("L1", "L2", "L3")]
            await self.call(call.MeterValues(connector_id=1, transaction_id=start.transaction_id, meter_value=[
                {"timestamp": datetime.now(UTC).isoformat(), "sampledValue": sampled}]))
            await asyncio.sleep(0.5)


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="lcm-", dir="/tmp"))  # AF_UNIX paths are at most 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def _status_text(sock: Path) -> str:
    """`chargepoint status --socket` against the local controller (a process: the Modbus server shares our
    loop and must keep answering meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chargepoint", "status", "--socket", str(sock), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def _fits(allocs: Sequence[float], house: Sequence[float]) -> bool:
    return all(h + a <= FUSE_A - MARGIN_A + 1e-6 for a in allocs for h in house)


@pytest.mark.timeout(60)
async def test_house_load_on_the_site_meter_moves_the_box_allocation(tmp_path: Path, sockdir: Path) -> None:
    meter = SiteMeter([4.0, 4.0, 4.0])
    silencer = Silencer()
    fc, regs = image("sdm630")
    with pty_pair(tmp_path) as (client_end, server_end):
        async with serve_rtu(server_end, [sim_device(1, fc, regs, action=meter.action)], silencer=silencer), \
                CentralSystem() as cs:
            cfg = tmp_path / "lc.toml"
            cfg.write_text(
                f'[local_controller]\nid = "LC-METER"\ncsms_url = "{cs.url}"\nlisten = "127.0.0.1:0"\n'
                f"site_limit_a = {FUSE_A:g}\nstack_level = {STACK}\nlease_s = 30\nfollow_s = 2\n"
                "[local_controller.site_meter]\n"
                f'meter = {{ driver = "modbus", model = "sdm630", port = "{client_end}", device_id = 1, '
                "timeout = 0.3, retries = 0, request_gap_ms = 0 }\n"
                f"margin_a = {MARGIN_A:g}\npoll_s = 0.5\n"
                f'[[local_controller.charge_points]]\nid = "M-1"\nmax_current_a = {BOX_MAX_A:g}\n'
                f"min_current_a = {BOX_MIN_A:g}\n")
            sock = sockdir / "lc.sock"
            lc, url = await start_lc_process(cfg, tmp_path, "--status-socket", str(sock))
            box = await Box.connect(url, "M-1")
            charging = asyncio.create_task(box.charge())
            try:
                async with asyncio.timeout(50):
                    # A light house: the fuse leaves more than the box's maximum.
                    await poll_until(lambda: box.allocations[-1:] == [BOX_MAX_A], 15, 0.05)
                    assert box.limits_at(STACK) == [FUSE_A]  # one box: the whole fuse is its share

                    # The house rises (an oven, per phase); the box still draws the same: its allocation
                    # falls to what the fuse leaves after the house and the margin: 32 - 22 - 1 = 9 A.
                    meter.house = [22.0, 18.0, 20.0]
                    n = len(box.allocations)
                    await poll_until(lambda: len(box.allocations) > n, 10, 0.05)
                    assert box.allocations[n:] == [9.0], box.allocations
                    assert _fits(box.allocations[n:], meter.house)
                    assert "site meter (fuse minus the house's load)" in await _status_text(sock)

                    # The house falls again: the allocation rises (the lowered limit took effect: the box's
                    # MeterValues show it under 9 A).
                    meter.house = [5.0, 3.0, 4.0]
                    n = len(box.allocations)
                    await poll_until(lambda: box.allocations[-1:] == [BOX_MAX_A], 10, 0.05)
                    assert all(a in (9.0, BOX_MAX_A) for a in box.allocations[n:]), box.allocations
                    assert _fits(box.allocations[n:], meter.house)

                    # The meter goes silent: once its last reading is stale (10 s), the box gets its minimum.
                    silencer.silent = True
                    n = len(box.allocations)
                    await poll_until(lambda: box.allocations[-1:] == [BOX_MIN_A], 20, 0.05)
                    assert set(box.allocations[n:]) == {BOX_MIN_A}, box.allocations
                    text = await _status_text(sock)
                    assert "site meter silent: minimum current only" in text, text
                    await asyncio.sleep(1.5)  # still silent: held there
                    assert box.allocations[-1] == BOX_MIN_A

                    # It answers again: the allocation comes back.
                    silencer.silent = False
                    await poll_until(lambda: box.allocations[-1:] == [BOX_MAX_A], 10, 0.05)
            finally:
                charging.cancel()
                await box.close()
                assert await stop_lc_process(lc) == 0
    # One warning for the outage, not one per poll (the journal of a site whose meter is off for a day).
    assert (tmp_path / "lc.log").read_text().count("site meter does not answer") == 1
