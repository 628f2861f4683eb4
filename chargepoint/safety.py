"""The safety invariant, in one place.

DEVELOPERS.md: the contactor closes only when the pilot says the car asks for power
(state C/D), the session is authorized, the connector is available and fault-free,
and the limit is at or above the minimum. Every fault opens it. On a socket the
plugged cable's rating must be known (PP, IEC 61851-1 Annex B) before the pilot
offers anything or the contactor closes, and no offer exceeds it.

IEC 61851-1 sequence 10.2 adds one nuance for *soft* reasons (the session was
stopped or the limit fell below the minimum): the EVSE first withdraws the PWM and
gives the car up to 6 s to go back to state B before it opens under load. During
that grace period the contactor may stay closed; a *hard* reason (the car left
C/D, a fault, unavailability) opens it at once. ``contactor_allowed`` is the
invariant checked after every transition and by the property test.

Dependencies (issue 13): the invariant depends on the state (chargepoint/connector_state.py), not the
other way round; the state machine (chargepoint/connector.py) uses both. tests/test_import_layers.py
keeps it so.
"""

from __future__ import annotations

from chargepoint.connector_state import FAULT_STATE_F_MIN_S, FORCE_OPEN_AFTER_S, ConnectorState

__all__ = [
    "FAULT_STATE_F_MIN_S",
    "FORCE_OPEN_AFTER_S",
    "asks_for_power",
    "cable_known",
    "contactor_allowed",
    "hard_conditions",
    "may_close",
    "offer_allowed",
    "soft_conditions",
]


def asks_for_power(state: ConnectorState) -> bool:
    """State C, or D where the installation provides ventilation (IEC 61851-1), on a fresh reading."""
    if state.pilot_stale:
        return False
    return state.pilot.value == "C" or (state.pilot.value == "D" and state.ventilation)


def cable_known(state: ConnectorState) -> bool:
    """A socket knows the plugged cable's rating from PP (IEC 61851-1 Annex B); a tethered cable always does.

    A hard condition: PP is the last contact to make and the first to break in a Type 2 plug, so losing
    it while charging means the plug is being pulled: open at once."""
    return not state.cable_required or state.cable_a is not None


def hard_conditions(state: ConnectorState) -> bool:
    """Conditions that must hold at every instant the contactor is closed."""
    return asks_for_power(state) and not state.faults and state.operative and cable_known(state)


def offer_allowed(state: ConnectorState) -> bool:
    """A PWM offer needs a known cable rating and never exceeds it."""
    command = state.pilot_command
    if not isinstance(command, int | float) or isinstance(command, bool):
        return True  # F or X1: nothing offered
    return cable_known(state) and (state.cable_a is None or command <= state.cable_a)


def soft_conditions(state: ConnectorState) -> bool:
    """Conditions for closing: a running, authorized transaction with a limit at or above the minimum."""
    return (
        state.session_tag is not None
        and state.in_transaction
        and state.limit_a is not None
        and state.limit_a >= state.min_current_a
    )


def may_close(state: ConnectorState, now: float) -> bool:
    return hard_conditions(state) and soft_conditions(state) and not state.in_fault_hold(now)


def contactor_allowed(state: ConnectorState, now: float) -> bool:
    """The invariant: closed ⇒ hard conditions ∧ (soft conditions ∨ inside the 6 s withdrawal grace)."""
    if not state.contactor_closed:
        return True
    if not hard_conditions(state):
        return False
    if soft_conditions(state) and state.withdrawn_at is None:
        return True
    return state.withdrawn_at is not None and now < state.withdrawn_at + FORCE_OPEN_AFTER_S
