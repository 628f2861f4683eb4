"""The station's status picture, built in one place from every service's public view.

It is what ``chargepoint status``, simulate's ``status`` and the demo print, and what
:class:`chargepoint.api.ControllerApi` turns into its typed :class:`~chargepoint.api.StationView`. The dict
shape and key order are an interface (the status socket's clients read them): add keys, never reorder.
"""

from __future__ import annotations

from typing import Any

from chargepoint.metering import measured_current
from chargepoint.privacy import mask_id_tag
from chargepoint.services.hardware_limits import HardwareLimits
from chargepoint.services.limits import LimitArbiter
from chargepoint.services.smartcharging import SmartCharging
from chargepoint.services.station import Connectors
from chargepoint.services.station_link import StationLink
from chargepoint.services.transactions import TransactionService


def station_snapshot(
    charge_point_id: str,
    connectors: Connectors,
    *,
    link: StationLink,
    queued: int,
    transactions: TransactionService,
    limits: LimitArbiter,
    hardware_limits: HardwareLimits,
    smart: SmartCharging,
) -> dict[str, Any]:
    """A status snapshot: the link, the queue, every connector (state, hardware, session, limit) and smart
    charging. Id tags appear only masked (chargepoint.privacy)."""
    out = []
    for rt in connectors.values():
        reading = transactions.reading(rt.id)
        tx = transactions.session(rt.id)
        out.append(
            {
                "id": rt.id,
                "status": rt.state.status,
                "error_code": rt.state.error_code,
                "pilot": rt.state.pilot.value,
                "offered_a": rt.hw.pilot.offered_amps,
                "measured_a": measured_current(reading) if reading else None,
                "power_w": reading.power_w if reading else None,
                "energy_wh": round(reading.energy_wh, 1) if reading else None,
                "contactor": "closed" if rt.hw.contactor.is_closed else "open",
                "transaction_id": tx.transaction_id if tx else None,
                "id_tag": mask_id_tag(tx.id_tag) if tx else None,
                "limit_a": limits.limit(rt.id),
                "limit_source": limits.source(rt.id),
                "faults": sorted(k.value for k in rt.state.all_faults),
            }
        )
    for c in out:
        c["limit_claims"] = [{"amps": a, "source": src} for a, src in limits.claims(c["id"])]
        hardware_limits.annotate(c)
    return {
        "charge_point_id": charge_point_id,
        "csms": link.state(),
        "registration": link.registration,
        "queued": queued,
        "dropped": transactions.dropped(),
        "connectors": out,
        "smart_charging": smart.snapshot(),
    }
