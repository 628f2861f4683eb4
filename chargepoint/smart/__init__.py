"""Smart charging, pure logic: OCPP 1.6 charging profiles, composite schedules, load balancing and
the control-pilot duty cycle. No I/O and no clock: every function takes `now`."""

from chargepoint.smart.balancer import ConnectorDemand, Offer, balance, balance_phases
from chargepoint.smart.composite import (
    CompositePeriod,
    CompositeSchedule,
    Limit,
    composite_schedule,
    limit_at,
    next_change,
)
from chargepoint.smart.pilot_duty import DutyDecision, DutyRateLimiter, amps_to_duty, duty_to_amps
from chargepoint.smart.profiles import (
    CHARGE_POINT_MAX,
    TX_DEFAULT,
    TX_PROFILE,
    ChargingProfile,
    ChargingSchedule,
    ChargingSchedulePeriod,
    InstalledProfiles,
    MemoryProfileStore,
    ProfileLimits,
    ProfileRejected,
    ProfileStore,
    profile_from_ocpp,
    profile_to_ocpp,
    validate_profile,
)

__all__ = [
    "CHARGE_POINT_MAX",
    "TX_DEFAULT",
    "TX_PROFILE",
    "ChargingProfile",
    "ChargingSchedule",
    "ChargingSchedulePeriod",
    "CompositePeriod",
    "CompositeSchedule",
    "ConnectorDemand",
    "balance_phases",
    "DutyDecision",
    "DutyRateLimiter",
    "InstalledProfiles",
    "Limit",
    "MemoryProfileStore",
    "Offer",
    "ProfileLimits",
    "ProfileRejected",
    "ProfileStore",
    "amps_to_duty",
    "balance",
    "composite_schedule",
    "duty_to_amps",
    "limit_at",
    "next_change",
    "profile_from_ocpp",
    "profile_to_ocpp",
    "validate_profile",
]
