"""Grid-operator dimming (§14a EnWG) as a claim (pure).

While the grid operator's control signal is active (a potential-free contact from the control box at the
smart meter gateway, later a Modbus/EEBUS/HTTP signal), a controllable consumption device may draw no more
than its minimum power: 4.2 kW for a single device, per the Bundesnetzagentur's determination BK6-22-300
of 27 November 2023 (Festlegung zur Integration von steuerbaren Verbrauchseinrichtungen und steuerbaren
Netzanschlüssen nach § 14a EnWG, Anlage 1: "netzorientierte Steuerung", Mindestleistung P_min,14a =
4.2 kW; in force since 1 January 2024). Dimming never switches the device off: the claim is never zero
and never below the IEC 61851-1 minimum of 6 A per phase (a 3-phase car at 6 A draws 4.14 kW, inside the
4.2 kW). With several connectors in a session the power is shared evenly between them.

The state is reported security-neutrally: an ``info`` in StatusNotification and a journal field
(chargepoint/energy/service.py), never a fault.
"""

from __future__ import annotations

import math

from chargepoint.energy import EnergyClaim, amps_for_power

SOURCE = "dimming"
BNETZA_MIN_POWER_W = 4200.0  # BK6-22-300 Anlage 1: P_min,14a for one controllable device
STATUS_INFO = "Dimmed §14a EnWG"  # StatusNotification.info (CiString50)


class Dimming:
    def __init__(self, *, power_w: float = BNETZA_MIN_POWER_W, voltage_v: float = 230.0,
                 min_current_a: float = 6.0) -> None:
        self.power_w = power_w
        self.voltage_v = voltage_v
        self.min_current_a = min_current_a
        self.active = False
        self.since: float | None = None

    def set_active(self, active: bool, now: float) -> bool:
        """The control input changed; True when that is a change (to be logged)."""
        if active == self.active:
            return False
        self.active = active
        self.since = now if active else None
        return True

    def amps(self, phases: int, sharing: int = 1) -> float:
        """Per-phase current for the dimmed power on ``phases`` phases, shared by ``sharing`` connectors,
        rounded down to 0.1 A and never below the minimum."""
        per = amps_for_power(self.power_w / max(sharing, 1), phases, self.voltage_v)
        return max(self.min_current_a, math.floor(per * 10 + 1e-9) / 10)

    def claim(self, phases: int, sharing: int = 1) -> EnergyClaim | None:
        if not self.active:
            return None
        amps = self.amps(phases, sharing)
        share = f" shared by {sharing}" if sharing > 1 else ""
        return EnergyClaim(amps, SOURCE, f"§14a EnWG grid operator signal: {self.power_w / 1000:g} kW{share} → "
                                         f"{amps:g} A on {phases} phase(s)")
