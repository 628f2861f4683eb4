"""The charge point's OCPP session: the link plus every profile's handlers, one mixin per profile."""

from __future__ import annotations

from chargepoint.protocol.core import CoreHandlers
from chargepoint.protocol.link import OcppSession


class ChargePointSession(CoreHandlers, OcppSession):
    """All handlers; the ``ocpp`` library routes by the ``@on`` decorators of the mixins."""
