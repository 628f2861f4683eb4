"""What one connector is in: the state the state machine (chargepoint/connector.py) steps and the safety
invariant (chargepoint/safety.py) judges.

Dependencies point one way (issue 13): this module knows neither of them; safety.py reads this state;
connector.py reads both. The timing rules the state's own deadlines need (IEC 61851-1 sequence 10.2 and
Table A.5) are defined here and re-exported by safety.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hal.interfaces import CpState, FaultKind

FORCE_OPEN_AFTER_S = 6.0  # IEC 61851-1 sequence 10.2
FAULT_STATE_F_MIN_S = 0.3  # IEC 61851-1 Table A.5: state F for at least 300 ms after a fault
F = "F"  # pilot command: state F
EV_ANSWER_SETTLE_S = 3.0  # a transaction's first PWM offer: the car's time to answer before SuspendedEV
FRESH_READING_WAIT_S = 3.0  # after state F: how long the last status is kept waiting for a fresh reading
_SEEN_BLIND = frozenset({"Unavailable", "Faulted"})  # statuses reported while the car may be invisible


@dataclass(frozen=True)
class ConnectorState:
    connector_id: int
    min_current_a: float = 6.0
    connection_timeout_s: float = 60.0
    stop_on_ev_disconnect: bool = True
    pilot: CpState = CpState.A
    operative: bool = True
    faults: frozenset[FaultKind] = frozenset()  # faults that make charging unsafe
    notices: frozenset[FaultKind] = frozenset()  # non-blocking faults, reported only
    latched: frozenset[FaultKind] = frozenset()
    last_fault_at: float | None = None
    session_tag: str | None = None
    session_since: float = 0.0
    in_transaction: bool = False
    finishing: bool = False
    reserved: bool = False
    limit_a: float | None = None
    contactor_closed: bool = False
    pilot_command: float | str | None = F  # F, None (X1) or amps — outputs start safe
    withdrawn_at: float | None = None
    status: str = ""
    error_code: str = "NoError"
    stopping_reason: str | None = field(default=None)
    # The last pilot reading is stale while the EVSE itself drives −12 V (state F): the car cannot be seen.
    pilot_stale: bool = True
    pending_inoperative: bool = False  # ChangeAvailability(Inoperative) Scheduled until the transaction ends
    ventilation: bool = False  # IEC 61851-1: state D may only be energized where ventilation is provided
    ev_settled: bool = False  # this transaction's start is over: the car answered, or had its settle time
    offer_since: float | None = None  # the first offer of this transaction began then
    left_f_at: float | None = None  # the pilot command left state F then (the reading is stale until seen)
    # A socket (IEC 62196-2 Type 2) learns the cable's rating from PP: nothing is offered before a valid one.
    cable_required: bool = False
    cable_a: float | None = None  # the plugged cable's current capability (socket), None = not known
    fault_info: tuple[tuple[FaultKind, str], ...] = ()  # latest detail per fault kind (for the CSMS)

    def in_fault_hold(self, now: float) -> bool:
        return self.last_fault_at is not None and now < self.last_fault_at + FAULT_STATE_F_MIN_S

    @property
    def all_faults(self) -> frozenset[FaultKind]:
        return self.faults | self.notices

    def next_deadline(self) -> float | None:
        """When a Tick must be delivered at the latest for the timers to be exact."""
        deadlines = []
        if self.withdrawn_at is not None and self.contactor_closed:
            deadlines.append(self.withdrawn_at + FORCE_OPEN_AFTER_S)
        if self.last_fault_at is not None and self.pilot_command == F and not self.faults:
            deadlines.append(self.last_fault_at + FAULT_STATE_F_MIN_S)
        if self.session_tag is not None and not self.in_transaction and not self.pilot.vehicle_connected:
            deadlines.append(self.session_since + self.connection_timeout_s)
        if self.in_transaction and self.offer_since is not None and not self.ev_settled:
            deadlines.append(self.offer_since + EV_ANSWER_SETTLE_S)
        if self.holding_blind_status() and self.pilot_command != F and self.left_f_at is not None:
            deadlines.append(self.left_f_at + FRESH_READING_WAIT_S)
        return min(deadlines) if deadlines else None

    def holding_blind_status(self, now: float | None = None) -> bool:
        """Is the status reported while the car was invisible kept, waiting for a fresh pilot reading?"""
        if not (
            self.pilot_stale
            and self.status in _SEEN_BLIND
            and self.operative
            and not self.faults
            and not self.in_transaction
        ):
            return False
        if self.pilot_command == F:
            return True  # still in state F (the 300 ms after a fault): nothing can be seen yet
        if self.left_f_at is None:
            return False
        return now is None or now < self.left_f_at + FRESH_READING_WAIT_S
