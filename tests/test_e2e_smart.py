"""Smart Charging end to end: profiles from the loopback central system drive the simulated pilot and EV."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from conftest import Station, running_station

from chargepoint.metering import measured_current
from chargepoint.smart.profiles import format_datetime


def profile(
    pid: int,
    purpose: str,
    periods: list[tuple[int, float]],
    *,
    stack: int = 0,
    kind: str = "Absolute",
    unit: str = "A",
    start: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    schedule: dict[str, Any] = {
        "chargingRateUnit": unit,
        "chargingSchedulePeriod": [{"startPeriod": s, "limit": lim} for s, lim in periods],
    }
    if start is not None:
        schedule["startSchedule"] = start
    return {
        "chargingProfileId": pid,
        "stackLevel": stack,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": kind,
        "chargingSchedule": schedule,
        **extra,
    }


class Offers:
    """Pilot commands from the controller timeline, with monotonic timestamps."""

    def __init__(self, station: Station) -> None:
        self.events: list[tuple[float, int, float | None]] = []
        station.controller.listeners.append(self._on)

    def _on(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "offer":
            self.events.append((time.monotonic(), data["connector"], data["amps"]))

    def of(self, connector_id: int) -> list[tuple[float, float | None]]:
        return [(t, a) for t, c, a in self.events if c == connector_id]


async def set_profile(station: Station, connector_id: int, prof: dict[str, Any]) -> Any:
    return await station.call("SetChargingProfile", {"connectorId": connector_id, "csChargingProfiles": prof})


def offered(station: Station, connector_id: int) -> float | None:
    return station.controller.connectors[connector_id].hw.pilot.offered_amps


def source(station: Station, connector_id: int) -> str:
    snap = station.controller.snapshot()
    return next(c for c in snap["connectors"] if c["id"] == connector_id)["limit_source"]


async def test_charge_point_max_shared_by_two_cars_never_overloads(tmp_path: Path) -> None:
    async with running_station(tmp_path, connectors=2) as st:
        answer = await set_profile(st, 0, profile(1, "ChargePointMaxProfile", [(0, 16)]))
        assert answer == {"status": "Accepted"}
        offers = Offers(st)
        await st.start_charging(1, "TAG1")
        assert offered(st, 1) == 16.0
        assert "ChargePointMaxProfile#1" in source(st, 1)
        st.bench.ev(2).plug()
        st.bench.readers[0].present("TAG2")
        await st.csms.wait_for(lambda: offered(st, 1) == 8.0 and offered(st, 2) == 8.0, timeout=8)
        await st.wait_status("Charging", 2)
        # At no moment did the pilots together offer more than the 16 A of the ChargePointMaxProfile:
        # car 2 waited (SuspendedEVSE) until car 1 had been turned down.
        current: dict[int, float] = {1: 16.0, 2: 0.0}
        for _t, cid, amps in offers.events:
            current[cid] = amps or 0.0
            assert current[1] + current[2] <= 16.0
        snap = st.controller.snapshot()
        for c in snap["connectors"]:
            assert c["limit_a"] == 8.0
            assert "load balancer" in c["limit_source"] and "ChargePointMaxProfile#1" in c["limit_source"]
            assert {"amps": 16.0, "source": "ChargePointMaxProfile#1"} in c["limit_claims"]
        # the simulated cars follow: their meters measure 8 A each
        await st.csms.wait_for(
            lambda: all(
                abs(measured_current(st.bench.meters[cid].snapshot()) - 8.0) < 0.01 for cid in (1, 2)
            ),
            timeout=2,
        )
        # Car 1 leaves: car 2 gets the whole 16 A (an increase: at most one change per 5 s).
        st.bench.ev(1).unplug()
        await st.csms.wait_for(lambda: offered(st, 2) == 16.0, timeout=7)


async def test_below_minimum_the_second_car_waits_for_its_turn(tmp_path: Path) -> None:
    async with running_station(tmp_path, connectors=2) as st:
        assert (await set_profile(st, 0, profile(1, "ChargePointMaxProfile", [(0, 10)])))[
            "status"
        ] == "Accepted"
        await st.start_charging(1, "TAG1")
        assert offered(st, 1) == 10.0
        st.bench.ev(2).plug()
        st.bench.readers[0].present("TAG2")
        await st.csms.wait_for_message("StartTransaction", count=2)
        await st.wait_status("SuspendedEVSE", 2)
        await asyncio.sleep(0.2)
        # 10 A cannot feed two cars at 6 A: car 1 keeps its turn, car 2 is paused (no PWM current)
        assert offered(st, 1) == 10.0 and offered(st, 2) is None
        assert st.status(1) == "Charging"
        snap = st.controller.snapshot()
        car2 = next(c for c in snap["connectors"] if c["id"] == 2)
        assert car2["limit_a"] is None and "waiting for its turn" in car2["limit_source"]
        assert any(cl["amps"] is None for cl in car2["limit_claims"])
        # the profile is lifted: both fit, car 2 charges
        assert (await st.call("ClearChargingProfile", {"id": 1})) == {"status": "Accepted"}
        await st.wait_status("Charging", 2)
        assert offered(st, 1) is not None and offered(st, 1) + offered(st, 2) <= 32.0  # type: ignore[operator]


async def test_tx_profile_step_reaches_pilot_at_the_boundary(tmp_path: Path) -> None:
    async with running_station(tmp_path) as st:
        offers = Offers(st)
        await st.start_charging()
        assert offered(st, 1) == 32.0
        c = st.controller
        rt = c.connectors[1]
        assert rt.tx is not None and rt.tx.transaction_id is not None
        # startSchedule 0.6 s in the past, step at 6 s: the boundary is ~5.4 s from now, more than 5 s
        # after the transaction's first offer, so the rate limit does not hold it.
        start = (c.now() - timedelta(seconds=0.6)).replace(microsecond=(c.now().microsecond // 1000) * 1000)
        boundary_wall = start + timedelta(seconds=6)
        prof = profile(
            7,
            "TxProfile",
            [(0, 32), (6, 10)],
            start=format_datetime(start),
            transactionId=rt.tx.transaction_id,
        )
        boundary_mono = time.monotonic() + (boundary_wall - c.now()).total_seconds()
        assert await set_profile(st, 1, prof) == {"status": "Accepted"}
        assert offered(st, 1) == 32.0
        await st.csms.wait_for(lambda: offered(st, 1) == 10.0, timeout=8)
        changes = [(t, a) for t, a in offers.of(1) if a == 10.0]
        assert len(changes) == 1
        late = changes[0][0] - boundary_mono
        assert -0.01 <= late <= 0.1, f"pilot changed {late * 1000:.0f} ms after the boundary"
        assert source(st, 1) == "TxProfile#7"
        await st.csms.wait_for(
            lambda: abs(measured_current(st.bench.meters[1].snapshot()) - 10.0) < 0.01, timeout=2
        )
        # ... and the controller's own reading shows it once the EV had its 5 s to follow
        await st.csms.wait_for(
            lambda: rt.reading is not None and abs(measured_current(rt.reading) - 10.0) < 0.01, timeout=6
        )
        assert st.status() == "Charging"
        # The TxProfile ends with the transaction.
        st.bench.ev(1).unplug()
        await st.csms.wait_for_message("StopTransaction")
        await st.csms.wait_for(lambda: c.smart.profiles.get(7) is None)  # type: ignore[attr-defined]
        assert st.controller.snapshot()["smart_charging"]["profiles"] == []


async def test_invalid_profiles_rejected_and_nothing_changes(tmp_path: Path) -> None:
    async with running_station(tmp_path) as st:
        good = profile(1, "TxDefaultProfile", [(0, 20)], kind="Relative")
        assert await set_profile(st, 1, good) == {"status": "Accepted"}
        await st.csms.wait_for(lambda: st.controller.limits.limit(1) == 20.0)
        before = st.controller.snapshot()["smart_charging"]["profiles"]
        start = format_datetime(st.controller.now())
        # Same id as the installed profile: wrongly accepting any of them would replace it.
        bad = {
            "periods out of order": profile(
                1, "TxDefaultProfile", [(0, 16), (20, 10), (10, 8)], kind="Relative"
            ),
            "first period not 0": profile(1, "TxDefaultProfile", [(5, 16)], kind="Relative"),
            "negative limit": profile(1, "TxDefaultProfile", [(0, -1)], kind="Relative"),
            "TxProfile without transaction": profile(1, "TxProfile", [(0, 8)], kind="Relative"),
            "stackLevel above max": profile(1, "TxDefaultProfile", [(0, 8)], kind="Relative", stack=11),
            "recurring without startSchedule": profile(
                1, "TxDefaultProfile", [(0, 8)], kind="Recurring", recurrencyKind="Daily"
            ),
            "relative with startSchedule": profile(
                1, "TxDefaultProfile", [(0, 8)], kind="Relative", start=start
            ),
            "ChargePointMax on a connector": profile(1, "ChargePointMaxProfile", [(0, 8)], start=start),
        }
        for name, prof in bad.items():
            assert await set_profile(st, 1, prof) == {"status": "Rejected"}, name
        assert (await set_profile(st, 3, profile(2, "TxDefaultProfile", [(0, 8)], kind="Relative")))[
            "status"
        ] == "Rejected"
        # an unknown unit is a schema violation: CALLERROR, not an answer
        unit = await set_profile(st, 1, profile(1, "TxDefaultProfile", [(0, 8)], kind="Relative", unit="kW"))
        assert unit["__error__"] == "PropertyConstraintViolation"
        await asyncio.sleep(0.05)
        assert st.controller.snapshot()["smart_charging"]["profiles"] == before
        assert st.controller.limits.limit(1) == 20.0


async def test_get_composite_schedule_and_clear(tmp_path: Path) -> None:
    async with running_station(tmp_path) as st:
        c = st.controller
        start = format_datetime(c.now().replace(microsecond=0))
        assert (await set_profile(st, 0, profile(1, "ChargePointMaxProfile", [(0, 16)], start=start)))[
            "status"
        ] == "Accepted"
        assert (await set_profile(st, 1, profile(2, "TxDefaultProfile", [(0, 10), (60, 20)], start=start)))[
            "status"
        ] == "Accepted"
        conf = await st.call("GetCompositeSchedule", {"connectorId": 1, "duration": 120})
        assert conf["status"] == "Accepted" and conf["connectorId"] == 1
        periods = conf["chargingSchedule"]["chargingSchedulePeriod"]
        assert [p["limit"] for p in periods] == [10, 16]
        assert 58 <= periods[1]["startPeriod"] <= 60
        assert conf["chargingSchedule"]["chargingRateUnit"] == "A"
        watts = await st.call(
            "GetCompositeSchedule", {"connectorId": 1, "duration": 30, "chargingRateUnit": "W"}
        )
        assert watts["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 10 * 230 * 3
        total = await st.call("GetCompositeSchedule", {"connectorId": 0, "duration": 120})
        # the grid total: the one connector's 10 A then 16 A (its 20 A capped by the ChargePointMax)
        assert [p["limit"] for p in total["chargingSchedule"]["chargingSchedulePeriod"]] == [10, 16]
        assert (await st.call("GetCompositeSchedule", {"connectorId": 4, "duration": 60}))[
            "status"
        ] == "Rejected"
        assert c.limits.limit(1) == 10.0 and c.limits.source(1) == "TxDefaultProfile#2"
        # ClearChargingProfile: by id, then a selection that matches nothing
        assert (await st.call("ClearChargingProfile", {"id": 2})) == {"status": "Accepted"}
        assert (await st.call("ClearChargingProfile", {"id": 2})) == {"status": "Unknown"}
        assert (
            await st.call(
                "ClearChargingProfile", {"connectorId": 1, "chargingProfilePurpose": "TxDefaultProfile"}
            )
        ) == {"status": "Unknown"}
        await st.csms.wait_for(lambda: c.limits.limit(1) == 16.0)
        assert c.limits.source(1) == "ChargePointMaxProfile#1"
        assert (await st.call("ClearChargingProfile", {})) == {"status": "Accepted"}
        await st.csms.wait_for(lambda: c.limits.limit(1) == 32.0)


async def test_profiles_survive_a_restart(tmp_path: Path) -> None:
    async with running_station(tmp_path) as st:
        start = format_datetime(st.controller.now())
        assert (await set_profile(st, 0, profile(3, "ChargePointMaxProfile", [(0, 25)], start=start)))[
            "status"
        ] == "Accepted"
        assert (
            await set_profile(st, 1, profile(4, "TxDefaultProfile", [(0, 12)], kind="Relative", stack=2))
        )["status"] == "Accepted"
        before = st.controller.snapshot()["smart_charging"]["profiles"]
    async with running_station(tmp_path) as st2:
        assert st2.controller.snapshot()["smart_charging"]["profiles"] == before
        assert st2.controller.limits.limit(1) == 12.0 and st2.controller.limits.source(1) == "TxDefaultProfile#4"
        await st2.start_charging()
        assert offered(st2, 1) == 12.0


async def test_remote_start_with_tx_profile(tmp_path: Path) -> None:
    async with running_station(tmp_path) as st:
        c = st.controller
        offers = Offers(st)
        st.bench.ev(1).plug()
        wrong = profile(9, "TxDefaultProfile", [(0, 12)], kind="Relative")
        assert (
            await st.call(
                "RemoteStartTransaction", {"idTag": "R1", "connectorId": 1, "chargingProfile": wrong}
            )
        )["status"] == "Rejected"
        good = profile(9, "TxProfile", [(0, 12)], kind="Relative")
        assert (
            await st.call(
                "RemoteStartTransaction", {"idTag": "R1", "connectorId": 1, "chargingProfile": good}
            )
        )["status"] == "Accepted"
        await st.wait_status("Charging")
        rt = c.connectors[1]
        await st.csms.wait_for(lambda: rt.tx is not None and rt.tx.transaction_id is not None)
        entry = await st.csms.wait_for(lambda: (e := c.smart.profiles.get(9)) and e[1].transaction_id and e)
        assert entry[1].transaction_id == rt.tx.transaction_id  # type: ignore[union-attr]
        # the first offer of the transaction already respected the profile
        assert [a for _t, a in offers.of(1) if a is not None] == [12.0]
        assert source(st, 1) == "TxProfile#9"
        assert (await st.call("RemoteStopTransaction", {"transactionId": rt.tx.transaction_id}))[  # type: ignore[union-attr]
            "status"
        ] == "Accepted"
        await st.csms.wait_for(lambda: c.smart.profiles.get(9) is None)


async def test_current_given_back_is_handed_on_only_once_the_car_followed(tmp_path: Path) -> None:
    """A car may take up to 5 s (+ margin) to follow a cut: until a meter reading shows it did, the other
    connector is not offered what it gave back, so the pair never draws more than the station limit."""
    async with running_station(tmp_path, connectors=2) as st:
        assert (await set_profile(st, 0, profile(1, "ChargePointMaxProfile", [(0, 16)])))[
            "status"
        ] == "Accepted"
        await st.start_charging(1, "TAG1")
        c = st.controller
        offers = Offers(st)
        reads_of_1_at_offer_2: list[float] = []

        def on_offer(kind: str, data: dict) -> None:
            if kind == "offer" and data["connector"] == 2 and data["amps"]:
                reads_of_1_at_offer_2.append(c.smart.read_at(1))  # type: ignore[attr-defined]

        c.listeners.append(on_offer)
        st.bench.ev(2).plug()
        st.bench.readers[0].present("TAG2")
        await st.csms.wait_for(lambda: offered(st, 2) == 8.0, timeout=12)
        cut_at = next(t for t, cid, amps in offers.events if cid == 1 and amps == 8.0)
        first_offer_2 = next(t for t, cid, amps in offers.events if cid == 2 and amps)
        assert cut_at <= first_offer_2
        # connector 2 got current only after connector 1's meter had been read after the cut (or the
        # follow window of 11 s had passed)
        assert reads_of_1_at_offer_2[0] > cut_at - 0.005 or first_offer_2 - cut_at >= 11.0


async def test_connector_zero_composite_is_the_grid_total(tmp_path: Path) -> None:
    """§5.7: connector 0 reports the total expected consumption: the sum of the connectors, capped by the
    charge point's own limits."""
    async with running_station(tmp_path, connectors=2) as st:
        assert (await set_profile(st, 0, profile(1, "TxDefaultProfile", [(0, 16)])))["status"] == "Accepted"
        total = await st.call(
            "GetCompositeSchedule", {"connectorId": 0, "duration": 3600, "chargingRateUnit": "A"}
        )
        assert total["chargingSchedule"]["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 32, "numberPhases": 3}]
        assert (await set_profile(st, 0, profile(2, "ChargePointMaxProfile", [(0, 20)])))[
            "status"
        ] == "Accepted"
        total = await st.call(
            "GetCompositeSchedule", {"connectorId": 0, "duration": 3600, "chargingRateUnit": "A"}
        )
        assert total["chargingSchedule"]["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 20, "numberPhases": 3}]
        one = await st.call(
            "GetCompositeSchedule", {"connectorId": 1, "duration": 3600, "chargingRateUnit": "A"}
        )
        assert one["chargingSchedule"]["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 16, "numberPhases": 3}]


async def test_two_cars_plugged_in_at_the_same_instant_never_overload(tmp_path: Path) -> None:
    async with running_station(tmp_path, connectors=2, keys={"ConnectionTimeOut": 60}) as st:
        assert (await set_profile(st, 0, profile(1, "ChargePointMaxProfile", [(0, 16)])))[
            "status"
        ] == "Accepted"
        offers = Offers(st)
        st.bench.readers[0].present("TAG1")
        await st.wait_status("Preparing", 1)
        st.bench.readers[0].present("TAG2")
        await st.wait_status("Preparing", 2)
        st.bench.ev(1).plug()
        st.bench.ev(2).plug()  # both pilot events are queued before either is processed
        await st.csms.wait_for(lambda: offered(st, 1) and offered(st, 2), timeout=15)
        current = {1: 0.0, 2: 0.0}
        for _t, cid, amps in offers.events:
            current[cid] = amps or 0.0
            assert current[1] + current[2] <= 16.0, offers.events
