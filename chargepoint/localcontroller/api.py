"""The local controller's read-only API for its front ends (site web page, MQTT): what the site looks like.

The counterpart of :mod:`chargepoint.api` for the charge point, much smaller: the site view *shows*, it
does not command (allocations are the site policy's, limits come from the configuration and the central
system), so there is nothing to call but :meth:`SiteApi.snapshot` and :meth:`SiteApi.subscribe`.

Why the change stream looks the way it does: the controller only sets an event after each plan (its
``on_plan`` hook: every change, and at least once a second); one task of this module takes the snapshot at
most every :data:`MIN_INTERVAL_S`, and hands it to the subscribers only when it differs from the last one.
A subscription holds just the newest snapshot: a subscriber that reads slowly skips the ones in between
(older site states are worth nothing once a newer one exists) and always gets the latest; nothing it does
can make the controller wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.25  # at most 4 snapshots a second for all subscribers together
IDLE_REFRESH_S = 5.0  # a snapshot even without a plan notification (a change outside the plan)


class SiteSource(Protocol):
    """What the API needs of the controller (:class:`.server.LocalController` has both)."""

    on_plan: list[Callable[[], None]]

    def snapshot(self) -> dict[str, Any]: ...


def json_safe(snap: dict[str, Any]) -> dict[str, Any]:
    """A deep copy made of JSON types only: subscribers can keep it, serialize it and never alias the
    controller's state."""
    return json.loads(json.dumps(snap, default=str))  # type: ignore[no-any-return]


class SiteSubscription:
    """An async iterator of site snapshots (dicts as :meth:`.server.LocalController.snapshot`), newest only.
    Subscribers share one dict per snapshot: read it, do not change it.

    ``close()`` ends the iteration (also of a reader waiting in ``async for``)."""

    def __init__(self, api: SiteApi) -> None:
        self._api = api
        self._latest: dict[str, Any] | None = None
        self._ready = asyncio.Event()
        self.closed = False
        self.skipped = 0  # snapshots replaced by a newer one before they were read

    def offer(self, snap: dict[str, Any]) -> None:
        """Never blocks: the newest snapshot replaces one not read yet."""
        if self._latest is not None:
            self.skipped += 1
        self._latest = snap
        self._ready.set()

    def __aiter__(self) -> SiteSubscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while True:
            if self.closed:
                raise StopAsyncIteration
            if self._latest is not None:
                snap, self._latest = self._latest, None
                self._ready.clear()
                return snap
            self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        self.closed = True
        self._ready.set()
        self._api._unsubscribe(self)


class SiteApi:
    """Read-only view of a running local controller for the web page and MQTT (never its internals)."""

    def __init__(self, controller: SiteSource, *, min_interval_s: float = MIN_INTERVAL_S,
                 idle_refresh_s: float = IDLE_REFRESH_S) -> None:
        self._controller = controller
        self._subs: set[SiteSubscription] = set()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last: dict[str, Any] | None = None
        self.min_interval_s = min_interval_s
        self.idle_refresh_s = idle_refresh_s
        self.published = 0  # distinct snapshots handed to the subscribers
        controller.on_plan.append(self._changed.set)

    def snapshot(self) -> dict[str, Any]:
        """The site now, JSON-safe: limits/committed per phase, and per charge point its link, upstream,
        connector statuses, allocation, measured current per phase, safe default, queue and why."""
        return json_safe(self._controller.snapshot())

    def subscribe(self, maxsize: int = 1) -> SiteSubscription:
        """A new subscription; its first item is the current snapshot. ``maxsize`` is accepted for the
        charge point front ends' calling convention and not used: a subscription holds one snapshot."""
        sub = SiteSubscription(self)
        self._subs.add(sub)
        sub.offer(self._last if self._last is not None else self.snapshot())
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="site api")
        return sub

    def _unsubscribe(self, sub: SiteSubscription) -> None:
        self._subs.discard(sub)
        if not self._subs and self._task is not None:
            self._task.cancel()
            self._task = None
            self._last = None

    async def close(self) -> None:
        for sub in list(self._subs):
            sub.close()
        with contextlib.suppress(ValueError):
            self._controller.on_plan.remove(self._changed.set)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.idle_refresh_s):
                    await self._changed.wait()
            self._changed.clear()
            started = loop.time()
            try:
                snap = self.snapshot()
            except Exception:  # a bad snapshot must not end the stream
                log.exception("site API: snapshot failed")
                snap = None
            if snap is not None and snap != self._last:
                self._last = snap
                self.published += 1
                for sub in list(self._subs):
                    sub.offer(snap)
            await asyncio.sleep(max(0.0, started + self.min_interval_s - loop.time()))
