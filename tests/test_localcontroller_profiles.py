"""Local controller: the central system's own profiles on a box and on the group are part of the balance.

* A TxProfile/TxDefaultProfile the central system sets on a box (forwarded, accepted by the box) caps that box:
  what it cannot use goes to the others (OCPP 1.6 §3.13.1 stacking: the box applies the minimum of ours and
  the central system's, so allocating it more only holds current back from the rest of the site).
* The group limit (a ChargePointMaxProfile on the local controller's own identity) holds across a restart of
  the local controller, as a charge point's installed profiles do (§3.13.2).
* A queued message the central system answers with a CALLERROR is retried ``transaction_message_attempts``
  times, ``transaction_message_retry_interval_s`` x attempts apart, then dropped (§4.10).
"""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from lc_helpers import foreign_box, lc_config
from ocpp.v16 import call

from chargepoint.csms import CentralSystem, poll_until
from chargepoint.localcontroller.server import LocalController
from chargepoint.localcontroller.store import LcStore

pytestmark = pytest.mark.timeout(90)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _profile(pid: int, purpose: str, limit: float, stack: int = 1, tx: int | None = None,
             min_rate: float | None = None) -> dict[str, Any]:
    sched: dict[str, Any] = {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}
    if min_rate is not None:
        sched["minChargingRate"] = min_rate
    prof: dict[str, Any] = {"chargingProfileId": pid, "stackLevel": stack, "chargingProfilePurpose": purpose,
                            "chargingProfileKind": "Relative", "chargingSchedule": sched}
    if tx is not None:
        prof["transactionId"] = tx
    return prof


def _allocation(box: Any, lc: LocalController) -> float | None:
    return box.limits.get(lc.config.stack_level + 1)


async def _charge(box: Any, tag: str) -> int:
    await box.call(call.StatusNotification(connector_id=1, error_code="NoError", status="Charging"))
    r = await box.call(call.StartTransaction(connector_id=1, id_tag=tag, meter_start=0, timestamp=_now()))
    return int(r.transaction_id)


async def test_central_system_tx_profiles_cap_a_box_and_free_current_for_the_others() -> None:
    async with CentralSystem() as cs:
        lc = LocalController(lc_config(cs.url, ["A-1", "B-1"], site_limit_a=32, follow_s=1), LcStore.open(None))
        await lc.start()
        try:
            a, wsa, ta = await foreign_box(lc.url, "A-1")
            b, wsb, tb = await foreign_box(lc.url, "B-1")
            tx_a = await _charge(a, "TAG-A")
            await _charge(b, "TAG-B")
            await poll_until(lambda: _allocation(a, lc) == 16.0 and _allocation(b, lc) == 16.0, 15)

            # The central system limits A's transaction to 10 A: B gets what A cannot use.
            ans = await cs.call("A-1", "SetChargingProfile", {
                "connectorId": 1, "csChargingProfiles": _profile(501, "TxProfile", 10.0, tx=tx_a)})
            assert ans == {"status": "Accepted"}
            await poll_until(lambda: _allocation(a, lc) == 10.0 and _allocation(b, lc) == 22.0, 15)
            view = {x["id"]: x for x in lc.snapshot()["charge_points"]}
            assert view["A-1"]["central_system_limit_a"] == 10.0

            # A TxDefaultProfile on B (connector 0, all its connectors) with a minChargingRate: capped too.
            ans = await cs.call("B-1", "SetChargingProfile", {
                "connectorId": 0, "csChargingProfiles": _profile(502, "TxDefaultProfile", 14.0, min_rate=8.0)})
            assert ans == {"status": "Accepted"}
            await poll_until(lambda: _allocation(b, lc) == 14.0, 15)
            assert lc.site._boxes["B-1"].min_rate_a == 8.0

            # The central system clears its profile on A by id: A is balanced as before.
            ans = await cs.call("A-1", "ClearChargingProfile", {"id": 501})
            assert ans == {"status": "Accepted"}
            await poll_until(lambda: _allocation(a, lc) == 18.0, 15)  # 32 A minus B's 14 A
            assert _allocation(b, lc) == 14.0
            for t in (ta, tb):
                t.cancel()
            await wsa.close()
            await wsb.close()
        finally:
            await lc.stop()


async def test_a_tx_profile_ends_with_its_transaction() -> None:
    async with CentralSystem() as cs:
        lc = LocalController(lc_config(cs.url, ["A-1"], site_limit_a=32, follow_s=1), LcStore.open(None))
        await lc.start()
        try:
            a, wsa, ta = await foreign_box(lc.url, "A-1")
            tx = await _charge(a, "TAG-A")
            await cs.call("A-1", "SetChargingProfile", {
                "connectorId": 1, "csChargingProfiles": _profile(601, "TxProfile", 9.0, tx=tx)})
            await poll_until(lambda: _allocation(a, lc) == 9.0, 15)
            await a.call(call.StopTransaction(transaction_id=tx, meter_stop=100, timestamp=_now()))
            await poll_until(lambda: lc.site._boxes["A-1"].cap_a is None, 10)
            await _charge(a, "TAG-A")  # a new transaction: the old TxProfile does not apply to it
            await poll_until(lambda: _allocation(a, lc) == 32.0, 15)
            ta.cancel()
            await wsa.close()
        finally:
            await lc.stop()


async def test_group_limit_holds_across_a_restart(tmp_path: Path) -> None:
    port = _free_port()
    async with CentralSystem() as cs:
        cfg = lc_config(cs.url, ["A-1"], site_limit_a=32, follow_s=1, listen=f"127.0.0.1:{port}")
        lc = LocalController(cfg, LcStore.open(tmp_path))
        await lc.start()
        try:
            a, wsa, ta = await foreign_box(lc.url, "A-1")
            await _charge(a, "TAG-A")
            await poll_until(lambda: _allocation(a, lc) == 32.0, 15)
            await cs.wait_connected("LC-GARAGE")
            ans = await cs.call("LC-GARAGE", "SetChargingProfile", {
                "connectorId": 0, "csChargingProfiles": _profile(701, "ChargePointMaxProfile", 20.0)})
            assert ans == {"status": "Accepted"}
            await poll_until(lambda: _allocation(a, lc) == 20.0, 15)
            assert lc.snapshot()["site"]["limit_source"] == "central system group limit"
            ta.cancel()
            await wsa.close()
        finally:
            await lc.stop()
            lc.store.close()

        lc = LocalController(cfg, LcStore.open(tmp_path))  # restarted: the group limit is still there
        await lc.start()
        try:
            assert lc.snapshot()["site"]["limit_a"] == [20.0, 20.0, 20.0]
            held = dict(a.limits)
            a, wsa, ta = await foreign_box(lc.url, "A-1")
            a.limits.update(held)  # the same box again: it kept its installed profiles (§3.13.2)
            await _charge(a, "TAG-A2")

            def box_view() -> dict[str, Any]:
                return next(x for x in lc.snapshot()["charge_points"] if x["id"] == "A-1")

            await poll_until(lambda: box_view()["target_a"] == 20.0, 15)
            await asyncio.sleep(1.5)  # several plans later: never above the group limit
            assert box_view()["allocation_a"] == 20.0 and _allocation(a, lc) == 20.0
            # Cleared by the central system: the fuse again; a second clear finds nothing (§5.5: Unknown).
            await cs.wait_connected("LC-GARAGE")
            assert await cs.call("LC-GARAGE", "ClearChargingProfile", {"id": 701}) == {"status": "Accepted"}
            assert await cs.call("LC-GARAGE", "ClearChargingProfile", {"id": 701}) == {"status": "Unknown"}
            await poll_until(lambda: _allocation(a, lc) == 32.0, 15)
            ta.cancel()
            await wsa.close()
        finally:
            await lc.stop()
            lc.store.close()


async def test_a_tx_profile_still_caps_after_a_reconnect_and_a_restart(tmp_path: Path) -> None:
    """The open transaction (the connector a TxProfile applies to, §3.13.1) is kept per box, not per connection:
    a box that reconnects mid-transaction, or a restart of the local controller, keeps it capped by the central
    system's TxProfile, and the stop still drops the profile."""
    port = _free_port()
    async with CentralSystem() as cs:
        cfg = lc_config(cs.url, ["A-1", "B-1"], site_limit_a=32, follow_s=1, listen=f"127.0.0.1:{port}")

        def view(lc: LocalController, cp: str) -> dict[str, Any]:
            return next(x for x in lc.snapshot()["charge_points"] if x["id"] == cp)

        lc = LocalController(cfg, LcStore.open(tmp_path))
        await lc.start()
        try:
            a, wsa, ta = await foreign_box(lc.url, "A-1")
            b, wsb, tb = await foreign_box(lc.url, "B-1")
            tx = await _charge(a, "TAG-A")
            tx_b = await _charge(b, "TAG-B")
            ans = await cs.call("A-1", "SetChargingProfile", {
                "connectorId": 1, "csChargingProfiles": _profile(801, "TxProfile", 10.0, tx=tx)})
            assert ans == {"status": "Accepted"}
            await poll_until(lambda: _allocation(a, lc) == 10.0 and _allocation(b, lc) == 22.0, 15)
            # the link drops and comes back during the transaction
            ta.cancel()
            await wsa.close()
            a, wsa, ta = await foreign_box(lc.url, "A-1")
            await poll_until(lambda: view(lc, "A-1")["connected"], 10)
            await asyncio.sleep(1.5)  # several plans
            assert view(lc, "A-1")["central_system_limit_a"] == 10.0
            assert _allocation(b, lc) == 22.0
            for t in (ta, tb):
                t.cancel()
            await wsa.close()
            await wsb.close()
        finally:
            await lc.stop()
            lc.store.close()

        lc = LocalController(cfg, LcStore.open(tmp_path))  # restarted mid-transaction
        await lc.start()
        try:
            assert view(lc, "A-1")["transactions"] == [1]
            a, wsa, ta = await foreign_box(lc.url, "A-1")
            b, wsb, tb = await foreign_box(lc.url, "B-1")
            await poll_until(lambda: view(lc, "A-1")["central_system_limit_a"] == 10.0, 10)
            await poll_until(lambda: _allocation(b, lc) == 22.0, 15)
            await a.call(call.StopTransaction(transaction_id=tx, meter_stop=100, timestamp=_now()))
            await poll_until(lambda: view(lc, "A-1")["central_system_limit_a"] is None, 10)
            assert view(lc, "A-1")["transactions"] == []
            for t in (ta, tb):
                t.cancel()
            await wsa.close()
            await wsb.close()
        finally:
            await lc.stop()
            lc.store.close()
        store = LcStore.open(tmp_path)
        left = store.open_transactions()
        store.close()
        assert {cp: {t: c for t, (c, _start) in txs.items()} for cp, txs in left.items() if txs} == {"B-1": {tx_b: 1}}


async def test_the_safe_default_stays_under_the_central_systems_charge_point_max() -> None:
    """Ours is a ChargePointMaxProfile at a higher stackLevel, so on its own (the local controller gone) it would
    override the central system's lower one on the box (§3.13.2): it is lowered to it, and raised back when
    the central system clears its profile."""
    async with CentralSystem() as cs:
        lc = LocalController(lc_config(cs.url, ["A-1", "B-1"], site_limit_a=32, follow_s=1), LcStore.open(None))
        await lc.start()
        safe_level = lc.config.stack_level
        try:
            a, wsa, ta = await foreign_box(lc.url, "A-1")
            await poll_until(lambda: a.limits.get(safe_level) == 16.0, 10)  # half the fuse: two boxes
            # a week-long schedule whose lowest period (11 A) comes after a day
            prof = _profile(901, "ChargePointMaxProfile", 20.0)
            prof["chargingSchedule"]["chargingSchedulePeriod"] += [{"startPeriod": 86400, "limit": 11.0},
                                                                   {"startPeriod": 90000, "limit": 25.0}]
            prof["chargingProfileKind"] = "Absolute"
            prof["chargingSchedule"]["startSchedule"] = _now()
            ans = await cs.call("A-1", "SetChargingProfile", {"connectorId": 0, "csChargingProfiles": prof})
            assert ans == {"status": "Accepted"}
            await poll_until(lambda: a.limits.get(safe_level) == 11.0, 10)

            def view() -> dict[str, Any]:
                return next(x for x in lc.snapshot()["charge_points"] if x["id"] == "A-1")

            await poll_until(lambda: view()["safe_default_a"] == 11.0 and view()["safe_default_installed"], 10)
            assert await cs.call("A-1", "ClearChargingProfile", {"id": 901}) == {"status": "Accepted"}
            await poll_until(lambda: a.limits.get(safe_level) == 16.0, 10)
            await poll_until(lambda: view()["safe_default_a"] == 16.0, 10)
            ta.cancel()
            await wsa.close()
        finally:
            await lc.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_queued_message_refused_by_the_central_system_is_retried_then_dropped(tmp_path: Path) -> None:
    port = _free_port()
    cs = CentralSystem(port=port)
    cs.behaviour.fail_actions = {"MeterValues"}
    cfg = lc_config(cs.url, ["A-1"], transaction_message_attempts=3, transaction_message_retry_interval_s=0.3)
    lc = LocalController(cfg, LcStore.open(tmp_path))
    await lc.start()
    try:
        a, wsa, ta = await foreign_box(lc.url, "A-1")
        tx = await _charge(a, "TAG-A")  # central system unreachable: answered locally, queued
        assert tx < 0
        await a.call(call.MeterValues(connector_id=1, transaction_id=tx, meter_value=[{
            "timestamp": _now(), "sampledValue": [{"value": "100", "measurand": "Energy.Active.Import.Register"}]}]))
        assert lc.store.queue_length("A-1") == 3  # StatusNotification, StartTransaction, MeterValues
        await cs.start()
        await poll_until(lambda: lc.store.queue_length("A-1") == 0, 20)
        assert len(cs.received("MeterValues")) == 3  # three attempts, then dropped
        assert len(cs.received("StartTransaction")) == 1
        ta.cancel()
        await wsa.close()
    finally:
        await lc.stop()
        lc.store.close()
        await cs.close()
