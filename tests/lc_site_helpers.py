"""The site view's tests: a real local controller (loopback central system) with raw-websocket boxes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import websockets
from lc_helpers import PASSWORD, lc_config

from chargepoint.csms import CentralSystem
from chargepoint.localcontroller.server import LocalController
from chargepoint.localcontroller.store import LcStore


class RawBox:
    """A downstream box speaking OCPP-J by hand: accepts every SetChargingProfile and notes our limits."""

    def __init__(self, cp_id: str, ws: Any) -> None:
        self.id, self.ws = cp_id, ws
        self.waiting: dict[str, asyncio.Future[Any]] = {}
        self.limits: dict[int, float] = {}  # stack level → limit
        self.n = 0
        self.task = asyncio.create_task(self._reader())

    @classmethod
    async def connect(cls, url: str, cp_id: str) -> RawBox:
        token = base64.b64encode(f"{cp_id}:{PASSWORD}".encode()).decode()
        ws = await websockets.connect(f"{url}/{cp_id}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                      additional_headers={"Authorization": f"Basic {token}"})
        return cls(cp_id, ws)

    async def _reader(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                msg = json.loads(raw)
                if msg[0] == 2:
                    if msg[2] == "SetChargingProfile":
                        prof = msg[3]["csChargingProfiles"]
                        self.limits[prof["stackLevel"]] = prof["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"]
                    await self.ws.send(json.dumps([3, msg[1], {"status": "Accepted"}]))
                else:
                    fut = self.waiting.pop(msg[1], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)

    async def call(self, action: str, payload: dict[str, Any]) -> Any:
        self.n += 1
        uid = f"{self.id}-{self.n}"
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting[uid] = fut
        await self.ws.send(json.dumps([2, uid, action, payload]))
        return await asyncio.wait_for(fut, 15)

    async def start_charging(self, amps: float) -> None:
        """Boot, Charging on connector 1, a transaction, and a meter reading of ``amps`` on each phase."""
        await self.call("BootNotification", {"chargePointVendor": "Acme", "chargePointModel": "Raw"})
        await self.call("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging"})
        now = datetime.now(UTC).isoformat()
        ans = await self.call("StartTransaction", {"connectorId": 1, "idTag": "SECRET-TAG-1", "meterStart": 0,
                                                   "timestamp": now})
        await self.meter(amps, ans[2]["transactionId"])

    async def meter(self, amps: float, tx: int | None = None) -> None:
        payload: dict[str, Any] = {"connectorId": 1, "meterValue": [{
            "timestamp": datetime.now(UTC).isoformat(),
            "sampledValue": [{"value": f"{amps:.1f}", "measurand": "Current.Import", "phase": ph, "unit": "A"}
                             for ph in ("L1", "L2", "L3")]}]}
        if tx is not None:
            payload["transactionId"] = tx
        await self.call("MeterValues", payload)

    async def close(self) -> None:
        self.task.cancel()
        await self.ws.close()


@contextlib.asynccontextmanager
async def running_site(ids: tuple[str, ...] = ("BOX-1", "BOX-2"), **extra: Any) -> AsyncIterator[LocalController]:
    """A started local controller for ``ids`` (site fuse 40 A unless given) behind a loopback central system."""
    async with CentralSystem() as cs:
        lc = LocalController(lc_config(cs.url, list(ids), follow_s=1, **{"site_limit_a": 40, **extra}), LcStore.open(None))
        await lc.start()
        try:
            yield lc
        finally:
            await lc.stop()


def box_view(lc: LocalController, cp_id: str) -> dict[str, Any]:
    return next(b for b in lc.snapshot()["charge_points"] if b["id"] == cp_id)
