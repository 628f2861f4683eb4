"""Helpers for the local controller tests: simulators behind it, a CSMS that notes which identity sent what."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as OcppChargePoint
from ocpp.v16 import call_result

from chargepoint import csms as csms_module
from chargepoint.localcontroller.config import LocalControllerConfig, parse

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "secret-password-1"


def lc_config(csms_url: str, ids: list[str], **extra: Any) -> LocalControllerConfig:
    cps = [{"id": i, "password": PASSWORD} for i in ids]
    section = {"id": "LC-GARAGE", "csms_url": csms_url, "listen": "127.0.0.1:0", "site_limit_a": 63,
               "lease_s": 30, "follow_s": 8, "charge_points": cps, **extra}
    return parse({"local_controller": section})


async def start_lc_process(config: Path, tmp: Path, *args: str) -> tuple[asyncio.subprocess.Process, str]:
    """`chargepoint local-controller --config FILE` as its own process (stderr to ``tmp/lc.log``); returns it
    and the URL it listens on, read from its first line, so that ``listen = "127.0.0.1:0"`` works."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chargepoint", "local-controller", "--config", str(config),
        "--state-dir", str(tmp / "lc-state"), *args, stdout=asyncio.subprocess.PIPE,
        stderr=(tmp / "lc.log").open("ab"), cwd=ROOT)
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
    assert "listening on " in line, (line, (tmp / "lc.log").read_text())
    return proc, line.rsplit("listening on ", 1)[1].strip()


async def stop_lc_process(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM (the clean stop), SIGKILL if it does not end within 15 s; its exit code."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode


class IdentityLog:
    """Every CALL the central system receives, with the identity of the websocket it came on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self._orig = csms_module._Session.route_message

    def __enter__(self) -> IdentityLog:
        log = self

        async def route(session: Any, raw: str) -> None:
            try:
                msg = json.loads(raw)
                if isinstance(msg, list) and msg and msg[0] == 2:
                    log.calls.append((session.id, msg[2], msg[3]))
            except ValueError:
                pass
            await log._orig(session, raw)

        csms_module._Session.route_message = route  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        csms_module._Session.route_message = self._orig  # type: ignore[method-assign]

    def of(self, action: str) -> list[tuple[str, dict[str, Any]]]:
        return [(cp, p) for cp, a, p in self.calls if a == action]


class Sim:
    """One `chargepoint simulate` process connected to the local controller."""

    def __init__(self, proc: asyncio.subprocess.Process, cp_id: str) -> None:
        self.proc = proc
        self.id = cp_id
        self.lock = asyncio.Lock()

    @classmethod
    async def start(cls, url: str, cp_id: str, tmp: Path, password: str = PASSWORD) -> Sim:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chargepoint", "simulate", "--csms", url, "--id", cp_id,
            "--state-dir", str(tmp / cp_id), "--password", password, "--key", "MeterValueSampleInterval=2",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=(tmp / f"{cp_id}.log").open("ab"), cwd=ROOT,
        )
        return cls(proc, cp_id)

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        await self.proc.stdin.drain()

    async def status(self) -> dict[str, Any]:
        async with self.lock:
            await self.send("status")
            assert self.proc.stdout is not None
            return json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 15))

    async def offered(self) -> float:
        st = await self.status()
        return sum(c.get("offered_a") or 0.0 for c in st["connectors"])

    async def quit(self) -> None:
        if self.proc.returncode is None:
            try:
                await self.send("quit")
                await asyncio.wait_for(self.proc.wait(), 15)
            except (TimeoutError, ConnectionError):
                self.proc.kill()
                await self.proc.wait()


def auth_header(cp_id: str, password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{cp_id}:{password}".encode()).decode()}


class ForeignBox(OcppChargePoint):
    """Another vendor's box: power in kW only, no current measurand; applies ChargePointMaxProfiles."""

    def __init__(self, cp_id: str, ws: Any) -> None:
        super().__init__(cp_id, ws, response_timeout=10)
        self.limits: dict[int, float] = {}
        self.drawing = 0.0

    @on("SetChargingProfile")
    def on_set(self, connector_id: int, cs_charging_profiles: dict[str, Any]) -> Any:
        lvl = cs_charging_profiles["stack_level"]
        self.limits[lvl] = cs_charging_profiles["charging_schedule"]["charging_schedule_period"][0]["limit"]
        return call_result.SetChargingProfile(status="Accepted")

    @on("ClearChargingProfile")
    def on_clear(self, **_: Any) -> Any:
        return call_result.ClearChargingProfile(status="Accepted")

    def limit(self) -> float:
        return self.limits[max(self.limits)] if self.limits else 32.0


async def foreign_box(url: str, cp_id: str) -> tuple[ForeignBox, Any, asyncio.Task[None]]:
    ws = await websockets.connect(f"{url}/{cp_id}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                  additional_headers=auth_header(cp_id))
    box = ForeignBox(cp_id, ws)
    task = asyncio.create_task(box.start())
    return box, ws, task


class OcppBox(OcppChargePoint):
    """A charge point from the ocpp library (not ours): accepts every SetChargingProfile and notes the
    ChargePointMaxProfile limits it gets as (stackLevel, limit), in the order received."""

    def __init__(self, cp_id: str, ws: Any) -> None:
        super().__init__(cp_id, ws, response_timeout=10)
        self.profiles: list[tuple[int, float]] = []
        self.task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, url: str, cp_id: str, *, password: str | None = None, **kw: Any) -> OcppBox:
        """Connected to ``url/cp_id`` (``kw`` to websockets.connect, e.g. ``ssl=``) and answering."""
        headers = auth_header(cp_id, password) if password is not None else None
        ws = await websockets.connect(f"{url}/{cp_id}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                      additional_headers=headers, open_timeout=10, **kw)
        box = cls(cp_id, ws)
        box.task = asyncio.create_task(box.start())
        return box

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await self._connection.close()

    def limits_at(self, stack_level: int) -> list[float]:
        return [limit for lvl, limit in self.profiles if lvl == stack_level]

    @on("SetChargingProfile")
    def on_set(self, connector_id: int, cs_charging_profiles: dict[str, Any]) -> Any:
        p = cs_charging_profiles
        assert connector_id == 0 and p["charging_profile_purpose"] == "ChargePointMaxProfile", p
        self.profiles.append((p["stack_level"], float(p["charging_schedule"]["charging_schedule_period"][0]["limit"])))
        return call_result.SetChargingProfile(status="Accepted")
