"""Controller behaviour end to end against the loopback central system: interval keys apply at once, the
cable lock's failure is answered truthfully, log lines say what happened."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from pathlib import Path

import pytest
from conftest import running_station

from chargepoint.csms import CentralSystem
from hal.interfaces import FaultKind


def _stamp(payload: dict) -> datetime:
    return datetime.fromisoformat(payload["meterValue"][0]["timestamp"].replace("Z", "+00:00"))


def _clock_samples(cs: CentralSystem) -> list[dict]:
    return [
        p
        for p in cs.received("MeterValues")
        if p["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Clock"
    ]


# ----------------------------------------------------------------------- intervals apply at once (item 3)


@pytest.mark.parametrize("old", ["3600", "0"])
async def test_clock_aligned_interval_change_applies_at_the_next_boundary_of_the_new_interval(
    tmp_path: Path, old: str
) -> None:
    """3600 → 2 must not wait out the hour; 0 → 2 must not wait for a 10 s poll. The next Sample.Clock is at
    the next 2 s boundary after the change (ClockAlignedDataInterval, OCPP 1.6 §9.1)."""
    keys = {"ClockAlignedDataInterval": int(old), "MeterValuesAlignedData": "Energy.Active.Import.Register"}
    async with running_station(tmp_path, keys=keys) as st:
        loop = asyncio.get_running_loop()
        assert _clock_samples(st.csms) == []
        ans = await st.call("ChangeConfiguration", {"key": "ClockAlignedDataInterval", "value": "2"})
        assert ans["status"] == "Accepted"
        changed_at = loop.time()
        first = await st.csms.wait_for(lambda: _clock_samples(st.csms), timeout=4)
        assert loop.time() - changed_at <= 2.5  # the next 2 s boundary, plus delivery
        ts = _stamp(first[0])
        assert ts.second % 2 == 0 and ts.microsecond == 0  # stamped with its boundary
        second = await st.csms.wait_for(lambda: len(_clock_samples(st.csms)) >= 2 and _clock_samples(st.csms))
        assert (_stamp(second[1]) - ts).total_seconds() == 2.0


async def test_clock_aligned_interval_set_to_zero_stops_the_samples(tmp_path: Path) -> None:
    keys = {"ClockAlignedDataInterval": 1, "MeterValuesAlignedData": "Energy.Active.Import.Register"}
    async with running_station(tmp_path, keys=keys) as st:
        await st.csms.wait_for(lambda: _clock_samples(st.csms), timeout=3)
        assert (await st.call("ChangeConfiguration", {"key": "ClockAlignedDataInterval", "value": "0"}))[
            "status"
        ] == "Accepted"
        n = len(_clock_samples(st.csms))
        await asyncio.sleep(1.5)
        assert len(_clock_samples(st.csms)) <= n + 1  # at most one already under way


async def test_meter_value_sample_interval_change_applies_at_once(tmp_path: Path) -> None:
    async with running_station(tmp_path, keys={"MeterValueSampleInterval": 3600}) as st:
        await st.start_charging()

        def periodic() -> list[dict]:
            return [
                p
                for p in st.csms.received("MeterValues")
                if p["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Periodic"
            ]

        assert periodic() == []
        ans = await st.call("ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "1"})
        assert ans["status"] == "Accepted"
        samples = await st.csms.wait_for(lambda: len(periodic()) >= 2 and periodic(), timeout=4)
        assert samples[0]["transactionId"] == 1001


async def test_heartbeat_interval_change_applies_at_once(tmp_path: Path) -> None:
    async with running_station(tmp_path) as st:
        assert st.controller.keys["HeartbeatInterval"] == 300  # from the BootNotification answer
        assert (await st.call("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "1"}))[
            "status"
        ] == "Accepted"
        await st.csms.wait_for_message("Heartbeat", count=2, timeout=4)


# ----------------------------------------------------------------------- the cable lock (item 6)


async def test_unlock_connector_fails_while_the_lock_is_jammed(tmp_path: Path) -> None:
    async with running_station(tmp_path) as st:
        st.bench.ev(1).plug()
        await st.wait_status("Preparing")
        st.bench.inject(1, FaultKind.LOCK)  # what `fault 1 lock` does in chargepoint simulate
        await st.wait_status("Faulted")
        assert st.controller.connectors[1].state.error_code == "ConnectorLockFailure"
        assert (await st.call("UnlockConnector", {"connectorId": 1}))["status"] == "UnlockFailed"
        st.bench.clear(1, FaultKind.LOCK)
        await st.wait_status("Preparing")
        assert (await st.call("UnlockConnector", {"connectorId": 1}))["status"] == "Unlocked"


async def test_unlock_connector_fails_when_the_lock_reports_a_fault_but_claims_it_moved(tmp_path: Path) -> None:
    async with running_station(tmp_path) as st:
        st.bench.ev(1).plug()
        await st.wait_status("Preparing")
        lock = st.controller.connectors[1].hw.lock
        assert lock is not None
        st.bench.inject(1, FaultKind.LOCK)
        lock.jammed = False  # type: ignore[attr-defined]  # a driver whose unlock() says True regardless
        await st.wait_status("Faulted")
        assert (await st.call("UnlockConnector", {"connectorId": 1}))["status"] == "UnlockFailed"


# ----------------------------------------------------------------------- log lines (item 7)


async def test_a_cleared_fault_is_logged_as_info(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chargepoint")
    async with running_station(tmp_path) as st:
        st.bench.inject(1, FaultKind.OVERTEMP)
        await st.wait_status("Faulted")
        st.bench.clear(1, FaultKind.OVERTEMP)
        await st.csms.wait_for(lambda: any("fault cleared" in r.getMessage() for r in caplog.records))
        cleared = [r for r in caplog.records if "fault cleared" in r.getMessage()]
        assert [r.levelno for r in cleared] == [logging.INFO]


async def test_a_stop_with_an_open_transaction_names_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chargepoint")
    async with running_station(tmp_path) as st:
        await st.start_charging()
        tx = st.controller.connectors[1].tx
        assert tx is not None and tx.transaction_id == 1001
        await st.controller.stop()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stopping with transaction")]
    assert len(lines) == 1 and "transaction 1001" in lines[0] and "connector 1" in lines[0]


# ----------------------------------------------------------------------- statuses the central system sees


def _sent(st: object, connector_id: int = 1) -> list[str]:
    return [p["status"] for p in st.csms.received("StatusNotification") if p["connectorId"] == connector_id]  # type: ignore[attr-defined]


async def test_a_start_is_reported_preparing_then_charging(tmp_path: Path) -> None:
    async with running_station(tmp_path) as st:
        await st.start_charging()
        await st.csms.wait_for(lambda: _sent(st)[-1:] == ["Charging"])
        assert _sent(st) == ["Available", "Preparing", "Charging"]


async def test_operative_again_reports_only_the_status_the_connector_is_in(tmp_path: Path) -> None:
    async with running_station(tmp_path) as st:
        await st.csms.wait_for(lambda: _sent(st) == ["Available"])
        assert (await st.call("ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}))[
            "status"
        ] == "Accepted"
        await st.csms.wait_for(lambda: _sent(st)[-1:] == ["Unavailable"])
        st.bench.ev(1).plug()  # behind state F: the controller cannot see it
        await asyncio.sleep(0.1)
        assert (await st.call("ChangeAvailability", {"connectorId": 1, "type": "Operative"}))[
            "status"
        ] == "Accepted"
        await st.csms.wait_for(lambda: _sent(st)[-1:] == ["Preparing"])
        await asyncio.sleep(0.2)  # nothing else follows
        assert _sent(st) == ["Available", "Unavailable", "Preparing"]
