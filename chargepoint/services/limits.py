"""The limit arbiter: every limit claim on a connector goes through here, one decision per connector.

A *claim provider* is registered with a source name and a priority (``register``); for a connector it
returns the claims it makes, each ``(amps, source)``, ``None`` amps pausing the connector. The arbiter
asks every provider in priority order (lower first; equal priorities in registration order), and decides:

* a ``None`` claim pauses (the first one names the reason);
* otherwise the lowest claim wins (the first of equal ones names the source);
* a winner below the connector's minimum current pauses too (IEC 61851-1: below 6 A no charging).

Providers today, in priority order: the connector maximum (configuration, the arbiter's own), smart charging
(ChargePointMaxProfile, grid meter, TxProfile/TxDefaultProfile, minChargingRate, the load balancer and the
station headroom), authorization (an idTag the central system did not accept, StopTransactionOnInvalidId=false),
the cable rating (PP), the temperature derating, and the owner's local limit (``set_local_limit``). A new kind
(a grid operator's signal, PV surplus) registers its own provider: nothing here changes.

Applying the decision (IEC 61851 / EVerest IEC_PWM_MAX_UPDATE_INTERVAL): the pilot duty of a connector in
transaction changes at most once per ``duty_min_interval_s`` (5 s); a change due sooner is *held* and applied
by a timer when the interval is up; withdrawing the offer (pause) is immediate. A connector not in transaction
takes its new limit at once (it does not touch the pilot; it is what a transaction starting now is offered).
That lowered limits take effect before raised ones is the station-headroom claim of smart charging: a raise
waits until the others' cuts were applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from chargepoint.services.station import Claim, Connectors
from chargepoint.smart import DutyRateLimiter

log = logging.getLogger(__name__)

DUTY_MIN_INTERVAL_S = 5.0  # IEC 61851: at most one PWM change per 5 s (HARDWARE-FACTS.md)
TIMER_SLACK_S = 0.001  # fire just after a boundary so a profile's limit already shows the new value
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

CONNECTOR_MAXIMUM = "connector maximum (configuration)"

# Priorities of the built-in providers (lower is asked first; it names the source among equal claims).
PRIORITY_CONNECTOR = 0
PRIORITY_SMART_CHARGING = 10
PRIORITY_AUTHORIZATION = 20
PRIORITY_CABLE = 30
PRIORITY_TEMPERATURE = 40
PRIORITY_LOCAL = 50

ClaimProvider = Callable[[int], Iterable[Claim]]
#: ``(connector_id, limit before, limit after)``, called when a decided limit is applied.
LimitListener = Callable[[int, float | None, float | None], None]


def _mono_dt(t: float) -> datetime:
    return _EPOCH + timedelta(seconds=t)


class _RateLimiter(DutyRateLimiter):
    """DutyRateLimiter that also learns of pilot changes made elsewhere (a transaction's first offer
    comes from the connector state machine)."""

    def note_change(self, now: datetime) -> None:
        self._last = now


@dataclass(frozen=True)
class _Provider:
    source: str
    priority: int
    order: int
    fn: ClaimProvider


def decide_limit(claims: list[Claim], min_current_a: float) -> tuple[float | None, str]:
    """The lowest claim wins; a claim of None pauses; below the connector's minimum it pauses too."""
    paused = [c for c in claims if c[0] is None]
    if paused:
        return None, paused[0][1]
    amps, source = min(claims, key=lambda c: c[0])  # type: ignore[arg-type,return-value]
    if amps is not None and amps < min_current_a:
        return None, f"{source} (below minimum {min_current_a:g} A: paused)"
    return amps, source


class LimitArbiter:
    """Claims → one limit per connector, applied within the pilot's rate limit."""

    def __init__(
        self,
        connectors: Connectors,
        *,
        apply: Callable[[int, float | None], None],
        monotonic: Callable[[], float],
        duty_min_interval_s: float = DUTY_MIN_INTERVAL_S,
    ) -> None:
        """``apply(connector_id, amps)`` hands a decided limit to the connector (the dispatcher's event)."""
        self._connectors = connectors
        self._apply = apply
        self._monotonic = monotonic
        self._providers: list[_Provider] = []
        self._listeners: list[LimitListener] = []
        self._after_all: list[Callable[[], None]] = []
        self._limit: dict[int, float | None] = {}
        self._source: dict[int, str] = {}
        self._claims: dict[int, list[Claim]] = {}
        self._limiters: dict[int, _RateLimiter] = {}
        self._held: dict[int, asyncio.TimerHandle] = {}  # a rate-limited change waiting per connector
        self._soon: asyncio.Handle | None = None
        self._local: dict[int | None, float] = {}  # None: the whole station
        self._stopped = False
        self.duty_min_interval_s = duty_min_interval_s
        self.register("connector maximum", PRIORITY_CONNECTOR, self._connector_claim)
        self.register("local", PRIORITY_LOCAL, self._local_claim)

    # ------------------------------------------------------------------ registration
    def register(self, source: str, priority: int, fn: ClaimProvider) -> None:
        """Add a claim provider: ``fn(connector_id)`` returns that source's claims on the connector."""
        self._providers.append(_Provider(source, priority, len(self._providers), fn))
        self._providers.sort(key=lambda p: (p.priority, p.order))

    def on_limit_changed(self, listener: LimitListener) -> None:
        """Called with (connector, before, after) whenever a new limit is applied to a connector."""
        self._listeners.append(listener)

    def after_recompute(self, fn: Callable[[], None]) -> None:
        """Called after every recomputation of all connectors (e.g. to re-arm a profile timer)."""
        self._after_all.append(fn)

    # ------------------------------------------------------------------ queries
    def limit(self, connector_id: int) -> float | None:
        """The limit applied to the connector (None: nothing offered)."""
        return self._limit.get(connector_id)

    def source(self, connector_id: int) -> str:
        """Who sets the connector's limit, in words (with a held change, also that it is held)."""
        return self._source.get(connector_id, "connector")

    def claims(self, connector_id: int) -> list[Claim]:
        """The claims of the last decision on the connector."""
        return list(self._claims.get(connector_id, []))

    def collect(self, connector_id: int) -> list[Claim]:
        """Every claim on the connector now, in priority order."""
        out: list[Claim] = []
        for p in self._providers:
            out.extend(p.fn(connector_id))
        return out

    def local_limit(self, connector_id: int | None) -> float | None:
        """The owner's limit on a connector (None: on the whole station), if any."""
        return self._local.get(connector_id)

    def station_local_limit(self) -> Claim | None:
        """The owner's station-wide limit as a claim on the station current (smart charging shares it)."""
        amps = self._local.get(None)
        return None if amps is None else (amps, f"local limit {amps:g} A (station)")

    # ------------------------------------------------------------------ commands
    def set_local_limit(self, connector_id: int | None, amps: float | None) -> None:
        """The owner's current limit: on one connector, or (``connector_id`` None) on the station as a whole,
        which the load balancer shares among the connectors in transaction. ``amps`` None removes it."""
        if connector_id is not None and connector_id not in self._connectors:
            raise ValueError(f"no connector {connector_id}")
        if amps is not None and amps < 0:
            raise ValueError("a limit cannot be negative")
        if amps is None:
            self._local.pop(connector_id, None)
        else:
            self._local[connector_id] = float(amps)
        log.info("local limit %s: %s", "station" if connector_id is None else f"connector {connector_id}",
                 "removed" if amps is None else f"{amps:g} A")
        self.recompute_all()

    def set_duty_min_interval(self, seconds: float) -> None:
        """The pilot's minimum time between duty changes (tests shorten the 5 s); forgets past changes."""
        self.duty_min_interval_s = seconds
        self._limiters.clear()

    def note_pilot_change(self, connector_id: int, mono: float) -> None:
        """The pilot's offer changed (also by the state machine): the rate limit counts from now."""
        self._limiter(connector_id).note_change(_mono_dt(mono))

    def recompute(self, connector_id: int) -> None:
        """Decide the connector's limit again and apply it (within the rate limit)."""
        rt = self._connectors.get(connector_id)
        if rt is None:
            return
        cid = rt.id
        claims = self.collect(cid)
        self._claims[cid] = claims
        amps, source = decide_limit(claims, rt.state.min_current_a)
        current = self._limit.get(cid)
        if amps == current and rt.state.limit_a == amps:
            self._unhold(cid)
            self._source[cid] = source
            return
        mono = self._monotonic()
        if rt.state.in_transaction:
            decision = self._limiter(cid).decide(_mono_dt(mono), current, amps)
            if not decision.apply_now:
                wait = (decision.at - _EPOCH).total_seconds() - mono
                self._source[cid] = f"{source} (pilot change held {wait:.1f} s: at most one change per 5 s)"
                self._hold(cid, wait)
                return
        self._unhold(cid)
        self._source[cid] = source
        for listener in self._listeners:
            listener(cid, current, amps)
        self._limit[cid] = amps
        self._apply(cid, amps)

    def withdraw(self, connector_id: int, source: str) -> None:
        """Take the offer away at once, before the providers are asked again (a pause is never held)."""
        self._source[connector_id] = source
        self._limit[connector_id] = None
        self._apply(connector_id, None)

    def recompute_all(self) -> None:
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        for cid in list(self._connectors):
            self.recompute(cid)
        for fn in self._after_all:
            fn()

    def request_recompute(self) -> None:
        """Coalesce triggers (meter readings, pilot changes) into one recomputation on the loop."""
        if self._soon is None and not self._stopped:
            self._soon = asyncio.get_running_loop().call_soon(self._run_soon)

    def stop(self) -> None:
        self._stopped = True
        for h in [self._soon, *self._held.values()]:
            if h is not None:
                h.cancel()
        self._soon = None
        self._held.clear()

    # ------------------------------------------------------------------ internals
    def _connector_claim(self, cid: int) -> list[Claim]:
        return [(self._connectors[cid].max_current_a, CONNECTOR_MAXIMUM)]

    def _local_claim(self, cid: int) -> list[Claim]:
        amps = self._local.get(cid)
        return [] if amps is None else [(amps, f"local limit {amps:g} A")]

    def _limiter(self, cid: int) -> _RateLimiter:
        lim = self._limiters.get(cid)
        if lim is None:
            lim = self._limiters[cid] = _RateLimiter(self.duty_min_interval_s)
        return lim

    def _run_soon(self) -> None:
        self._soon = None
        self.recompute_all()

    def _hold(self, cid: int, wait_s: float) -> None:
        if cid in self._held:
            return  # already waiting for the same instant (the limiter's interval end)
        loop = asyncio.get_running_loop()
        self._held[cid] = loop.call_at(loop.time() + max(wait_s, 0.0) + TIMER_SLACK_S, self._release, cid)

    def _unhold(self, cid: int) -> None:
        h = self._held.pop(cid, None)
        if h is not None:
            h.cancel()

    def _release(self, cid: int) -> None:
        self._held.pop(cid, None)
        if not self._stopped:
            self.recompute(cid)
