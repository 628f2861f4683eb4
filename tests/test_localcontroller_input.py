"""Local controller: a foreign (non-ours) box is balanced; bad input from downstream and upstream."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import websockets
from lc_helpers import PASSWORD, IdentityLog, auth_header, foreign_box, lc_config
from ocpp.v16 import call

from chargepoint.csms import CentralSystem, poll_until
from chargepoint.localcontroller.server import LocalController
from chargepoint.localcontroller.store import LcStore


async def test_foreign_box_is_balanced_with_ours(tmp_path: Path) -> None:
    with IdentityLog() as seen:
        async with CentralSystem() as cs:
            lc = LocalController(lc_config(cs.url, ["ACME-1", "ACME-2"], site_limit_a=20, follow_s=1),
                                 LcStore.open(None))
            await lc.start()
            try:
                async with asyncio.timeout(60):
                    a, wsa, ta = await foreign_box(lc.url, "ACME-1")
                    b, wsb, tb = await foreign_box(lc.url, "ACME-2")
                    for box in (a, b):
                        r = await box.call(call.BootNotification(charge_point_vendor="Acme Corp",
                                                                 charge_point_model="Wallbox X"))
                        assert r.status == "Accepted"
                    await poll_until(lambda: a.limits and b.limits, 10)
                    assert a.limits[8] == 10.0  # safe default: half of the 20 A site
                    await a.call(call.StatusNotification(connector_id=1, error_code="NoError", status="Charging"))
                    r = await a.call(call.StartTransaction(connector_id=1, id_tag="ACMETAG", meter_start=0,
                                                           timestamp=datetime.now(UTC).isoformat()))
                    await poll_until(lambda: a.limit() == 20.0, 10)  # alone: the whole site
                    await a.call(call.MeterValues(connector_id=1, transaction_id=r.transaction_id, meter_value=[{
                        "timestamp": datetime.now(UTC).isoformat(), "sampledValue": [
                            {"value": "13.8", "measurand": "Power.Active.Import", "unit": "kW"}]}]))
                    await b.call(call.StatusNotification(connector_id=1, error_code="NoError", status="Charging"))
                    await b.call(call.StartTransaction(connector_id=1, id_tag="ACMETAG2", meter_start=0,
                                                       timestamp=datetime.now(UTC).isoformat()))
                    await poll_until(lambda: a.limit() == 10.0 and b.limit() == 10.0, 15)
                    assert a.limit() + b.limit() <= 20.0
                    box_a = next(x for x in lc.snapshot()["charge_points"] if x["id"] == "ACME-1")
                    assert box_a["measured_a"][0] == pytest.approx(20.0, abs=0.1)  # 13.8 kW / 230 V / 3
                    ta.cancel()
                    tb.cancel()
                    await wsa.close()
                    await wsb.close()
            finally:
                await lc.stop()
    boots = dict(seen.of("BootNotification"))
    assert set(boots) == {"ACME-1", "ACME-2", "LC-GARAGE"}  # each box under its identity, and ours
    assert boots["ACME-1"]["chargePointVendor"] == "Acme Corp"  # forwarded unchanged
    assert boots["LC-GARAGE"]["chargePointModel"] == "local-controller"


async def test_bad_input(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with CentralSystem(password=PASSWORD) as cs:
        cfg = lc_config(cs.url, ["GOOD-1", "REFUSED-1"])
        # the central system refuses REFUSED-1 (its upstream password is wrong); GOOD-1 must not mind
        cfg = type(cfg)(**{**cfg.__dict__, "charge_points": (
            cfg.charge_points[0], type(cfg.charge_points[1])(cfg.charge_points[1].spec, PASSWORD, "wrong"))})
        lc = LocalController(cfg, LcStore.open(None))
        await lc.start()
        try:
            async with asyncio.timeout(60):
                with pytest.raises(websockets.InvalidStatus) as exc:  # wrong password: refused at the upgrade
                    await websockets.connect(f"{lc.url}/GOOD-1", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                             additional_headers=auth_header("GOOD-1", "nope"))
                assert exc.value.response.status_code == 401
                with pytest.raises(websockets.InvalidStatus) as exc:  # unknown id: refused, named in the log
                    await websockets.connect(f"{lc.url}/STRANGER-9", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                             additional_headers=auth_header("STRANGER-9"))
                assert exc.value.response.status_code == 404
                assert any("STRANGER-9" in r.getMessage() for r in caplog.records)
                ws = await websockets.connect(f"{lc.url}/GOOD-1", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                              additional_headers=auth_header("GOOD-1"))
                bad = await websockets.connect(f"{lc.url}/REFUSED-1", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                               additional_headers=auth_header("REFUSED-1"))
                await cs.wait_connected("GOOD-1")
                before = len(cs.records) + len(cs.raw_in)

                async def answer(frame: str) -> list[Any]:
                    await ws.send(frame)
                    while True:
                        msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                        if msg[0] == 2:  # our SetChargingProfile: accept it
                            await ws.send(json.dumps([3, msg[1], {"status": "Accepted"}]))
                            continue
                        return msg

                assert (await answer("[2, \"m1\", \"Heartbeat\", {"))[2] == "FormationViolation"
                assert (await answer('[2, "m2", "StartTransaction", {"connectorId": 1}]'))[2] in (
                    "OccurenceConstraintViolation", "OccurrenceConstraintViolation")
                assert (await answer('[2, "m3", "StatusNotification", {"connectorId": "x", "errorCode": '
                                     '"NoError", "status": "Available"}]'))[2] == "TypeConstraintViolation"
                assert (await answer('[2, "m4", "Frobnicate", {}]'))[2] == "NotImplemented"
                assert (await answer('[2, "m5", "RemoteStartTransaction", {"idTag": "X"}]'))[2] == "NotSupported"
                assert (await answer('[7, "m6", "Heartbeat", {}]'))[2] == "ProtocolError"
                await asyncio.sleep(0.3)
                assert len(cs.records) + len(cs.raw_in) == before  # none of them was forwarded
                ok = await answer('[2, "m7", "Heartbeat", {}]')
                assert ok[0] == 3 and ok[1] == "m7" and "currentTime" in ok[2]
                assert cs.received("Heartbeat")
                up = next(b for b in lc.snapshot()["charge_points"] if b["id"] == "REFUSED-1")
                assert up["upstream"] != "connected" and "401" in (up["upstream_error"] or "")
                await ws.close()
                await bad.close()
        finally:
            await lc.stop()
