"""The charge point's OCPP session: the link plus every profile's handlers.

One handler class per profile (chargepoint/protocol/<profile>.py), one method per message; the ``ocpp`` library
routes by their ``@on`` decorators. Every profile is imported here: a missing module is an install error
(ImportError), never a silently missing profile.
"""

from __future__ import annotations

from chargepoint.protocol.core import CoreHandlers
from chargepoint.protocol.firmware import FirmwareHandlers
from chargepoint.protocol.link import OcppSession
from chargepoint.protocol.localauth import LocalAuthHandlers
from chargepoint.protocol.reservation import ReservationHandlers
from chargepoint.protocol.security import SecurityHandlers
from chargepoint.protocol.smartcharging import SmartChargingHandlers
from chargepoint.protocol.trigger import TriggerHandlers


class ChargePointSession(
    SmartChargingHandlers,
    LocalAuthHandlers,
    ReservationHandlers,
    TriggerHandlers,
    FirmwareHandlers,
    SecurityHandlers,
    CoreHandlers,
    OcppSession,
):
    """All handlers of every profile; each handler calls one service of ``controller``."""
