"""`chargepoint run --config FILE` with simulated devices: starts, registers, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from chargepoint.csms import CentralSystem

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
[chargepoint]
id = "RUN-1"
state_dir = "{state}"
[csms]
url = "{url}"
reconnect_min_s = 0.2
[[connectors]]
pilot = {{ driver = "sim" }}
contactor = {{ driver = "sim" }}
meter = {{ driver = "sim" }}
[[readers]]
driver = "sim"
"""


async def test_run_registers_and_stops_on_sigterm(tmp_path: Path) -> None:
    async with CentralSystem() as cs:
        cfg = tmp_path / "cp.toml"
        cfg.write_text(CONFIG.format(state=tmp_path / "state", url=cs.url))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "chargepoint",
            "run",
            "--config",
            str(cfg),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        try:
            await cs.wait_for_message("StatusNotification", where=lambda p: p["connectorId"] == 1, timeout=15)
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 15)
            assert proc.returncode == 0, err.decode()
            assert b"Traceback" not in err
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_run_refuses_a_bad_hardware_option_before_switching(tmp_path: Path) -> None:
    cfg = tmp_path / "cp.toml"
    cfg.write_text(
        CONFIG.format(state=tmp_path / "s", url="ws://127.0.0.1:9/ocpp").replace(
            'meter = { driver = "sim" }', 'meter = { driver = "sim", phases = 2 }'
        )
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chargepoint",
        "run",
        "--config",
        str(cfg),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 2
    assert b"connectors[0].meter.phases" in err and b"Traceback" not in err


async def test_run_refuses_a_misspelt_station_key(tmp_path: Path) -> None:
    """`max_curent_a = 16` must not leave the 32 A default in place: the controller does not start."""
    cfg = tmp_path / "cp.toml"
    cfg.write_text(
        CONFIG.format(state=tmp_path / "s", url="ws://127.0.0.1:9/ocpp").replace(
            "[[connectors]]", "[station]\nmax_curent_a = 16\n[[connectors]]"
        )
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chargepoint", "run", "--config", str(cfg),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 2, err.decode()
    assert b"station.max_curent_a = 16: unknown key; did you mean 'max_current_a'?" in err
    assert b"Traceback" not in err
    assert not (tmp_path / "s").exists()  # refused before the store was even opened
