"""The connector state machine: OCPP 1.6 §4.9 status transitions, IEC 61851-1 timings, the safety invariant."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from chargepoint import connector as cm
from chargepoint import safety
from hal.interfaces import CpState, FaultKind


def run(events: list[tuple[float, cm.Event]], state: cm.ConnectorState | None = None):
    s = state or cm.ConnectorState(connector_id=1, limit_a=16.0)
    all_actions = []
    for now, ev in events:
        s, actions = cm.step(s, ev, now)
        all_actions.extend(actions)
    return s, all_actions


def statuses(actions) -> list[str]:
    return [a.status for a in actions if isinstance(a, cm.StatusChanged)]


def test_outputs_start_safe() -> None:
    s = cm.ConnectorState(connector_id=1)
    assert not s.contactor_closed and s.pilot_command == cm.F


def test_plug_authorize_charge_unplug() -> None:
    s, a = run([(0, cm.Tick()), (1, cm.Pilot(CpState.B)), (2, cm.Authorize("T")), (3, cm.Pilot(CpState.C))])
    assert statuses(a) == ["Available", "Preparing", "Charging"]  # no SuspendedEV flash at the start
    assert cm.BeginTransaction("T") in a and s.contactor_closed
    assert a.index(cm.OfferCurrent(16.0)) < a.index(cm.CloseContactor())
    s, a = run([(4, cm.Pilot(CpState.A))], s)
    assert a[0] == cm.OpenContactor("pilot left C/D")  # opens first, in the same step
    assert cm.EndTransaction("EVDisconnected") in a and statuses(a) == ["Available"]


def test_authorize_before_plug_then_timeout() -> None:
    s, a = run(
        [(0, cm.Tick()), (1, cm.Authorize("T"))],
        cm.ConnectorState(connector_id=1, limit_a=16, connection_timeout_s=30),
    )
    assert statuses(a)[-1] == "Preparing" and s.next_deadline() == 31
    s, a = run([(31, cm.Tick())], s)
    assert cm.SessionTimedOut("T") in a and statuses(a) == ["Available"]


def test_stop_while_plugged_goes_finishing_and_withdraws_offer() -> None:
    s, _ = run([(0, cm.Pilot(CpState.B)), (0, cm.Authorize("T")), (1, cm.Pilot(CpState.C))])
    s, a = run([(2, cm.Stop("Remote"))], s)
    assert cm.EndTransaction("Remote") in a and cm.OfferCurrent(None) in a
    assert s.contactor_closed  # IEC 61851-1 sequence 10.2: wait for the car to stop drawing
    assert statuses(a) == ["Finishing"]
    s, a = run([(3, cm.Pilot(CpState.B))], s)
    assert cm.OpenContactor("pilot left C/D") in a and not s.contactor_closed


def test_force_open_six_seconds_after_withdrawal() -> None:
    s, _ = run([(0, cm.Pilot(CpState.B)), (0, cm.Authorize("T")), (1, cm.Pilot(CpState.C))])
    s, a = run([(10, cm.Limit(None))], s)
    assert s.contactor_closed and s.next_deadline() == 16 and statuses(a) == ["SuspendedEVSE"]
    s, a = run([(15.9, cm.Tick())], s)
    assert s.contactor_closed
    s, a = run([(16.0, cm.Tick())], s)
    assert not s.contactor_closed and any(isinstance(x, cm.OpenContactor) for x in a)


def test_limit_below_minimum_pauses() -> None:
    s, _ = run([(0, cm.Pilot(CpState.B)), (0, cm.Authorize("T"))])
    s, a = run([(1, cm.Limit(5.0))], s)
    assert s.pilot_command is None and statuses(a) == ["SuspendedEVSE"]
    s, a = run([(2, cm.Limit(6.0))], s)
    assert cm.OfferCurrent(6.0) in a


def test_fault_opens_at_once_and_holds_state_f() -> None:
    s, _ = run([(0, cm.Pilot(CpState.B)), (0, cm.Authorize("T")), (1, cm.Pilot(CpState.C))])
    s, a = run([(5, cm.Fault(FaultKind.OVERCURRENT))], s)
    assert a[0] == cm.OpenContactor("fault") and cm.PilotUnavailable() in a
    assert statuses(a) == ["Faulted"] and s.in_transaction  # a fault does not end the transaction
    s, a = run([(5.1, cm.FaultClear(FaultKind.OVERCURRENT))], s)
    assert s.pilot_command == cm.F  # IEC 61851-1 Table A.5: at least 300 ms in F
    assert s.next_deadline() == 5.3
    s, a = run([(5.3, cm.Tick())], s)
    assert s.pilot_command == 16.0


def test_latched_fault_needs_reset() -> None:
    s, _ = run([(0, cm.Fault(FaultKind.WELD, latched=True))])
    s, _ = run([(1, cm.FaultClear(FaultKind.WELD))], s)
    assert s.status == "Faulted" and s.error_code == "PowerSwitchFailure"
    s, _ = run([(2, cm.ResetFaults()), (2.01, cm.Pilot(CpState.A))], s)  # the first reading after state F
    assert s.status == "Available"


def test_meter_fault_is_reported_but_does_not_stop_charging() -> None:
    s, _ = run([(0, cm.Pilot(CpState.B)), (0, cm.Authorize("T")), (1, cm.Pilot(CpState.C))])
    s, a = run([(2, cm.Fault(FaultKind.METER))], s)
    assert s.contactor_closed and s.error_code == "PowerMeterFailure" and s.status == "Charging"


def test_state_e_is_a_fault() -> None:
    s, a = run(
        [(0, cm.Pilot(CpState.B)), (0, cm.Authorize("T")), (1, cm.Pilot(CpState.C)), (2, cm.Pilot(CpState.E))]
    )
    assert not s.contactor_closed and s.status == "Faulted" and s.error_code == "EVCommunicationError"


def test_unavailable_and_reserved() -> None:
    s, a = run([(0, cm.Availability(False))])
    assert s.status == "Unavailable" and s.pilot_command == cm.F
    s, a = run([(1, cm.Availability(True)), (1.01, cm.Pilot(CpState.A)), (2, cm.Reserved(True))], s)
    assert statuses(a) == ["Available", "Reserved"]
    s, a = run([(3, cm.Authorize("T"))], s)
    assert s.status == "Preparing"


def test_ev_suspended() -> None:
    s, _ = run([(0, cm.Pilot(CpState.B)), (0, cm.Authorize("T")), (1, cm.Pilot(CpState.C))])
    s, a = run([(2, cm.Pilot(CpState.B))], s)
    assert statuses(a) == ["SuspendedEV"] and not s.contactor_closed


# ----------------------------------------------------------------------- the invariant, over random sequences

EVENTS = st.one_of(
    st.sampled_from(list(CpState)).map(cm.Pilot),
    st.sampled_from(["A", "B"]).map(cm.Authorize),
    st.sampled_from(["Local", "Remote", "EVDisconnected"]).map(cm.Stop),
    st.builds(cm.Fault, st.sampled_from(list(FaultKind)), st.booleans()),
    st.sampled_from(list(FaultKind)).map(cm.FaultClear),
    st.just(cm.ResetFaults()),
    st.booleans().map(cm.Availability),
    st.one_of(st.none(), st.floats(0, 80)).map(cm.Limit),
    st.booleans().map(cm.Reserved),
    st.just(cm.Tick()),
    st.just(cm.OutputsForcedSafe()),
)


class ConnectorMachine(RuleBasedStateMachine):
    """Random events at random times: the contactor is never closed outside the invariant, and it is
    never the defensive last-resort opening that keeps it safe."""

    def __init__(self) -> None:
        super().__init__()
        self.state = cm.ConnectorState(connector_id=1, min_current_a=6.0)
        self.now = 0.0

    @rule(event=EVENTS, dt=st.floats(0, 8))
    def apply(self, event: cm.Event, dt: float) -> None:
        self.now += dt
        before = self.state
        self.state, actions = cm.step(self.state, event, self.now)
        assert cm.OpenContactor("safety invariant") not in actions
        closes = [a for a in actions if isinstance(a, cm.CloseContactor)]
        if closes:
            # the literal rule of DEVELOPERS.md at the moment of closing
            s = self.state
            assert s.pilot.wants_power and s.in_transaction and s.session_tag and s.operative and not s.faults
            assert s.limit_a is not None and s.limit_a >= s.min_current_a
        if isinstance(event, cm.Fault) and event.kind not in cm.NON_BLOCKING_FAULTS:
            assert not self.state.contactor_closed
            if before.contactor_closed:
                assert isinstance(actions[0], cm.OpenContactor)
        if isinstance(event, cm.Pilot) and event.state not in (CpState.C, CpState.D, CpState.F):
            assert not self.state.contactor_closed

    @invariant()
    def contactor_within_invariant(self) -> None:
        assert safety.contactor_allowed(self.state, self.now)
        if self.state.contactor_closed:
            assert self.state.pilot_command not in (cm.F,) or self.state.withdrawn_at is not None

    @invariant()
    def status_is_an_ocpp_status(self) -> None:
        assert self.state.status in {
            "",
            "Available",
            "Preparing",
            "Charging",
            "SuspendedEV",
            "SuspendedEVSE",
            "Finishing",
            "Reserved",
            "Unavailable",
            "Faulted",
        }


ConnectorMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestConnectorInvariant = ConnectorMachine.TestCase


# ----------------------------------------------------------------------- found in review


def _charging() -> cm.ConnectorState:
    s, _ = run([(0, cm.Pilot(CpState.B)), (0, cm.Authorize("T")), (1, cm.Pilot(CpState.C))])
    assert s.contactor_closed
    return s


def test_contactor_never_closes_on_a_reading_taken_before_state_f() -> None:
    s = _charging()
    s, _ = run([(2, cm.Fault(FaultKind.OVERTEMP)), (2.0, cm.Pilot(CpState.F))], s)  # the car is invisible now
    s, a = run([(3, cm.FaultClear(FaultKind.OVERTEMP)), (3.5, cm.Tick())], s)
    assert not s.contactor_closed and cm.CloseContactor() not in a  # the last reading (C) is stale
    s, a = run([(3.6, cm.Pilot(CpState.A))], s)  # the fresh reading: the car was unplugged meanwhile
    assert not s.contactor_closed and cm.EndTransaction("EVDisconnected") in a


def test_after_the_fault_hold_the_pilot_shows_12v_so_the_car_can_be_seen() -> None:
    s = _charging()
    s, _ = run([(2, cm.Pilot(CpState.E))], s)
    assert s.status == "Faulted" and s.in_transaction  # a short is not an unplug
    s, a = run([(2.3, cm.Tick())], s)
    assert cm.OfferCurrent(None) in a  # not latched: +12 V, no current offered
    s, _ = run([(2.4, cm.Pilot(CpState.B))], s)
    assert FaultKind.CP_SHORT not in s.faults and s.status != "Faulted"


def test_latched_fault_keeps_state_f() -> None:
    s = _charging()
    s, _ = run([(2, cm.Fault(FaultKind.RCD, latched=True)), (3, cm.Tick())], s)
    assert s.pilot_command == cm.F


def test_unplug_clears_an_over_current_fault() -> None:
    s = _charging()
    s, _ = run([(2, cm.Fault(FaultKind.OVERCURRENT)), (2.5, cm.Tick()), (2.6, cm.Pilot(CpState.A))], s)
    assert FaultKind.OVERCURRENT not in s.faults and s.status == "Available"


def test_scheduled_inoperative_applies_in_the_step_that_ends_the_transaction() -> None:
    s = _charging()
    s, a = run([(2, cm.Availability(False))], s)
    assert s.operative and s.pending_inoperative and s.contactor_closed and statuses(a) == []
    s, a = run([(3, cm.Stop("Local"))], s)
    assert not s.operative and cm.EndTransaction("Local") in a
    s, a = run([(4, cm.Authorize("OTHER"))], s)  # no new session can slip in
    assert s.session_tag is None and not any(isinstance(x, cm.BeginTransaction) for x in a)


def test_state_d_needs_ventilation() -> None:
    base = cm.ConnectorState(connector_id=1, limit_a=16.0)
    s, _ = run([(0, cm.Pilot(CpState.B)), (0, cm.Authorize("T")), (1, cm.Pilot(CpState.D))], base)
    assert not s.contactor_closed
    from dataclasses import replace

    s, _ = run(
        [(0, cm.Pilot(CpState.B)), (0, cm.Authorize("T")), (1, cm.Pilot(CpState.D))],
        replace(base, ventilation=True),
    )
    assert s.contactor_closed


# ----------------------------------------------------------------------- start of charging: no SuspendedEV flash


def _transaction_started_in_b(at: float = 2.0) -> tuple[cm.ConnectorState, list[cm.Action]]:
    return run([(0, cm.Tick()), (1, cm.Pilot(CpState.B)), (at, cm.Authorize("T"))])


def test_a_start_stays_preparing_until_the_car_answers_the_offer() -> None:
    s, a = _transaction_started_in_b()
    assert cm.BeginTransaction("T") in a and cm.OfferCurrent(16.0) in a
    assert s.in_transaction and s.status == "Preparing" and "SuspendedEV" not in statuses(a)
    s, a = run([(2.4, cm.Pilot(CpState.C))], s)
    assert statuses(a) == ["Charging"] and s.contactor_closed


def test_a_car_that_does_not_answer_within_the_settle_time_is_suspended_ev() -> None:
    s, _ = _transaction_started_in_b(at=2.0)
    assert s.next_deadline() == 2.0 + cm.EV_ANSWER_SETTLE_S  # the controller delivers a Tick then
    s, a = run([(4.99, cm.Tick())], s)
    assert s.status == "Preparing" and statuses(a) == []
    s, a = run([(5.0, cm.Tick())], s)
    assert statuses(a) == ["SuspendedEV"] and not s.contactor_closed
    assert s.next_deadline() is None  # no tick storm after the settle time
    s, a = run([(9, cm.Pilot(CpState.C))], s)  # a late answer still charges
    assert statuses(a) == ["Charging"] and s.contactor_closed


def test_only_the_start_gets_the_settle_time_a_later_suspend_is_reported_at_once() -> None:
    s, _ = _transaction_started_in_b()
    s, _ = run([(2.1, cm.Pilot(CpState.C))], s)
    s, a = run([(3, cm.Pilot(CpState.B))], s)
    assert statuses(a) == ["SuspendedEV"]
    s, a = run([(4, cm.Limit(None)), (5, cm.Limit(16.0))], s)  # paused by the EVSE and offered again
    assert statuses(a) == ["SuspendedEVSE", "SuspendedEV"]


def test_a_start_paused_by_the_evse_settles_from_the_first_offer() -> None:
    base = cm.ConnectorState(connector_id=1, limit_a=None)
    s, a = run([(0, cm.Tick()), (1, cm.Pilot(CpState.B)), (2, cm.Authorize("T"))], base)
    assert s.in_transaction and s.status == "SuspendedEVSE"  # nothing offered: the EVSE suspends
    s, a = run([(10, cm.Limit(16.0))], s)
    assert cm.OfferCurrent(16.0) in a and statuses(a) == ["Preparing"]
    assert s.next_deadline() == 10 + cm.EV_ANSWER_SETTLE_S
    s, a = run([(10.2, cm.Pilot(CpState.C))], s)
    assert statuses(a) == ["Charging"]


# ----------------------------------------------------------------------- back to Operative: only the real status


def _unavailable_after_a_session_with_the_car_still_in() -> cm.ConnectorState:
    s = _charging()
    s, _ = run([(2, cm.Availability(False)), (3, cm.Stop("Local")), (3.05, cm.Pilot(CpState.B))], s)
    s, _ = run([(3.1, cm.Tick()), (3.2, cm.Pilot(CpState.F))], s)  # the EVSE drives state F: car invisible
    assert s.status == "Unavailable" and s.pilot_command == cm.F and s.pilot_stale
    return s


def test_operative_again_after_the_car_left_reports_available_only() -> None:
    s = _unavailable_after_a_session_with_the_car_still_in()
    assert s.finishing  # the car was in when the transaction ended; it leaves unseen behind state F
    s, a = run([(10, cm.Availability(True))], s)
    assert cm.OfferCurrent(None) in a and statuses(a) == []  # +12 V again, status kept until the car is seen
    s, a = run([(10.02, cm.Pilot(CpState.A))], s)
    assert statuses(a) == ["Available"]


def test_operative_again_with_a_car_plugged_in_meanwhile_reports_preparing_only() -> None:
    s, _ = run([(0, cm.Tick()), (0.1, cm.Pilot(CpState.A)), (1, cm.Availability(False)), (1.1, cm.Pilot(CpState.F))])
    assert s.status == "Unavailable"
    s, a = run([(10, cm.Availability(True))], s)  # a car was plugged in while the pilot showed state F
    assert statuses(a) == []
    s, a = run([(10.02, cm.Pilot(CpState.B))], s)
    assert statuses(a) == ["Preparing"]


def test_operative_again_without_a_fresh_reading_reports_after_the_wait() -> None:
    s = _unavailable_after_a_session_with_the_car_still_in()
    s, a = run([(10, cm.Availability(True))], s)
    assert statuses(a) == [] and s.next_deadline() == 10 + cm.FRESH_READING_WAIT_S
    s, a = run([(10 + cm.FRESH_READING_WAIT_S, cm.Tick())], s)  # a pilot driver that never reports: best guess
    assert statuses(a) == ["Finishing"] and s.next_deadline() is None


def test_a_cleared_fault_is_reported_once_the_car_is_seen_again() -> None:
    s, _ = run([(0, cm.Tick()), (0.1, cm.Pilot(CpState.B)), (1, cm.Fault(FaultKind.OVERTEMP))])
    assert s.status == "Faulted"
    s, a = run([(1.1, cm.FaultClear(FaultKind.OVERTEMP)), (1.3, cm.Tick())], s)  # car unplugged meanwhile
    assert statuses(a) == [] and cm.OfferCurrent(None) in a
    s, a = run([(1.32, cm.Pilot(CpState.A))], s)
    assert statuses(a) == ["Available"]


def test_outputs_forced_safe_are_taken_as_the_truth() -> None:
    s = _charging()
    s, a = run([(5, cm.OutputsForcedSafe())], s)
    assert not s.contactor_closed and s.pilot_command == cm.F and s.pilot_stale and s.in_transaction
    assert cm.CloseContactor() not in a and s.next_deadline() == 5 + safety.FAULT_STATE_F_MIN_S
    s, a = run([(5.3, cm.Tick())], s)
    assert cm.OfferCurrent(16.0) in a and not s.contactor_closed  # offered again; closes on a fresh C
    s, a = run([(5.35, cm.Pilot(CpState.C))], s)
    assert s.contactor_closed and s.status == "Charging"
