"""The application API: the one door every front end uses.

Front ends — the status socket and ``chargepoint status``, ``simulate``'s stdin commands, the demo's
timeline, the web UI, MQTT/Home Assistant and the local controller's site view — see the station only
through :class:`StationApi`:

* :meth:`StationApi.snapshot` — a typed, immutable picture of the station (what ``status`` shows,
  limit claims and their sources included); :meth:`StationView.as_dict` is the JSON shape of the
  status socket.
* :meth:`StationApi.subscribe` — a stream of :class:`Change` events (status, transaction, fault,
  limit, link, meter …) a front end reads without polling. Each subscriber has its own bounded queue:
  a slow or vanished front end never slows the control loop; when its queue is full the oldest *state*
  change is dropped (a newer snapshot supersedes it) and :attr:`Subscription.dropped` counts it.
* commands — start/stop a session, a local current limit, availability, clearing a latched fault. Each
  takes the caller's :class:`Role` and answers a :class:`CommandResult`, or raises
  :class:`CommandError` with a code and a message a person can read (an unknown connector, a value out
  of range, a role that may not do it). A command never raises anything else for bad input.

Front ends never import a service, the controller, or the hardware. This module holds the contract
(types and the protocol); the implementation over the controller lives beside it.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class Role(enum.IntEnum):
    """Who is asking. Higher may do what lower may."""

    VIEWER = 0  # read the status only
    USER = 1  # start/stop sessions, local current limit, availability
    ADMIN = 2  # also: clear latched faults, configuration, diagnostics


@dataclass(frozen=True)
class LimitClaimView:
    """One claim on a connector's current: ``amps`` None means "no limit from this source"."""

    source: str  # "connector", "fuse", "balancer", "profile:TxProfile#7", "cable", "temperature", "local", …
    amps: float | None
    priority: int = 0  # lower wins ties; informational for front ends
    detail: str = ""


@dataclass(frozen=True)
class FaultView:
    kind: str  # hal.interfaces.FaultKind value, e.g. "rcm", "overtemp", "cable"
    latched: bool  # needs an admin's clear_fault (or a power cycle) once the cause is gone
    action: str  # what a person should do, in one sentence


@dataclass(frozen=True)
class ConnectorView:
    id: int
    status: str  # OCPP ChargePointStatus
    error_code: str  # OCPP ChargePointErrorCode
    pilot: str  # IEC 61851-1 state letter A–F
    available: bool  # not made Inoperative (by the central system or locally)
    cable_a: float | None  # the plugged cable's rating (PP) or a tethered cable's configured one
    offered_a: float | None  # what the pilot offers now (None: no PWM)
    measured_a: float | None
    power_w: float | None
    energy_wh: float | None  # the meter's register
    session_energy_wh: float | None  # since the transaction started
    contactor: str  # "open" | "closed"
    transaction_id: int | None
    id_tag: str | None  # always masked (chargepoint.privacy.mask_id_tag)
    session_started: str | None  # ISO 8601 UTC
    limit_a: float | None  # the limit in force
    limit_source: str  # the claim that decided it
    claims: tuple[LimitClaimView, ...] = ()
    local_limit_a: float | None = None  # the owner's own limit (a claim among the others)
    faults: tuple[FaultView, ...] = ()


@dataclass(frozen=True)
class LinkView:
    state: str  # "connected" | "connecting" | "offline"
    registration: str  # BootNotification status: "Accepted", "Pending", "Rejected", "Unknown"
    connected_since: str | None  # ISO 8601 UTC
    queued: int  # transaction messages waiting in the persistent outbox
    last_error: str | None


@dataclass(frozen=True)
class StationView:
    charge_point_id: str
    firmware_version: str
    link: LinkView
    connectors: tuple[ConnectorView, ...]
    free_vend: bool = False
    dropped: tuple[Mapping[str, Any], ...] = ()  # transaction messages the outbox gave up on

    def connector(self, connector_id: int) -> ConnectorView | None:
        return next((c for c in self.connectors if c.id == connector_id), None)

    def as_dict(self) -> dict[str, Any]:
        """The status socket's JSON shape (documented in chargepoint.service); implemented with the API."""
        raise NotImplementedError


class ChangeKind(enum.StrEnum):
    STATUS = "status"  # OCPP status / error code of a connector
    PILOT = "pilot"
    CONTACTOR = "contactor"
    OFFER = "offer"  # the pilot's offered current
    LIMIT = "limit"  # limit in force or its claims
    METER = "meter"  # a new reading (at most the meter's poll rate)
    TRANSACTION = "transaction"  # started / id assigned / ended (data["event"])
    AUTHORIZATION = "authorization"  # tap, authorized, refused (id tags masked)
    FAULT = "fault"  # raised / cleared
    LINK = "link"  # connected, disconnected, boot answer
    FIRMWARE = "firmware"
    PROFILE = "profile"
    RESERVATION = "reservation"
    STATION = "station"  # anything else worth showing


#: Kinds whose newer event supersedes an older one; a full subscriber queue drops these first.
STATE_KINDS = frozenset({ChangeKind.PILOT, ChangeKind.OFFER, ChangeKind.LIMIT, ChangeKind.METER,
                         ChangeKind.CONTACTOR, ChangeKind.STATUS, ChangeKind.LINK})


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    connector_id: int | None  # None: the station
    data: Mapping[str, Any] = field(default_factory=dict)  # id tags already masked
    at: float = 0.0  # loop time (monotonic seconds)


@runtime_checkable
class Subscription(Protocol):
    dropped: int

    def __aiter__(self) -> AsyncIterator[Change]: ...
    async def get(self) -> Change: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class CommandResult:
    accepted: bool
    message: str = ""  # why not, or what happens next ("the car will be offered 10 A")


class CommandError(Exception):
    """A command that cannot be taken as asked: nothing was switched."""

    UNKNOWN_CONNECTOR = "unknown_connector"
    BAD_VALUE = "bad_value"
    NOT_PERMITTED = "not_permitted"
    NOT_POSSIBLE = "not_possible"  # e.g. no session to stop, free vend disabled

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StationApi(Protocol):
    def snapshot(self) -> StationView: ...

    def subscribe(self, maxsize: int = 256) -> Subscription: ...

    async def start_session(
        self, connector_id: int, id_tag: str | None = None, *, role: Role = Role.USER
    ) -> CommandResult:
        """Start on this connector for ``id_tag`` (authorized as a card tap would be), or — with None —
        as free vend when configured."""
        ...

    async def stop_session(self, connector_id: int, *, role: Role = Role.USER) -> CommandResult: ...

    async def set_local_limit(
        self, connector_id: int | None, amps: float | None, *, role: Role = Role.USER
    ) -> CommandResult:
        """The owner's limit (None lifts it; connector None: every connector). One more claim: it never
        raises what the central system or the installation allow."""
        ...

    async def set_available(self, connector_id: int, available: bool, *, role: Role = Role.USER) -> CommandResult: ...

    async def clear_fault(self, connector_id: int, *, role: Role = Role.ADMIN) -> CommandResult: ...


__all__ = [
    "STATE_KINDS", "Change", "ChangeKind", "CommandError", "CommandResult", "ConnectorView", "FaultView",
    "LimitClaimView", "LinkView", "Role", "StationApi", "StationView", "Subscription",
]
