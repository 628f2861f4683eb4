"""The per-connector state machine: a pure function of (state, event, now) → (state, actions).

Inputs are the pilot state, the session (authorized id tag, transaction running),
availability, faults, the current limit and reservations. Outputs are actions the
controller carries out: contactor commands, the pilot offer, OCPP status changes
and transaction begin/end. ``now`` is a monotonic time in seconds.

Status follows OCPP 1.6 §4.9 (StatusNotification) and §7.7 ChargePointStatus:
Available → Preparing (plug-in or authorization) → Charging / SuspendedEV /
SuspendedEVSE → Finishing (transaction over, cable still in) → Available; Reserved,
Unavailable and Faulted override as the specification describes.

Two readings where the status would otherwise not be the truth:

* **Start of charging.** When a transaction begins with the car in state B the EVSE offers PWM and the
  car has not answered yet; "SuspendedEV" would be literally true for those milliseconds, and operators
  read it as a suspend at every start. The connector stays ``Preparing`` until the car answers (C/D →
  ``Charging``) or :data:`EV_ANSWER_SETTLE_S` (3 s, the response window IEC 61851-1 uses at the start of
  charging, sequence 4) passed without an answer (→ ``SuspendedEV``: the car really does not want energy).
  Only the first offer of a transaction gets the settle time; a car that charged and went back to B is
  ``SuspendedEV`` at once. This is the status derivation only: the contactor rules are unchanged.
  MinimumStatusDuration (OCPP 1.6 §9.1) is not the tool for it: it is the central system's own
  debounce of every status and defaults to 0; the settle time describes what the connector is in.
* **Pilot not seen.** While the EVSE itself drives state F (Unavailable, after a fault) it cannot see
  whether a car is plugged in; the last reading is stale. Leaving Unavailable or Faulted, the connector
  keeps reporting that status until the first fresh reading says what it really is (at most
  :data:`FRESH_READING_WAIT_S`), instead of reporting ``Finishing`` for a car that left meanwhile or
  ``Available`` for one that was plugged in meanwhile, followed by the correction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# The state lives in its own module so that the invariant (safety.py) can depend on it without depending
# on this state machine (issue 13: no connector <-> safety cycle); re-exported here (cm.ConnectorState).
from chargepoint import safety
from chargepoint.connector_state import (
    EV_ANSWER_SETTLE_S,
    ConnectorState,
    F,
)
from chargepoint.connector_state import FRESH_READING_WAIT_S as FRESH_READING_WAIT_S
from hal.interfaces import CableState, CpState, FaultKind

# -------------------------------------------------------------------- fault → OCPP errorCode

ERROR_CODES: dict[FaultKind, str] = {
    FaultKind.RCD: "GroundFailure",
    FaultKind.WELD: "PowerSwitchFailure",
    FaultKind.METER: "PowerMeterFailure",
    FaultKind.OVERCURRENT: "OverCurrentFailure",
    FaultKind.DIODE: "EVCommunicationError",
    FaultKind.CP_SHORT: "EVCommunicationError",
    FaultKind.LOCK: "ConnectorLockFailure",
    FaultKind.READER: "ReaderFailure",
    FaultKind.OVERTEMP: "HighTemperature",
    FaultKind.OVERVOLTAGE: "OverVoltage",
    FaultKind.UNDERVOLTAGE: "UnderVoltage",
    FaultKind.PILOT_BOARD: "InternalError",
    FaultKind.OTHER: "OtherError",
    FaultKind.CABLE: "OtherError",
    FaultKind.TEMP_SENSOR: "InternalError",
    FaultKind.PHASE_SWITCH: "OtherError",
}
# Faults without an OCPP errorCode of their own carry a vendorErrorCode and the driver's detail as info
# (OCPP 1.6 §7.44 StatusNotification.req: vendorErrorCode CiString50, info CiString50).
VENDOR_ERROR_CODES: dict[FaultKind, str] = {
    FaultKind.CABLE: "InvalidCable",
    FaultKind.TEMP_SENSOR: "TemperatureSensor",
    FaultKind.PHASE_SWITCH: "PhaseSwitchFailed",
}
# A reader fault or a meter fault does not make charging unsafe: they are reported (errorCode) but do not
# open the contactor. Everything else does.
NON_BLOCKING_FAULTS = frozenset({FaultKind.READER, FaultKind.METER})
FAULT_PRIORITY = [
    FaultKind.RCD,
    FaultKind.WELD,
    FaultKind.OVERCURRENT,
    FaultKind.CP_SHORT,
    FaultKind.DIODE,
    FaultKind.OVERTEMP,
    FaultKind.OVERVOLTAGE,
    FaultKind.UNDERVOLTAGE,
    FaultKind.PILOT_BOARD,
    FaultKind.TEMP_SENSOR,
    FaultKind.CABLE,
    FaultKind.PHASE_SWITCH,
    FaultKind.LOCK,
    FaultKind.OTHER,
    FaultKind.METER,
    FaultKind.READER,
]


# -------------------------------------------------------------------- events


@dataclass(frozen=True)
class Pilot:
    state: CpState


@dataclass(frozen=True)
class Authorize:
    """A session is authorized for ``id_tag`` (the controller already decided)."""

    id_tag: str


@dataclass(frozen=True)
class Stop:
    """End the session: stop the transaction with ``reason`` or drop a pending authorization."""

    reason: str = "Local"


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    latched: bool = False
    info: str = ""  # the driver's detail; reported as StatusNotification.info for VENDOR_ERROR_CODES kinds


@dataclass(frozen=True)
class FaultClear:
    kind: FaultKind


@dataclass(frozen=True)
class ResetFaults:
    """A Reset or a technician clears latched faults."""


@dataclass(frozen=True)
class Availability:
    operative: bool


@dataclass(frozen=True)
class Limit:
    amps: float | None  # None: nothing may be offered now (paused)


@dataclass(frozen=True)
class Reserved:
    reserved: bool


@dataclass(frozen=True)
class Tick:
    """Time passed: timers (6 s force-open, 300 ms state F, ConnectionTimeOut) are evaluated."""


@dataclass(frozen=True)
class OutputsForcedSafe:
    """The controller opened the contactor and drove the pilot to state F without this state machine (the
    task that applies events died, see chargepoint/supervisor.py). The machine takes that as the truth and
    treats it like a fault that is already gone: at least 300 ms in F (IEC 61851-1 Table A.5), then the
    outputs follow the inputs again."""


@dataclass(frozen=True)
class Cable:
    """The proximity pilot (PP) of a socket was read (hal.interfaces.CableChanged)."""

    state: CableState
    amps: float | None = None
    detail: str = ""


Event = (
    Pilot
    | Authorize
    | Stop
    | Fault
    | FaultClear
    | ResetFaults
    | Availability
    | Limit
    | Reserved
    | Tick
    | OutputsForcedSafe
    | Cable
)


# -------------------------------------------------------------------- actions


@dataclass(frozen=True)
class OpenContactor:
    reason: str


@dataclass(frozen=True)
class CloseContactor:
    pass


@dataclass(frozen=True)
class OfferCurrent:
    amps: float | None  # None: constant +12 V, no current offered


@dataclass(frozen=True)
class PilotUnavailable:
    """Constant −12 V: state F."""


@dataclass(frozen=True)
class StatusChanged:
    status: str
    error_code: str = "NoError"
    info: str | None = None


@dataclass(frozen=True)
class BeginTransaction:
    id_tag: str


@dataclass(frozen=True)
class EndTransaction:
    reason: str


@dataclass(frozen=True)
class SessionTimedOut:
    id_tag: str


Action = (
    OpenContactor
    | CloseContactor
    | OfferCurrent
    | PilotUnavailable
    | StatusChanged
    | BeginTransaction
    | EndTransaction
    | SessionTimedOut
)

def _error_code(state: ConnectorState) -> str:
    for kind in FAULT_PRIORITY:
        if kind in state.all_faults:
            return ERROR_CODES[kind]
    return "NoError"


def _derive_status(s: ConnectorState, now: float) -> str:
    if s.faults:
        return "Faulted"
    if s.in_transaction:
        if s.pilot_command is None or s.pilot_command == F or s.withdrawn_at is not None:
            return "SuspendedEVSE"
        if s.contactor_closed and s.pilot.wants_power:
            return "Charging"
        if not s.ev_settled and s.offer_since is not None:
            return "Preparing"  # the car has not had the time to answer the first offer yet
        return "SuspendedEV"
    if not s.operative:
        return "Unavailable"
    if s.holding_blind_status(now):
        return s.status  # the car cannot be seen yet: no guess from the reading taken before state F
    if s.finishing:
        return "Finishing"
    if s.session_tag is not None:
        return "Preparing"
    if s.reserved:
        return "Reserved"
    if s.pilot.vehicle_connected:
        return "Preparing"
    return "Available"


def _desired_pilot(s: ConnectorState, now: float) -> float | str | None:
    """F after a fault for ≥ 300 ms, for latched faults and when unavailable; otherwise during a fault
    constant +12 V (no current offered), so that the car can be seen again (unplugged, short gone)."""
    if s.in_fault_hold(now) or (s.faults & s.latched) or (not s.operative and not s.in_transaction):
        return F
    if s.faults:
        return None
    if (
        s.session_tag is not None
        and s.in_transaction
        and s.pilot.vehicle_connected
        and s.limit_a is not None
        and s.limit_a >= s.min_current_a
        and safety.cable_known(s)
    ):
        # defence in depth: the cable's rating also caps the offer here, not only as a limit claim
        return s.limit_a if s.cable_a is None else min(s.limit_a, s.cable_a)
    return None


def vendor_error_fields(state: ConnectorState) -> dict[str, str]:
    """vendorErrorCode and info for StatusNotification when the fault behind the errorCode has them."""
    for kind in FAULT_PRIORITY:
        if kind in state.all_faults:
            if kind not in VENDOR_ERROR_CODES:
                return {}
            out = {"vendorErrorCode": VENDOR_ERROR_CODES[kind]}
            info = dict(state.fault_info).get(kind, "")
            if info:
                out["info"] = info[:50]
            return out
    return {}


def _with_info(s: ConnectorState, kind: FaultKind, info: str) -> ConnectorState:
    if not info:
        return s
    return replace(s, fault_info=tuple((k, v) for k, v in s.fault_info if k != kind) + ((kind, info),))


def step(state: ConnectorState, event: Event, now: float) -> tuple[ConnectorState, list[Action]]:
    """Apply one event. The returned actions must be carried out in order."""
    s = state
    actions: list[Action] = []

    if isinstance(event, Pilot) and event.state == CpState.F:
        # -12 V is what the EVSE itself drives in state F: it says nothing about the car. The last reading
        # is kept but marked stale; the contactor never closes on a stale reading.
        s = replace(s, pilot_stale=True)
    elif isinstance(event, Pilot):
        s = replace(s, pilot=event.state, pilot_stale=False)
        if event.state == CpState.E:
            s = _add_fault(s, FaultKind.CP_SHORT, False, now)
        elif FaultKind.CP_SHORT in s.faults:
            s = replace(s, faults=s.faults - {FaultKind.CP_SHORT})
        if event.state == CpState.A:
            # Unplugging ends what a car caused: a diode or over-current fault does not outlive the car, nor
            # a failed phase switch (the next session starts from the relay's known state).
            car_faults = {FaultKind.DIODE, FaultKind.OVERCURRENT, FaultKind.PHASE_SWITCH} - s.latched
            s = replace(s, finishing=False, faults=s.faults - car_faults)
            if s.in_transaction and s.stop_on_ev_disconnect:
                s, ended = _end_transaction(s, "EVDisconnected")
                actions.extend(ended)
    elif isinstance(event, Authorize):
        if not s.in_transaction and not s.pending_inoperative and s.operative:
            s = replace(s, session_tag=event.id_tag, session_since=now, finishing=False)
    elif isinstance(event, Stop):
        if s.in_transaction:
            s, ended = _end_transaction(s, event.reason)
            actions.extend(ended)
        elif s.session_tag is not None:
            s = replace(s, session_tag=None)
    elif isinstance(event, Fault):
        s = _with_info(_add_fault(s, event.kind, event.latched, now), event.kind, event.info)
    elif isinstance(event, Cable):
        s = _apply_cable(s, event, now)
    elif isinstance(event, FaultClear):
        if event.kind not in s.latched:
            s = replace(s, faults=s.faults - {event.kind}, notices=s.notices - {event.kind})
    elif isinstance(event, ResetFaults):
        s = replace(s, faults=frozenset(), notices=frozenset(), latched=frozenset())
    elif isinstance(event, Availability):
        if not event.operative and s.in_transaction:
            s = replace(s, pending_inoperative=True)  # OCPP 1.6 §5.2: Scheduled
        else:
            s = replace(s, operative=event.operative, pending_inoperative=False)
    elif isinstance(event, Limit):
        s = replace(s, limit_a=event.amps)
    elif isinstance(event, Reserved):
        s = replace(s, reserved=event.reserved)
    elif isinstance(event, OutputsForcedSafe):
        s = replace(
            s, contactor_closed=False, withdrawn_at=None, pilot_command=F, pilot_stale=True, last_fault_at=now
        )

    if s.in_transaction and not s.ev_settled and s.offer_since is not None:
        if safety.asks_for_power(s) or now >= s.offer_since + EV_ANSWER_SETTLE_S:
            s = replace(s, ev_settled=True)  # the car answered, or had its time: statuses are literal now

    # ConnectionTimeOut: authorized but no cable within the time (OCPP 1.6 §9.1.7).
    if (
        s.session_tag is not None
        and not s.in_transaction
        and not s.pilot.vehicle_connected
        and now >= s.session_since + s.connection_timeout_s
    ):
        actions.append(SessionTimedOut(s.session_tag))
        s = replace(s, session_tag=None)

    # A transaction begins when the session is authorized and the cable is in (OCPP 1.6 §4.8, §5.11); on a
    # socket "the cable is in" includes a valid PP rating (no StartTransaction for an unusable cable).
    if (
        s.session_tag is not None
        and not s.in_transaction
        and s.pilot.vehicle_connected
        and s.operative
        and not s.faults
        and safety.cable_known(s)
    ):
        s = replace(s, in_transaction=True, finishing=False, ev_settled=False, offer_since=None)
        actions.append(BeginTransaction(s.session_tag))

    s, outputs = _apply_outputs(s, now)
    actions = (
        [a for a in outputs if isinstance(a, OpenContactor)]
        + actions
        + [a for a in outputs if not isinstance(a, OpenContactor)]
    )

    status = _derive_status(s, now)
    code = s.error_code if s.holding_blind_status(now) else _error_code(s)
    if status != s.status or code != s.error_code:
        s = replace(s, status=status, error_code=code)
        actions.append(StatusChanged(status, code))
    if not safety.contactor_allowed(s, now):  # defence in depth: never expected (property-tested)
        s = replace(s, contactor_closed=False, withdrawn_at=None)
        actions.insert(0, OpenContactor("safety invariant"))
    if not safety.offer_allowed(s):  # defence in depth: never expected (property-tested)
        s = replace(s, pilot_command=None)
        actions.append(OfferCurrent(None))
    return s, actions


def _apply_cable(s: ConnectorState, event: Cable, now: float) -> ConnectorState:
    """IEC 61851-1 Annex B: the offer follows the cable's coding. An invalid coding is a fault that only
    pulling the cable out clears (PP open): a reading that flips back to a valid code while the same cable
    is in stays refused. Only a socket (cable_required) reads PP; a tethered connector ignores it."""
    if not s.cable_required:
        return s
    if event.state == CableState.ABSENT:
        return replace(s, cable_a=None, faults=s.faults - {FaultKind.CABLE})
    if event.state == CableState.INVALID:
        s = replace(s, cable_a=None)
        return _with_info(_add_fault(s, FaultKind.CABLE, False, now), FaultKind.CABLE,
                          event.detail or "invalid cable coding")
    if event.state == CableState.RATED and event.amps is not None and event.amps > 0:
        return replace(s, cable_a=float(event.amps))
    return replace(s, cable_a=None)  # UNKNOWN: the rating cannot be read


def _add_fault(s: ConnectorState, kind: FaultKind, latched: bool, now: float) -> ConnectorState:
    if kind in NON_BLOCKING_FAULTS:
        return replace(s, notices=s.notices | {kind}, latched=s.latched | ({kind} if latched else set()))
    return replace(
        s,
        faults=s.faults | {kind},
        latched=s.latched | ({kind} if latched else set()),
        last_fault_at=now,
    )


def _end_transaction(s: ConnectorState, reason: str) -> tuple[ConnectorState, list[Action]]:
    s = replace(
        s,
        in_transaction=False,
        session_tag=None,
        finishing=s.pilot.vehicle_connected,
    )
    if s.pending_inoperative:  # a Scheduled ChangeAvailability takes effect with the end of the transaction
        s = replace(s, operative=False, pending_inoperative=False)
    return s, [EndTransaction(reason)]


def _apply_outputs(s: ConnectorState, now: float) -> tuple[ConnectorState, list[Action]]:
    """Bring contactor and pilot to what the inputs ask for; open before anything else."""
    out: list[Action] = []
    desired = _desired_pilot(s, now)

    if s.contactor_closed:
        if not safety.hard_conditions(s):
            s = replace(s, contactor_closed=False, withdrawn_at=None)
            out.append(
                OpenContactor("fault" if s.faults else "pilot left C/D" if s.operative else "unavailable")
            )
        elif not safety.soft_conditions(s):
            if s.withdrawn_at is None:
                s = replace(s, withdrawn_at=now)
            if now >= s.withdrawn_at + safety.FORCE_OPEN_AFTER_S:  # type: ignore[operator]
                s = replace(s, contactor_closed=False, withdrawn_at=None)
                out.append(OpenContactor("EV stayed in C 6 s after the offer was withdrawn"))
        else:
            s = replace(s, withdrawn_at=None)
    elif s.withdrawn_at is not None:
        s = replace(s, withdrawn_at=None)

    if desired != s.pilot_command:
        left_f = s.pilot_command == F and desired != F
        s = replace(
            s,
            pilot_command=desired,
            pilot_stale=s.pilot_stale or desired == F,
            left_f_at=now if left_f else s.left_f_at,
        )
        if s.in_transaction and not s.ev_settled and s.offer_since is None and isinstance(desired, float | int):
            s = replace(s, offer_since=now)  # the transaction's first offer: the car gets its settle time
        out.append(PilotUnavailable() if desired == F else OfferCurrent(desired))  # type: ignore[arg-type]

    if not s.contactor_closed and safety.may_close(s, now):
        s = replace(s, contactor_closed=True)
        out.append(CloseContactor())
    return s, out
