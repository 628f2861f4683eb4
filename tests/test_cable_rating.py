"""Cable rating from the proximity pilot (IEC 61851-1 Annex B, IEC 62196-2): the pure model band by band,
the state machine, the MCP3008 driver on gpiozero's mock SPI, the configuration and the whole controller."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from chargepoint import connector as cm
from chargepoint import safety
from chargepoint.config import ConfigError, parse_config
from chargepoint.simulate import Simulator
from hal.interfaces import CableChanged, CableState, CpState, FaultKind, HardwareConfigError
from hal.pp import (
    ADC_MAX,
    RC_CODES,
    RC_TOLERANCE,
    REFERENCE_CIRCUIT,
    PpCircuit,
    PpMonitor,
    bands,
    classify,
)
from hal.registry import BuildContext, build
from tests.conftest import Station, running_station
from tests.fakes.mcp3008 import FakeMCP3008

# ---------------------------------------------------------------- the pure model

CIRCUITS = {
    "reference (ratiometric pull-up)": REFERENCE_CIRCUIT,
    "5 V pull-up + divider": PpCircuit(pullup_ohm=2700.0, supply_v=5.0, vref_v=3.3, series_ohm=10_000.0,
                                       divider_ohm=22_000.0, supply_tolerance=0.02),
}


def _corner_counts(circuit: PpCircuit, rc: float) -> list[int]:
    """What the ADC can read for ``rc`` with every part anywhere in its tolerance (ADC error included)."""
    t, s = circuit.resistor_tolerance, circuit.supply_tolerance
    out = []
    for a, b, c, d in itertools.product((1 - t, 1 + t), (1 - t, 1 + t), (1 - t, 1 + t), (1 - s, 1 + s)):
        f = circuit.fraction(rc, pullup=circuit.pullup_ohm * a, series=circuit.series_ohm * b,
                             divider=None if circuit.divider_ohm is None else circuit.divider_ohm * c,
                             supply=circuit.supply_v * d)
        n = round(f * ADC_MAX)
        out.extend([max(n - circuit.adc_error_lsb, 0), min(n + circuit.adc_error_lsb, ADC_MAX)])
    return out


@pytest.mark.parametrize("name", list(CIRCUITS))
def test_bands_are_ordered_and_separated_by_gaps(name: str) -> None:
    table = bands(CIRCUITS[name])
    assert [b.amps for b in table] == [63.0, 32.0, 20.0, 13.0, None]
    for below, above in itertools.pairwise(table):
        assert above.lo > below.hi + 1  # a gap: a reading between codes exists and is invalid


@pytest.mark.parametrize("name", list(CIRCUITS))
@pytest.mark.parametrize(("amps", "rc"), RC_CODES)
def test_every_tolerance_corner_reads_as_its_code(name: str, amps: float, rc: float) -> None:
    circuit = CIRCUITS[name]
    table = bands(circuit)
    for r in (rc * (1 - RC_TOLERANCE), rc, rc * (1 + RC_TOLERANCE)):
        for counts in _corner_counts(circuit, r):
            reading = classify(counts, table, circuit)
            assert (reading.state, reading.amps) == (CableState.RATED, amps), (r, counts)


@pytest.mark.parametrize("name", list(CIRCUITS))
def test_band_edges(name: str) -> None:
    circuit = CIRCUITS[name]
    table = bands(circuit)
    for band in table:
        inside = CableState.ABSENT if band.amps is None else CableState.RATED
        for counts in (band.lo, band.hi):
            r = classify(counts, table, circuit)
            assert (r.state, r.amps) == (inside, band.amps)
        assert classify(band.lo - 1, table, circuit).state == CableState.INVALID
        if band.hi < ADC_MAX:
            assert classify(band.hi + 1, table, circuit).state == CableState.INVALID


def test_between_codes_short_and_unknown_resistors_are_invalid() -> None:
    c = REFERENCE_CIRCUIT
    table = bands(c)
    cases = {0.0: "below the 63 A code", 50.0: "below the 63 A code", 150.0: "between the 63 A and 32 A",
             450.0: "between the 32 A and 20 A", 1000.0: "between the 20 A and 13 A",
             2700.0: "above the 13 A code", 4700.0: "above the 13 A code"}
    for rc, why in cases.items():
        r = classify(c.counts(rc), table, c)
        assert r.state == CableState.INVALID and why in r.detail, (rc, r)
    assert classify(c.counts(math.inf), table, c).state == CableState.ABSENT
    assert classify(c.counts(100_000.0), table, c).state == CableState.ABSENT
    # the detail names the measured resistance (it becomes StatusNotification.info, ≤ 50 characters)
    r = classify(c.counts(450.0), table, c)
    assert "PP 449 ohm" in r.detail and len(r.detail) <= 50  # 450 ohm read back at 10-bit resolution


def test_resistance_estimate_inverts_the_circuit() -> None:
    for c in CIRCUITS.values():
        for rc in (100.0, 220.0, 680.0, 1500.0):
            assert c.ohms(c.counts(rc)) == pytest.approx(rc, rel=0.03)


def test_a_circuit_that_cannot_tell_codes_apart_is_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        bands(PpCircuit(pullup_ohm=100_000.0))  # all codes squeezed near 0 V


def test_monitor_debounces_and_reports_the_first_stable_reading() -> None:
    c = REFERENCE_CIRCUIT
    m = PpMonitor(1, c, debounce_s=0.1, fail_limit=3)
    open_, r13, r20, bad = c.counts(math.inf), c.counts(1500), c.counts(680), c.counts(1000)
    assert m.sample(open_, 0.0) == []
    [ev] = m.sample(open_, 0.1)
    assert ev == CableChanged(1, CableState.ABSENT, None, "PP open: no cable")
    # plugging in bounces through invalid readings shorter than the debounce: not reported
    assert m.sample(bad, 1.0) == [] and m.sample(bad, 1.05) == []
    assert m.sample(r20, 1.06) == [] and m.sample(r20, 1.1) == []
    [ev] = m.sample(r20, 1.17)
    assert (ev.state, ev.amps) == (CableState.RATED, 20.0)
    # a steady invalid reading is reported
    assert m.sample(bad, 2.0) == []
    [ev] = m.sample(bad, 2.1)
    assert ev.state == CableState.INVALID and "between the 20 A and 13 A" in ev.detail
    [ev] = [*m.sample(r13, 3.0), *m.sample(r13, 3.1)]
    assert (ev.state, ev.amps) == (CableState.RATED, 13.0)
    # failed ADC reads: UNKNOWN after fail_limit in a row, once
    assert m.sample(None, 4.0, "boom") == [] and m.sample(None, 4.1, "boom") == []
    [ev] = m.sample(None, 4.2, "boom")
    assert ev.state == CableState.UNKNOWN and "boom" in ev.detail
    assert m.sample(None, 4.3, "boom") == []
    assert m.sample(r13, 5.0) == []
    [ev] = m.sample(r13, 5.1)
    assert (ev.state, ev.amps) == (CableState.RATED, 13.0)


# ---------------------------------------------------------------- the state machine


def _socket(**kw: Any) -> cm.ConnectorState:
    return cm.ConnectorState(**{"connector_id": 1, "limit_a": 32.0, "cable_required": True, **kw})


def _run(s: cm.ConnectorState, events: list[tuple[float, cm.Event]]) -> tuple[cm.ConnectorState, list[cm.Action]]:
    out: list[cm.Action] = []
    for now, ev in events:
        s, actions = cm.step(s, ev, now)
        out.extend(actions)
    return s, out


def _offers(actions: list[cm.Action]) -> list[float | None]:
    return [a.amps for a in actions if isinstance(a, cm.OfferCurrent)]


def test_socket_offers_nothing_until_the_cable_is_read_then_at_most_its_rating() -> None:
    s, actions = _run(_socket(), [(0, cm.Pilot(CpState.B)), (0, cm.Authorize("T")), (1, cm.Pilot(CpState.C))])
    assert not s.in_transaction and not s.contactor_closed  # no StartTransaction before the rating either
    assert all(a is None for a in _offers(actions)) and not any(isinstance(a, cm.CloseContactor) for a in actions)
    s, actions = _run(s, [(2, cm.Cable(CableState.RATED, 13.0)), (2, cm.Pilot(CpState.C))])
    assert _offers(actions) == [13.0] and s.contactor_closed
    s, actions = _run(s, [(3, cm.Limit(10.0))])
    assert _offers(actions) == [10.0]  # below the cable's rating the limit decides


def test_no_transaction_begins_on_a_socket_before_a_valid_rating() -> None:
    """Authorized before plugging: the car's pilot (B) arrives before PP (PP makes last in a Type 2 plug);
    StartTransaction waits for the rating, and never comes for an invalid cable."""
    s, actions = _run(_socket(), [(0, cm.Authorize("T")), (0.1, cm.Pilot(CpState.B))])
    assert not s.in_transaction and not any(isinstance(a, cm.BeginTransaction) for a in actions)
    t, actions = _run(s, [(0.2, cm.Cable(CableState.RATED, 20.0))])
    assert t.in_transaction and any(isinstance(a, cm.BeginTransaction) for a in actions)
    t, actions = _run(s, [(0.2, cm.Cable(CableState.INVALID, None, "bad"))])
    assert not t.in_transaction and t.status == "Faulted"


def test_tethered_connector_is_unchanged_by_pp() -> None:
    s, actions = _run(cm.ConnectorState(connector_id=1, limit_a=32.0),
                      [(0, cm.Pilot(CpState.B)), (0, cm.Authorize("T")), (0, cm.Pilot(CpState.C)),
                       (1, cm.Cable(CableState.INVALID, None, "x"))])
    assert s.contactor_closed and 32.0 in _offers(actions) and not s.faults


def test_invalid_cable_is_a_fault_cleared_only_by_unplugging() -> None:
    s, _ = _run(_socket(), [(0, cm.Pilot(CpState.B)), (0, cm.Cable(CableState.INVALID, None, "PP 450 ohm: x"))])
    assert s.status == "Faulted" and s.error_code == "OtherError"
    assert cm.vendor_error_fields(s) == {"vendorErrorCode": "InvalidCable", "info": "PP 450 ohm: x"}
    s, _ = _run(s, [(0.1, cm.Authorize("T")), (1, cm.Pilot(CpState.C))])
    assert not s.in_transaction and not s.contactor_closed
    s, _ = _run(s, [(2, cm.Cable(CableState.RATED, 32.0))])  # a flicker back to a code: still refused
    assert FaultKind.CABLE in s.faults and s.status == "Faulted"
    s, actions = _run(s, [(3, cm.Cable(CableState.ABSENT)), (3, cm.Pilot(CpState.A)), (4, cm.Tick())])
    assert not s.faults and cm.vendor_error_fields(s) == {}
    assert not any(isinstance(a, cm.BeginTransaction) for a in actions)  # never a transaction on that cable
    assert s.status == "Preparing"  # the tap still waits ConnectionTimeOut for a (good) cable


def test_losing_pp_while_charging_opens_at_once() -> None:
    """PP is the first contact to break when a Type 2 plug is pulled: open before the power pins do."""
    s, _ = _run(_socket(), [(0, cm.Cable(CableState.RATED, 32.0)), (0, cm.Pilot(CpState.B)),
                            (0, cm.Authorize("T")), (1, cm.Pilot(CpState.C))])
    assert s.contactor_closed
    for state in (CableState.ABSENT, CableState.UNKNOWN):
        t, actions = cm.step(s, cm.Cable(state), 2)
        assert not t.contactor_closed and isinstance(actions[0], cm.OpenContactor)
        assert t.pilot_command is None


def test_unknown_rating_offers_nothing_but_is_no_cable_fault() -> None:
    s, _ = _run(_socket(), [(0, cm.Pilot(CpState.B)), (0, cm.Authorize("T")),
                            (0, cm.Cable(CableState.UNKNOWN, None, "PP ADC read failed")), (1, cm.Pilot(CpState.C))])
    assert not s.contactor_closed and FaultKind.CABLE not in s.faults and s.pilot_command is None


CABLE_EVENTS = st.one_of(
    st.sampled_from([cm.Pilot(p) for p in CpState]),
    st.just(cm.Authorize("T")),
    st.just(cm.Stop()),
    st.sampled_from([cm.Limit(a) for a in (None, 5.0, 6.0, 13.0, 16.0, 32.0, 63.0)]),
    st.sampled_from([cm.Cable(CableState.RATED, a) for a in (13.0, 20.0, 32.0, 63.0)]),
    st.sampled_from([cm.Cable(s) for s in (CableState.ABSENT, CableState.INVALID, CableState.UNKNOWN)]),
    st.sampled_from([cm.Fault(FaultKind.OVERTEMP), cm.FaultClear(FaultKind.OVERTEMP), cm.FaultClear(FaultKind.CABLE)]),
    st.just(cm.Tick()),
)


class SocketMachine(RuleBasedStateMachine):
    """Random events on a socket: no offer above the cable's rating or without one, no contactor without
    one, and never the defensive last resort doing the work."""

    def __init__(self) -> None:
        super().__init__()
        self.state = _socket(min_current_a=6.0, limit_a=None)
        self.now = 0.0

    @rule(event=CABLE_EVENTS, dt=st.floats(0, 8))
    def apply(self, event: cm.Event, dt: float) -> None:
        self.now += dt
        self.state, actions = cm.step(self.state, event, self.now)
        assert cm.OpenContactor("safety invariant") not in actions
        assert actions.count(cm.OfferCurrent(None)) <= 1
        for a in actions:
            if isinstance(a, cm.OfferCurrent) and a.amps is not None:
                assert self.state.cable_a is not None and a.amps <= self.state.cable_a
            if isinstance(a, cm.CloseContactor):
                assert self.state.cable_a is not None

    @invariant()
    def invariants(self) -> None:
        assert safety.contactor_allowed(self.state, self.now)
        assert safety.offer_allowed(self.state)
        if self.state.contactor_closed:
            assert self.state.cable_a is not None


SocketMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestSocketInvariant = SocketMachine.TestCase


# ---------------------------------------------------------------- the driver on mock SPI


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    old = Device.pin_factory
    Device.pin_factory = f  # gpiozero's software SPI bus ignores pin_factory= and uses the default
    yield f
    f.reset()
    Device.pin_factory = old


def _set_rc(adc: FakeMCP3008, channel: int, rc: float, circuit: PpCircuit = REFERENCE_CIRCUIT) -> None:
    adc.channels[channel] = circuit.fraction(rc) * adc.vref


async def _until(cond: Any, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.01)


async def test_driver_reads_the_cable_through_the_mcp3008(factory: MockFactory) -> None:
    adc = FakeMCP3008(pin_factory=factory)
    _set_rc(adc, 2, math.inf)
    events: list[CableChanged] = []
    dev = build("pp", {"driver": "mcp3008", "channel": 2, "poll_hz": 50, "debounce_ms": 40},
                "connectors[0].pp", 1, BuildContext(gpio_pin_factory=factory))
    await dev.start(events.append)  # type: ignore[arg-type]
    try:
        await _until(lambda: events)
        assert events[0].state == CableState.ABSENT
        for rc, state, amps in ((680.0, CableState.RATED, 20.0), (450.0, CableState.INVALID, None),
                                (1500.0, CableState.RATED, 13.0), (math.inf, CableState.ABSENT, None)):
            _set_rc(adc, 2, rc)
            await _until(lambda state=state, amps=amps: (events[-1].state, events[-1].amps) == (state, amps))
        adc.fail = True
        await _until(lambda: events[-1].state == CableState.UNKNOWN)
        adc.fail = False
        _set_rc(adc, 2, 220.0)
        await _until(lambda: (events[-1].state, events[-1].amps) == (CableState.RATED, 32.0))
        assert dev.amps == 32.0  # type: ignore[attr-defined]
    finally:
        await dev.stop()


def test_driver_options_are_checked(factory: MockFactory) -> None:
    ctx = BuildContext(gpio_pin_factory=factory)
    build("pilot", {"driver": "pwm", "channel": 0}, "connectors[0].pilot", 1, ctx)
    with pytest.raises(HardwareConfigError, match=r"connectors\[0\].pp.channel"):
        build("pp", {"driver": "mcp3008", "channel": 0}, "connectors[0].pp", 1, ctx)  # the pilot's channel
    with pytest.raises(HardwareConfigError, match="channel"):
        build("pp", {"driver": "mcp3008"}, "connectors[0].pp", 1, ctx)  # required
    with pytest.raises(HardwareConfigError, match="pullup_ohm"):
        build("pp", {"driver": "mcp3008", "channel": 3, "pullup_ohm": 100_000}, "connectors[0].pp", 1, ctx)
    with pytest.raises(HardwareConfigError, match="unknown option"):
        build("pp", {"driver": "mcp3008", "channel": 3, "pull_up": 1000}, "connectors[0].pp", 1, ctx)


# ---------------------------------------------------------------- configuration

BASE: dict[str, Any] = {
    "chargepoint": {"id": "CP-1"},
    "csms": {"url": "ws://127.0.0.1:9/ocpp"},
}


def _cfg(**connector: Any) -> Any:
    c = {"pilot": {"driver": "sim"}, "contactor": {"driver": "sim"}, "meter": {"driver": "sim"}, **connector}
    return parse_config({**BASE, "connectors": [c]})


def test_configuration_of_the_cable_input() -> None:
    assert not _cfg().connectors[0].cable.socket  # no table: tethered, rated max_current_a
    tethered = _cfg(pp={"driver": "none", "rating_a": 20})
    assert not tethered.connectors[0].cable.socket and tethered.connectors[0].cable.tethered_rating_a == 20
    assert "pp" not in tethered.connectors[0].devices
    socket = _cfg(pp={"driver": "mcp3008", "channel": 2})
    assert socket.connectors[0].cable.socket and socket.connectors[0].devices["pp"]["channel"] == 2
    for bad, key in (({"driver": "laser"}, "connectors[0].pp.driver"),
                     ({"driver": "none", "rating_a": 100}, "connectors[0].pp.rating_a"),
                     ({"driver": "none", "channel": 2}, "connectors[0].pp.channel"),
                     ("yes", "connectors[0].pp")):
        with pytest.raises(ConfigError) as err:
            _cfg(pp=bad)
        assert [p.key for p in err.value.problems] == [key]


# ---------------------------------------------------------------- end to end


async def _tx_profile_remote_start(st: Station, amps: float) -> None:
    prof = {"chargingProfileId": 5, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0,
                                                                                      "limit": amps}]}}
    answer = await st.call("RemoteStartTransaction", {"idTag": "TAG1", "connectorId": 1, "chargingProfile": prof})
    assert answer["status"] == "Accepted"


async def test_a_13a_cable_on_a_32a_connector_with_a_32a_txprofile_gets_at_most_13a(tmp_path: Path) -> None:
    async with running_station(tmp_path) as st:
        offers: list[float | None] = []
        st.controller.listeners.append(lambda kind, d: offers.append(d["amps"]) if kind == "offer" else None)
        st.bench.ev(1).plug(13)
        await _tx_profile_remote_start(st, 32)
        await st.wait_status("Charging")
        rt = st.controller.connectors[1]
        assert rt.hw.pilot.offered_amps == 13.0
        assert max(a for a in offers if a is not None) == 13.0
        assert st.bench.ev(1).drawn_a == 13.0
        snap = st.controller.snapshot()["connectors"][0]
        assert snap["cable_a"] == 13.0 and snap["limit_source"] == "cable rating 13 A (PP)"
        assert {"amps": 32.0, "source": "TxProfile#5"} in snap["limit_claims"]
        # unplugging opens and the next car's cable is read afresh
        st.bench.ev(1).unplug()
        await st.csms.wait_for_message("StopTransaction")
        assert st.controller.snapshot()["connectors"][0]["cable"]["state"] == "absent"


async def test_invalid_cable_is_reported_to_the_central_system_and_cleared_on_unplug(tmp_path: Path) -> None:
    async with running_station(tmp_path) as st:
        sim = Simulator(st.controller)
        assert await sim.execute("plug 1 0") == {"ok": True}
        st.bench.readers[0].present("TAG1")
        sn = await st.csms.wait_for_message("StatusNotification", where=lambda p: p["status"] == "Faulted")
        assert sn["errorCode"] == "OtherError" and sn["vendorErrorCode"] == "InvalidCable"
        assert "valid coding" in sn["info"]
        await asyncio.sleep(0.2)
        rt = st.controller.connectors[1]
        assert rt.hw.pilot.offered_amps is None and not rt.hw.contactor.is_closed and rt.tx is None
        assert st.controller.snapshot()["connectors"][0]["cable"]["state"] == "invalid"
        await sim.execute("unplug 1")
        await st.wait_status("Available")
        # the same connector charges with a good cable afterwards (at its rating)
        await sim.execute("plug 1 20")
        st.bench.readers[0].present("TAG1")
        await st.wait_status("Charging")
        assert rt.hw.pilot.offered_amps == 20.0


async def test_simulate_plug_with_a_rating(tmp_path: Path) -> None:
    async with running_station(tmp_path) as st:
        sim = Simulator(st.controller)
        for line, error in (("plug 1 many", "number of amps"), ("plug 1 200", "0 to 80")):
            with pytest.raises(ValueError, match=error):
                await sim.execute(line)
        await sim.execute("plug 1")
        assert st.bench.ev(1).cable_a == 32.0
        await st.csms.wait_for(lambda: st.controller.snapshot()["connectors"][0]["cable_a"] == 32.0)
        status = await sim.execute("status")
        assert status is not None and status["connectors"][0]["cable"]["state"] == "rated"


# ---------------------------------------------------------------- commissioning


@pytest.mark.parametrize(("plugged_rc", "expected"), [(1500.0, "PASS"), (680.0, "FAIL")])
async def test_commissioning_checks_the_pp_input(factory: MockFactory, plugged_rc: float, expected: str) -> None:
    from chargepoint.commissioning import Session, Timeouts, check_cable
    from hal.interfaces import ConnectorHardware, StationHardware

    adc = FakeMCP3008(pin_factory=factory)
    _set_rc(adc, 2, math.inf)
    pp = build("pp", {"driver": "mcp3008", "channel": 2, "poll_hz": 50, "debounce_ms": 40}, "connectors[0].pp", 1,
               BuildContext(gpio_pin_factory=factory))
    conn = ConnectorHardware(1, pilot=None, contactor=None, meter=None, pp=pp)  # type: ignore[arg-type]

    def ask(question: str) -> str:
        if "13 A cable" in question:
            _set_rc(adc, 2, plugged_rc)
        return ""

    out: list[str] = []
    s = Session(StationHardware([conn]), ask, out.append, False, Timeouts(adapter_s=1.0, settle_s=1.0))
    await pp.start(s.events.append)
    try:
        await check_cable(s, conn)
    finally:
        await pp.stop()
    assert [status for status, _ in s.results] == ["PASS", expected], out
    if expected == "FAIL":
        assert any("20 A cable" in line for line in out) and any("check:" in line for line in out)
