"""`chargepoint simulate` as an installer uses it: a subprocess against a central system on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from chargepoint.csms import CentralSystem

ROOT = Path(__file__).resolve().parents[1]


async def _start(cs: CentralSystem, tmp_path: Path, *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chargepoint",
        "simulate",
        "--csms",
        cs.url,
        "--id",
        "SIM-1",
        "--state-dir",
        str(tmp_path / "state"),
        *extra,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )


async def _send(proc: asyncio.subprocess.Process, line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write((line + "\n").encode())
    await proc.stdin.drain()


async def _status(proc: asyncio.subprocess.Process) -> dict:
    await _send(proc, "status")
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 10)
    return json.loads(line)


async def test_simulate_session_and_stdout_discipline(tmp_path: Path) -> None:
    async with CentralSystem() as cs:
        proc = await _start(cs, tmp_path, "--connectors", "2", "--key", "MeterValueSampleInterval=1")
        try:
            await cs.wait_for_message("BootNotification", timeout=15)
            await _send(proc, "plug 2")
            await _send(proc, "tap CARD42")
            start = await cs.wait_for_message("StartTransaction", timeout=10)
            assert start["connectorId"] == 2 and start["idTag"] == "CARD42"
            await cs.wait_for_message("MeterValues", timeout=10)
            status = await _status(proc)
            c2 = status["connectors"][1]
            assert c2["status"] == "Charging" and c2["contactor"] == "closed" and c2["pilot"] == "C"
            assert c2["offered_a"] == 32.0 and c2["transaction_id"] == 1001 and c2["energy_wh"] > 0
            assert status["connectors"][0]["status"] == "Available"
            await _send(proc, "ev 2 suspend")
            await cs.wait_for_message("StatusNotification", where=lambda p: p["status"] == "SuspendedEV")
            await _send(proc, "fault 2 overcurrent")
            sn = await cs.wait_for_message("StatusNotification", where=lambda p: p["status"] == "Faulted")
            assert sn["errorCode"] == "OverCurrentFailure"
            await _send(proc, "clear 2 overcurrent")
            await _send(proc, "unplug 2")
            stop = await cs.wait_for_message("StopTransaction", timeout=10)
            assert stop["reason"] == "EVDisconnected"
            await _send(proc, "frobnicate")
            assert proc.stdout is not None
            err = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
            assert err["ok"] is False and "unknown command" in err["error"]
            await _send(proc, "plug 9")
            err = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
            assert "no connector 9" in err["error"]
            await _send(proc, "quit")
            out, stderr = await asyncio.wait_for(proc.communicate(), 15)
            assert proc.returncode == 0
            assert out == b""  # nothing but answers on stdout
            assert b"BootNotification accepted" in stderr
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_end_of_input_quits_and_transaction_is_closed_with_reboot_next_start(tmp_path: Path) -> None:
    async with CentralSystem() as cs:
        proc = await _start(cs, tmp_path)
        await cs.wait_for_message("BootNotification", timeout=15)
        await _send(proc, "plug 1")
        await _send(proc, "tap CARD7")
        await cs.wait_for_message("StartTransaction", timeout=10)
        await cs.wait_for_message("StatusNotification", where=lambda p: p["status"] == "Charging")
        assert proc.stdin is not None
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 15)
        assert proc.returncode == 0
        assert cs.received("StopTransaction") == []
        proc = await _start(cs, tmp_path)  # the same state directory: the open transaction is closed
        try:
            stop = await cs.wait_for_message("StopTransaction", timeout=15)
            assert stop["reason"] == "Reboot" and stop["transactionId"] == 1001  # an orderly stop
        finally:
            proc.kill()
            await proc.wait()


async def test_session_commands_go_through_the_application_api(tmp_path: Path) -> None:
    async with CentralSystem() as cs:
        proc = await _start(cs, tmp_path)
        try:
            await cs.wait_for_message("BootNotification", timeout=15)
            await _send(proc, "plug 1")
            await _send(proc, "start 1 CARD7")
            start = await cs.wait_for_message("StartTransaction", timeout=10)
            assert start["idTag"] == "CARD7" and start["connectorId"] == 1
            await _send(proc, "limit 1 10")
            for _ in range(100):
                c1 = (await _status(proc))["connectors"][0]
                if c1["offered_a"] == 10.0:
                    break
                await asyncio.sleep(0.1)
            assert c1["offered_a"] == 10.0 and c1["local_limit_a"] == 10.0 and "local" in c1["limit_source"]
            await _send(proc, "limit 1 3")  # below the 6 A minimum and not 0 (pause): refused, nothing changes
            assert proc.stdout is not None
            err = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
            assert err == {"ok": False, "error": err["error"], "code": "bad_value"} and "6" in err["error"]
            await _send(proc, "stop 1")
            stop = await cs.wait_for_message("StopTransaction", timeout=10)
            assert stop["reason"] == "Local"
            await _send(proc, "available 1 off")
            await cs.wait_for_message("StatusNotification", where=lambda p: p["status"] == "Unavailable")
            await _send(proc, "reset-fault 1")
            err = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
            assert err["ok"] is False and "no latched fault" in err["error"]
            await _send(proc, "quit")
            await asyncio.wait_for(proc.communicate(), 15)
            assert proc.returncode == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
