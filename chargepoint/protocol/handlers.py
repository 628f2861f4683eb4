"""The charge point's OCPP session: the link plus every profile's handlers, one mixin per profile.

Profile handler modules are optional here so that each can land on its own; every
one that exists is mixed in. The ``ocpp`` library routes by their ``@on`` decorators.
"""

from __future__ import annotations

import importlib

from chargepoint.protocol.core import CoreHandlers
from chargepoint.protocol.link import OcppSession

_MIXINS: list[type] = []
for _module, _cls in (
    ("chargepoint.protocol.smartcharging", "SmartChargingHandlers"),
    ("chargepoint.protocol.localauth", "LocalAuthHandlers"),
    ("chargepoint.protocol.reservation", "ReservationHandlers"),
    ("chargepoint.protocol.trigger", "TriggerHandlers"),
    ("chargepoint.protocol.firmware", "FirmwareHandlers"),
    ("chargepoint.protocol.security", "SecurityHandlers"),
):
    try:
        _MIXINS.append(getattr(importlib.import_module(_module), _cls))
    except ModuleNotFoundError as _exc:
        if _exc.name != _module:
            raise


class ChargePointSession(*_MIXINS, CoreHandlers, OcppSession):  # type: ignore[misc]
    """All handlers of every profile present."""
