"""A small in-memory StationApi for the web UI's unit tests (the real one is chargepoint.api's
implementation over the controller; the browser tests use that)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from chargepoint.api import (
    Change,
    ChangeKind,
    CommandError,
    CommandResult,
    ConnectorView,
    FaultView,
    LimitClaimView,
    LinkView,
    Role,
    StationView,
)


class FakeSubscription:
    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[Change | None] = asyncio.Queue(maxsize)
        self.dropped = 0
        self.closed = False

    def put(self, change: Change) -> None:
        if self.closed:
            return
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(change)

    async def get(self) -> Change:
        item = await self.queue.get()
        if item is None:
            raise StopAsyncIteration
        return item

    async def __aiter__(self) -> AsyncIterator[Change]:
        while not self.closed:
            item = await self.queue.get()
            if item is None:
                return
            yield item

    def close(self) -> None:
        self.closed = True
        with_room = not self.queue.full()
        if with_room:
            self.queue.put_nowait(None)


def connector(cid: int, **kw: Any) -> ConnectorView:
    base: dict[str, Any] = dict(
        id=cid, status="Available", error_code="NoError", pilot="A", available=True, cable_a=None,
        offered_a=None, measured_a=0.0, power_w=0.0, energy_wh=1234.0, session_energy_wh=None,
        contactor="open", transaction_id=None, id_tag=None, session_started=None, limit_a=32.0,
        limit_source="connector",
        claims=(LimitClaimView("connector", 32.0), LimitClaimView("fuse", 32.0), LimitClaimView("local", None)),
    )
    base.update(kw)
    return ConnectorView(**base)


class FakeApi:
    def __init__(self, connectors: int = 2, free_vend: bool = False) -> None:
        self.view = StationView(
            charge_point_id="CP-WEB", firmware_version="0.1.0",
            link=LinkView("connected", "Accepted", "2024-05-01T10:00:00Z", 0, None),
            connectors=tuple(connector(i + 1) for i in range(connectors)), free_vend=free_vend)
        self.subs: list[FakeSubscription] = []
        self.calls: list[tuple[str, Any]] = []
        self.min_a, self.max_a = 6.0, 32.0

    def snapshot(self) -> StationView:
        return self.view

    def subscribe(self, maxsize: int = 256) -> FakeSubscription:
        sub = FakeSubscription(maxsize)
        self.subs.append(sub)
        return sub

    def publish(self, kind: ChangeKind, cid: int | None, **data: Any) -> None:
        change = Change(kind, cid, data, asyncio.get_running_loop().time())
        for sub in self.subs:
            sub.put(change)

    def update(self, cid: int, **kw: Any) -> None:
        conns = tuple(dataclasses.replace(c, **kw) if c.id == cid else c for c in self.view.connectors)
        self.view = dataclasses.replace(self.view, connectors=conns)
        self.publish(ChangeKind.STATUS, cid)

    def _check(self, cid: int, role: Role, needed: Role) -> ConnectorView:
        if role < needed:
            raise CommandError(CommandError.NOT_PERMITTED, "not permitted")
        c = self.view.connector(cid)
        if c is None:
            raise CommandError(CommandError.UNKNOWN_CONNECTOR, f"no connector {cid}")
        return c

    async def start_session(self, connector_id: int, id_tag: str | None = None, *,
                            role: Role = Role.USER) -> CommandResult:
        c = self._check(connector_id, role, Role.USER)
        if id_tag is None and not self.view.free_vend:
            raise CommandError(CommandError.NOT_POSSIBLE, "free vend is not enabled")
        if c.transaction_id is not None:
            raise CommandError(CommandError.NOT_POSSIBLE, "a session is running")
        self.calls.append(("start", (connector_id, id_tag, role)))
        self.update(connector_id, transaction_id=7, id_tag="tag:00000000", status="Preparing")
        return CommandResult(True, "waiting for the car")

    async def stop_session(self, connector_id: int, *, role: Role = Role.USER) -> CommandResult:
        c = self._check(connector_id, role, Role.USER)
        if c.transaction_id is None:
            raise CommandError(CommandError.NOT_POSSIBLE, "no session to stop")
        self.calls.append(("stop", (connector_id, role)))
        self.update(connector_id, transaction_id=None, id_tag=None, status="Finishing")
        return CommandResult(True, "stopped")

    async def set_local_limit(self, connector_id: int | None, amps: float | None, *,
                              role: Role = Role.USER) -> CommandResult:
        if connector_id is not None:
            self._check(connector_id, role, Role.USER)
        if amps is not None and not (self.min_a <= amps <= self.max_a or amps == 0):
            raise CommandError(CommandError.BAD_VALUE, f"{amps} A: 0 or {self.min_a:g} to {self.max_a:g} A")
        self.calls.append(("limit", (connector_id, amps, role)))
        if connector_id is not None:
            self.update(connector_id, local_limit_a=amps)
        return CommandResult(True, f"local limit {amps}")

    async def set_available(self, connector_id: int, available: bool, *, role: Role = Role.USER) -> CommandResult:
        self._check(connector_id, role, Role.USER)
        self.calls.append(("available", (connector_id, available, role)))
        self.update(connector_id, available=available, status="Available" if available else "Unavailable")
        return CommandResult(True, "ok")

    async def clear_fault(self, connector_id: int, *, role: Role = Role.ADMIN) -> CommandResult:
        c = self._check(connector_id, role, Role.ADMIN)
        if not any(f.latched for f in c.faults):
            raise CommandError(CommandError.NOT_POSSIBLE, "no latched fault")
        self.calls.append(("clear", (connector_id, role)))
        self.update(connector_id, faults=(), status="Available")
        return CommandResult(True, "cleared")


def faulted(api: FakeApi, cid: int = 1) -> None:
    api.update(cid, status="Faulted", error_code="GroundFailure",
               faults=(FaultView("rcm", True, "Find the earth fault; then clear it here."),))


class FakeHistory:
    """sessions_page.SessionHistory over a list (the real one is chargepoint.sessions)."""

    def __init__(self, records: list[Any]) -> None:
        self.records = records
        self.queries: list[dict[str, Any]] = []

    def query(self, *, connector_id: int | None = None, id_tag: str | None = None, since: Any = None,
              until: Any = None, limit: int = 10_000) -> list[Any]:
        self.queries.append(dict(connector_id=connector_id, id_tag=id_tag, since=since, until=until))
        out = [r for r in self.records
               if (connector_id is None or r.connector_id == connector_id)
               and (id_tag is None or r.id_tag == f"mask-of-{id_tag}")
               and (since is None or r.start[:10] >= since.isoformat())
               and (until is None or r.start[:10] <= until.isoformat())]
        return out[:limit]


def history() -> FakeHistory:
    from chargepoint.frontends.web.sessions_page import SessionRecord

    return FakeHistory([
        SessionRecord(12, 1, "mask-of-04A2B3C4", "2024-05-02T07:00:00Z", "2024-05-02T09:30:00Z", 9000.0, 18250.0,
                      "EVDisconnected"),
        SessionRecord(11, 2, "mask-of-CAFE", "2024-05-01T18:00:00Z", "2024-05-01T19:00:00Z", 3600.0, 7000.0,
                      "Local"),
        SessionRecord(10, 1, "mask-of-04A2B3C4", "2024-04-30T18:00:00Z", None, None, None, None),
    ])
