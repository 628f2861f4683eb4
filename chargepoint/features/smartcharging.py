"""Smart Charging (OCPP 1.6 §3.13, §5.5, §5.7, §5.16) and the local load balancer, driving the pilot.

A mixin placed before ``ControllerCore`` (see chargepoint/features/__init__.py). The decisions are the pure
models of :mod:`chargepoint.smart`; this module keeps the installed profiles (persisted through the store),
turns them into per-connector limit claims, shares the station limit among the connectors in transaction
and applies the result to the pilot at most once per 5 s.

How a connector's limit is found (every source is one visible claim, see ``limit_claims``; the lowest wins,
a ``None`` claim pauses; ``snapshot()`` shows all of them and which one sets the current):

* the connector's configured maximum;
* the ChargePointMaxProfile in effect (connector 0, amps per phase);
* the TxProfile / TxDefaultProfile composite of this connector (``smart.limit_at``);
* the load balancer: min(ChargePointMaxProfile, station fuse) shared among the connectors in transaction
  (``smart.balance``: equal shares, headroom of EVs drawing less goes to the others, pause below the
  minimum with turn-taking every 15 min);
* "station headroom": the station limit minus what the other connectors are offered right now. An increase
  waits until the others' decreases were applied, so the offers never add up to more than the station limit
  (a decrease itself may wait for the 5 s rate limit, see below);
* minChargingRate of the profile in effect: a limit below it pauses (§7.13: below it the EV charges
  inefficiently; the balancer also never gives such a connector less than it);
* a StartTransaction.conf with a non-Accepted idTagInfo and StopTransactionOnInvalidId=false pauses the
  transaction for its rest (the core sets that once; kept here since recomputation is frequent).

Timing: a timer (``loop.call_at``) fires at the next instant any profile changes a limit (``next_change``)
or a balancer turn ends; there is no polling. Limits are also recomputed on profile changes, transaction
start/stop, status changes, every meter reading and every pilot change.

Rate limit (IEC 61851 / EVerest IEC_PWM_MAX_UPDATE_INTERVAL): the pilot duty changes at most once per 5 s
(``smart.DutyRateLimiter``); a change due sooner is held and applied by a timer when the 5 s are up;
withdrawing the offer (pause) is immediate. Connectors not in transaction have their limit updated at once
(it does not touch the pilot; it is what a transaction starting now is offered).

Decisions where the specification is silent:

* Profiles are persisted as csChargingProfiles JSON. TxProfiles are dropped at start-up: a transaction open
  at a restart is closed as PowerLoss/Reboot by the core, and §3.13.1 deletes its TxProfile.
* A store write failure keeps the profile in memory (in effect until the next restart) and is logged.
* SetChargingProfile answers NotSupported when the chargingRateUnit is not in
  ChargingScheduleAllowedChargingRateUnit (the charge point does not support that unit); other invalid
  profiles are Rejected, with nothing changed.
* The RemoteStartTransaction chargingProfile (§5.11) must be a TxProfile without transactionId (none
  exists yet); it is validated as if the transaction were running and installed when the transaction
  begins; once StartTransaction.conf gives the transactionId, the installed profile carries it. Until then
  its limit already applies to the connector, so the first offer of the transaction respects it.
* The measured current of a connector counts for headroom sharing only once the EV had 5 s (IEC 61851-1
  EV reaction time) to follow the last pilot change; a stale low reading would otherwise take current
  away from an EV that is still ramping up.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from chargepoint import connector as cm
from chargepoint.metering import measured_current
from chargepoint.smart import (
    CHARGE_POINT_MAX,
    TX_PROFILE,
    ChargingProfile,
    CompositePeriod,
    CompositeSchedule,
    ConnectorDemand,
    DutyRateLimiter,
    InstalledProfiles,
    Offer,
    ProfileLimits,
    ProfileRejected,
    balance,
    composite_schedule,
    limit_at,
    next_change,
    profile_from_ocpp,
    profile_to_ocpp,
    validate_profile,
)
from chargepoint.store import StoreError
from hal.interfaces import MeterError

if TYPE_CHECKING:
    from chargepoint.controller import ConnectorRuntime, ControllerCore
    from chargepoint.store import Store
    from hal.interfaces import MeterReading

    _Base = ControllerCore
else:
    _Base = object

log = logging.getLogger(__name__)

DUTY_MIN_INTERVAL_S = 5.0  # IEC 61851: at most one PWM change per 5 s (HARDWARE-FACTS.md)
EV_REACTION_S = 5.0  # IEC 61851-1: an EV follows a duty change within 5 s
# Some cars need about 6 s more than the standard allows (shared/HARDWARE-FACTS.md, EVerest PR#762): until then,
# or until a meter reading shows the car has followed, current a connector gave back is not handed to another.
FOLLOW_MARGIN_S = 6.0
ROTATION_S = 900.0  # balancer turn when not every connector fits at its minimum
TIMER_SLACK_S = 0.001  # fire just after a boundary so `limit_at` already shows the new value
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def plain_numbers(value: Any) -> Any:
    """The ocpp library parses SetChargingProfile/RemoteStartTransaction floats as Decimal (for the
    multipleOf 0.1 schema check); the profile model takes int/float."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: plain_numbers(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_numbers(v) for v in value]
    return value


class StoreProfiles:
    """``smart.ProfileStore`` over the SQLite ``Store`` (profiles as csChargingProfiles JSON)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def save(self, connector_id: int, profile: ChargingProfile) -> None:
        try:
            self._store.save_profile(
                connector_id, profile.charging_profile_id, json.dumps(profile_to_ocpp(profile))
            )
        except StoreError as exc:
            log.error("charging profile %d kept in memory only: %s", profile.charging_profile_id, exc)

    def delete(self, profile_id: int) -> None:
        try:
            self._store.delete_profile(profile_id)
        except StoreError as exc:
            log.error("charging profile %d: delete not persisted: %s", profile_id, exc)

    def load_all(self) -> list[tuple[int, ChargingProfile]]:
        out: list[tuple[int, ChargingProfile]] = []
        try:
            rows = self._store.load_profiles()
        except StoreError as exc:
            log.error("charging profiles not loaded: %s", exc)
            return out
        for connector_id, text in rows:
            try:
                out.append((connector_id, profile_from_ocpp(json.loads(text))))
            except (ValueError, ProfileRejected) as exc:
                log.error("ignoring an unreadable persisted charging profile on connector %d: %s",
                          connector_id, exc)
        return out


class _RateLimiter(DutyRateLimiter):
    """DutyRateLimiter that also learns of pilot changes made elsewhere (a transaction's first offer
    comes from the connector state machine)."""

    def note_change(self, now: datetime) -> None:
        self._last = now


def _mono_dt(t: float) -> datetime:
    return _EPOCH + timedelta(seconds=t)


Claim = tuple[float | None, str]


class SmartChargingFeature(_Base):
    """Charging profiles, composite schedules, load balancing and the pilot rate limit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.profiles = InstalledProfiles()
        self.duty_min_interval_s = DUTY_MIN_INTERVAL_S
        self._sc_limiters: dict[int, _RateLimiter] = {}
        self._sc_held: dict[int, asyncio.TimerHandle] = {}  # rate-limited change waiting per connector
        self._sc_timer: asyncio.TimerHandle | None = None
        self._sc_timer_at: float | None = None
        self._sc_soon: asyncio.Handle | None = None
        self._sc_offer_changed: dict[int, float] = {}  # monotonic time of the last pilot change
        self._sc_gave_back: dict[int, tuple[float, float]] = {}  # connector -> (amps before a cut, when)
        self._sc_read_at: dict[int, float] = {}  # monotonic time of the last meter reading
        self._sc_served_since: dict[int, datetime] = {}
        self._sc_waiting_since: dict[int, datetime] = {}
        self._sc_pending_remote: dict[int, ChargingProfile] = {}
        self._sc_blocked_tx: dict[int, int] = {}  # connector -> local tx id paused for an invalid idTag
        self._sc_claims: dict[int, list[Claim]] = {}
        self._sc_reads: set[asyncio.Task[Any]] = set()
        self._grid_reading: Any = None
        self._grid_read_at = -math.inf

    # ================================================================== start / persistence
    def load_persisted_state(self) -> None:
        super().load_persisted_state()
        assert self.store is not None
        self.profiles = InstalledProfiles(StoreProfiles(self.store))
        stale = [pid for _cid, p in self.profiles.all() if p.purpose == TX_PROFILE
                 for pid in [p.charging_profile_id]]
        for pid in stale:
            self.profiles.clear(id=pid)
        if stale:
            log.info("dropped TxProfile(s) %s of transactions that ended with the restart", stale)
        log.info("%d charging profile(s) installed", len(self.profiles))

    async def start(self) -> None:
        await super().start()
        grid_meter = (self.build_context.shared.get("grid_meter") if self.build_context else None)
        if self.config.station.grid is not None and grid_meter is not None:
            # Supervised like the other long-lived tasks: a dead loop would leave the stale reading's
            # fallback (minimum current) for good, and dynamic load management silently off.
            self.supervise("grid-meter", functools.partial(self._grid_loop, grid_meter))
        self._recompute_all_limits()

    async def _grid_loop(self, meter: Any) -> None:
        """Dynamic load management: read the house connection and share only what the house leaves."""
        grid = self.config.station.grid
        assert grid is not None
        while True:
            try:
                self._grid_reading = await asyncio.wait_for(meter.read(), 5.0)
                self._grid_read_at = self.monotonic()
            except (MeterError, TimeoutError, OSError) as exc:
                if self._grid_reading is not None:
                    log.error("grid meter does not answer (%s): charging at the minimum until it does", exc)
                self._grid_reading = None
            self._sc_request_recompute()
            await asyncio.sleep(grid.poll_s)

    def _grid_available_a(self) -> Claim | None:
        """The house's main fuse minus what the house itself uses (grid current minus this charger's own)."""
        grid = self.config.station.grid
        if grid is None:
            return None
        reading = self._grid_reading
        if reading is None or self.monotonic() - self._grid_read_at > max(10.0, 5 * grid.poll_s):
            # no fresh reading: be safe, each charging connector gets at most its minimum
            charging = sum(1 for r in self.connectors.values() if r.state.in_transaction) or 1
            floor = max(r.state.min_current_a for r in self.connectors.values())
            return (floor * charging, "grid meter silent: minimum current only")
        ours = [0.0, 0.0, 0.0]
        for r in self.connectors.values():
            if r.reading is not None:
                for i, amps in enumerate(r.reading.current_a):
                    ours[i] += amps or 0.0
        house = max((g or 0.0) - o for g, o in zip(reading.current_a, ours, strict=True))
        available = max(0.0, grid.limit_a - grid.margin_a - house)
        return (round(available, 1), f"grid meter: the house uses {house:.1f} A of {grid.limit_a:g} A")

    async def stop(self) -> None:
        self.supervisor.cancel("grid-meter")
        self._sc_cancel_timers()
        for task in list(self._sc_reads):
            task.cancel()
        await super().stop()

    def _sc_cancel_timers(self) -> None:
        for h in [self._sc_timer, self._sc_soon, *self._sc_held.values()]:
            if h is not None:
                h.cancel()
        self._sc_timer = self._sc_soon = None
        self._sc_timer_at = None
        self._sc_held.clear()

    def profile_limits(self) -> ProfileLimits:
        """The four §9.4 configuration keys as the validator needs them."""
        assert self.keys is not None
        return ProfileLimits.from_config(
            charge_profile_max_stack_level=int(self.keys["ChargeProfileMaxStackLevel"]),
            charging_schedule_allowed_charging_rate_unit=",".join(
                self.keys.csl("ChargingScheduleAllowedChargingRateUnit")
            ),
            charging_schedule_max_periods=int(self.keys["ChargingScheduleMaxPeriods"]),
            max_charging_profiles_installed=int(self.keys["MaxChargingProfilesInstalled"]),
        )

    # ================================================================== OCPP operations
    def set_charging_profile(self, connector_id: int, raw_profile: dict[str, Any]) -> str:
        """SetChargingProfile (§5.16): Accepted, Rejected or NotSupported; nothing changes unless Accepted."""
        limits = self.profile_limits()
        try:
            profile = profile_from_ocpp(plain_numbers(raw_profile), received_at=self.now())
        except ProfileRejected as exc:
            log.warning("SetChargingProfile rejected: %s", exc.reason)
            return "Rejected"
        if profile.schedule.charging_rate_unit not in limits.allowed_units:
            log.warning("SetChargingProfile: unit %s not supported (ChargingScheduleAllowedChargingRateUnit)",
                        profile.schedule.charging_rate_unit)
            return "NotSupported"
        rt = self.connectors.get(connector_id)
        active: int | None = None
        if rt is not None and rt.state.in_transaction:
            active = rt.tx.transaction_id if rt.tx is not None and rt.tx.transaction_id is not None else -1
        try:
            validate_profile(profile, connector_id, limits=limits, active_transaction_id=active,
                             number_of_connectors=len(self.connectors))
            replaced = self.profiles.install(connector_id, profile, limits)
        except ProfileRejected as exc:
            log.warning("SetChargingProfile rejected: %s", exc.reason)
            return "Rejected"
        log.info("charging profile %s installed on connector %d%s", profile.source, connector_id,
                 f" (replaces {replaced})" if replaced else "")
        self._emit_timeline("profile", action="set", connector=connector_id, profile=profile.source)
        self._recompute_all_limits()
        return "Accepted"

    def clear_charging_profile(
        self, id: int | None = None, connector_id: int | None = None,  # noqa: A002 - OCPP field name
        purpose: str | None = None, stack_level: int | None = None,
    ) -> str:
        """ClearChargingProfile (§5.5): Accepted if anything matched, else Unknown."""
        found = self.profiles.clear(id=id, connector_id=connector_id, purpose=purpose, stack_level=stack_level)
        if found:
            self._emit_timeline("profile", action="clear", connector=connector_id, id=id)
            self._recompute_all_limits()
        return "Accepted" if found else "Unknown"

    def composite_schedule(self, connector_id: int, duration_s: int, unit: str | None) -> CompositeSchedule | None:
        """GetCompositeSchedule (§5.7); None = Rejected (unknown connector or unit not allowed).

        Connector 0 is the charge point total (ChargePointMaxProfile capping the connector-0
        TxDefaultProfiles); where no profile is in effect the station fuse (connector 0) or the connector
        maximum fills in. The load balancer is not part of it: it is a profile schedule, the balancer's
        share depends on which cars come and go."""
        unit = unit or "A"
        if unit not in self.profile_limits().allowed_units:
            return None
        now = self.now()
        v = self.config.station.nominal_voltage_v
        if connector_id == 0:
            # the station's own cap: ChargePointMaxProfiles and the fuse (a connector-0 TxDefaultProfile
            # applies to each connector and enters through the connectors' composites below)
            cp_max = [(cid, p) for cid, p in self.profiles.all() if p.purpose == CHARGE_POINT_MAX]
            station = composite_schedule(cp_max, 0, now, duration_s, unit, tx_start=None, tx_id=None,
                                         voltage=v, phases=self._station_phases(),
                                         default_limit_a=self.config.station.max_current_a)
            per_connector = [self.composite_schedule(cid, duration_s, unit) for cid in self.connectors]
            return _station_total(station, [c for c in per_connector if c is not None])
        rt = self.connectors.get(connector_id)
        if rt is None:
            return None
        tx_start, tx_id = self._tx_anchor(rt, now)
        return composite_schedule(self.profiles, connector_id, now, duration_s, unit, tx_start=tx_start,
                                  tx_id=tx_id, voltage=v, phases=rt.phases, default_limit_a=rt.max_current_a)

    def accept_remote_start_profile(self, connector_id: int, profile: dict[str, Any]) -> bool:
        """RemoteStartTransaction chargingProfile (§5.11): a valid TxProfile without transactionId."""
        if not self._remote_profile_ok(connector_id, profile):
            return False
        return super().accept_remote_start_profile(connector_id, profile)

    async def remote_start(
        self, id_tag: str, connector_id: int | None, profile: dict[str, Any] | None
    ) -> None:
        """The ``@after`` hook of RemoteStartTransaction runs even when the answer was Rejected: a start
        whose profile was refused must not go ahead."""
        if profile is not None:
            rt = self.connectors.get(connector_id) if connector_id is not None else self.connector_for_tag(id_tag)
            if rt is None or not self._remote_profile_ok(rt.id, profile, quiet=True):
                return
        await super().remote_start(id_tag, connector_id, profile)

    def _remote_profile_ok(self, connector_id: int, profile: dict[str, Any], quiet: bool = False) -> bool:
        try:
            p = profile_from_ocpp(plain_numbers(profile), received_at=self.now())
            if p.purpose != TX_PROFILE:
                raise ProfileRejected(f"purpose {p.purpose}: a remote start profile must be a TxProfile")
            if p.transaction_id is not None:
                raise ProfileRejected("transactionId set, but the transaction does not exist yet")
            validate_profile(p, connector_id, limits=self.profile_limits(), active_transaction_id=-1,
                             number_of_connectors=len(self.connectors))
        except ProfileRejected as exc:
            if not quiet:
                log.warning("RemoteStartTransaction chargingProfile rejected: %s", exc.reason)
            return False
        return True

    def remote_start_profile(self, connector_id: int, profile: dict[str, Any] | None) -> None:
        super().remote_start_profile(connector_id, profile)
        if profile is None:
            self._sc_pending_remote.pop(connector_id, None)
            return
        self._sc_pending_remote[connector_id] = profile_from_ocpp(plain_numbers(profile), received_at=self.now())
        self._recompute_all_limits()  # before the Authorize event: the first offer respects the profile

    # ================================================================== hooks into the core
    async def _begin_transaction(self, rt: ConnectorRuntime, id_tag: str) -> None:
        pending = self._sc_pending_remote.pop(rt.id, None)
        if pending is not None:
            try:
                self.profiles.install(rt.id, pending, self.profile_limits())
                self._emit_timeline("profile", action="set", connector=rt.id, profile=pending.source)
            except ProfileRejected as exc:
                log.warning("RemoteStartTransaction profile not installed: %s", exc.reason)
        self._sc_waiting_since.setdefault(rt.id, self.now())
        await super()._begin_transaction(rt, id_tag)

    async def _end_transaction(self, rt: ConnectorRuntime, reason: str) -> None:
        await super()._end_transaction(rt, reason)
        removed = self.profiles.remove_tx_profiles(rt.id)
        if removed:
            log.info("connector %d: TxProfile(s) %s removed with the transaction", rt.id, removed)
        self._sc_blocked_tx.pop(rt.id, None)
        self._sc_served_since.pop(rt.id, None)
        self._sc_waiting_since.pop(rt.id, None)
        self._recompute_all_limits()

    async def on_start_transaction_answer(self, rt: ConnectorRuntime, id_tag: str, info: dict[str, Any]) -> None:
        await super().on_start_transaction_answer(rt, id_tag, info)
        if rt.tx is None:
            return
        if rt.limit_source == "idTag not accepted":
            self._sc_blocked_tx[rt.id] = rt.tx.local_id
        tx_id = rt.tx.transaction_id
        if tx_id is not None:
            for cid, p in self.profiles.all():
                if cid == rt.id and p.purpose == TX_PROFILE and p.transaction_id is None:
                    self.profiles.install(cid, replace(p, transaction_id=tx_id), self.profile_limits())
        self._recompute_all_limits()

    def on_status_changed(self, rt: ConnectorRuntime, status: str, error_code: str) -> None:
        super().on_status_changed(rt, status, error_code)
        if status in ("Available", "Faulted", "Unavailable") and not rt.state.in_transaction:
            self._sc_pending_remote.pop(rt.id, None)  # the remote-started session ended without charging
        self._sc_request_recompute()

    async def _read_meter(self, rt: ConnectorRuntime, timeout: float = 3.0) -> MeterReading | None:
        before = rt.reading
        reading = await super()._read_meter(rt, timeout)
        if reading is not None and reading is not before:
            self._sc_read_at[rt.id] = self.monotonic()
            self._sc_request_recompute()
        return reading

    async def _execute(self, rt: ConnectorRuntime, action: cm.Action, now: float) -> None:
        before = rt.hw.pilot.offered_amps
        await super()._execute(rt, action, now)
        if isinstance(action, cm.OfferCurrent | cm.PilotUnavailable):
            after = action.amps if isinstance(action, cm.OfferCurrent) else None
            if before is not None and (after is None or after < before):
                self._sc_gave_back[rt.id] = (before, now)
            self._sc_limiter(rt.id).note_change(_mono_dt(now))
            self._sc_offer_changed[rt.id] = now
            self._sc_request_recompute()  # others may now use what this connector gave back
            # The balancer trusts a measurement taken once the EV had time to follow (see module doc);
            # the core's idle meter poll may be 10 s away, so read then.
            asyncio.get_running_loop().call_later(EV_REACTION_S + 0.2, self._sc_read_later, rt)

    def _sc_read_later(self, rt: ConnectorRuntime) -> None:
        if self._stopping:
            return
        task = asyncio.create_task(self._read_meter(rt), name=f"smart-read-{rt.id}")
        self._sc_reads.add(task)  # a reference until done (not in the core's task list: it would grow)
        task.add_done_callback(self._sc_reads.discard)

    # ================================================================== limits
    def _sc_limiter(self, cid: int) -> _RateLimiter:
        lim = self._sc_limiters.get(cid)
        if lim is None:
            lim = self._sc_limiters[cid] = _RateLimiter(self.duty_min_interval_s)
        return lim

    def _station_phases(self) -> int:
        return max((rt.phases for rt in self.connectors.values()), default=3)

    def _tx_anchor(self, rt: ConnectorRuntime, now: datetime) -> tuple[datetime | None, int | None]:
        """(tx_start, tx_id) for the composite. A transaction the state machine began but whose
        bookkeeping has not run yet counts as starting now."""
        if rt.tx is not None:
            return rt.tx.start, rt.tx.transaction_id
        if rt.state.in_transaction:
            return now, None
        return None, None

    def _cpmax(self, now: datetime) -> tuple[float | None, str]:
        entries = [(c, p) for c, p in self.profiles.all() if p.purpose == CHARGE_POINT_MAX]
        if not entries:
            return None, "none"
        lim = limit_at(entries, 0, now, tx_start=None, tx_id=None,
                       voltage=self.config.station.nominal_voltage_v, phases=self._station_phases())
        return lim.amps, lim.source

    def _tx_entries(self, rt: ConnectorRuntime) -> list[tuple[int, ChargingProfile]]:
        entries = [(c, p) for c, p in self.profiles.all() if p.purpose != CHARGE_POINT_MAX]
        pending = self._sc_pending_remote.get(rt.id)
        if pending is not None and rt.tx is None:
            entries.append((rt.id, pending))
        return entries

    def _tx_limit(self, rt: ConnectorRuntime, now: datetime) -> tuple[float | None, str, float | None]:
        """(amps, source, minChargingRate in A) of the TxProfile/TxDefaultProfile composite."""
        entries = self._tx_entries(rt)
        if not any(c in (0, rt.id) for c, _p in entries):
            return None, "none", None
        tx_start, tx_id = self._tx_anchor(rt, now)
        if tx_start is None and rt.id in self._sc_pending_remote:
            tx_start = now  # what the remote-started transaction will be offered
        v = self.config.station.nominal_voltage_v
        lim = limit_at(entries, rt.id, now, tx_start=tx_start, tx_id=tx_id, voltage=v, phases=rt.phases)
        mcr = None
        if lim.amps is not None:
            sched = composite_schedule(entries, rt.id, now, 0, "A", tx_start=tx_start, tx_id=tx_id,
                                       voltage=v, phases=rt.phases, default_limit_a=rt.max_current_a)
            mcr = sched.min_charging_rate
        return lim.amps, lim.source, mcr

    def _balance(self, focus: ConnectorRuntime, now: datetime, station_a: float,
                 tx_limits: dict[int, tuple[float | None, str, float | None]]) -> dict[int, Offer]:
        """The balancer's offers for the connectors in transaction plus ``focus`` (what it would get if
        its transaction started now)."""
        demands = []
        for r in self.connectors.values():
            if not (r.state.in_transaction or r is focus):
                continue
            amps, _src, mcr = tx_limits[r.id]
            measured = None
            changed = self._sc_offer_changed.get(r.id, -math.inf)
            if (r.reading is not None and r.state.in_transaction
                    and self._sc_read_at.get(r.id, -math.inf) >= changed + EV_REACTION_S):
                measured = measured_current(r.reading)
            offered = r.limit_a if r.state.in_transaction else None
            demands.append(ConnectorDemand(
                connector_id=r.id, wants_power=True, composite_limit_a=amps,
                min_current_a=max(r.state.min_current_a, mcr or 0.0), max_current_a=r.max_current_a,
                measured_a=measured, offered_a=offered,
                waiting_since=self._sc_waiting_since.get(r.id, now) if offered is None else None,
                served_since=self._sc_served_since.get(r.id) if offered is not None else None,
            ))
        return balance(station_a, demands, now, rotation_s=ROTATION_S)

    def limit_claims(self, rt: ConnectorRuntime) -> list[Claim]:
        """Every source that limits this connector, as (amps, source); None = paused by that source."""
        now = self.now()
        claims: list[Claim] = [(rt.max_current_a, "connector maximum (configuration)")]
        cp_a, cp_src = self._cpmax(now)
        fuse = self.config.station.max_current_a
        if cp_a is not None:
            claims.append((cp_a, cp_src))
        station_a = fuse if cp_a is None else min(fuse, cp_a)
        station_src = "station fuse limit" if cp_a is None or fuse <= cp_a else cp_src
        grid = self._grid_available_a()
        if grid is not None:
            claims.append(grid)
            if grid[0] is not None and grid[0] < station_a:
                station_a, station_src = grid[0], "grid meter"
        tx_limits = {r.id: self._tx_limit(r, now) for r in self.connectors.values()
                     if r.state.in_transaction or r is rt}
        amps, src, mcr = tx_limits[rt.id]
        if amps is not None:
            claims.append((amps, src + (" (RemoteStartTransaction)" if rt.id in self._sc_pending_remote
                                        and rt.tx is None else "")))
            if mcr is not None and amps < mcr:
                claims.append((None, f"{src}: limit {amps:g} A below its minChargingRate {mcr:g} A"))
        offer = self._balance(rt, now, station_a, tx_limits).get(rt.id)
        if offer is not None:
            claims.append((offer.amps, f"load balancer, {station_src} {station_a:g} A: {offer.reason}"))
        others = sum(self._sc_committed_a(r) for r in self.connectors.values()
                     if r is not rt and r.state.in_transaction)
        if others > 0:
            claims.append((max(station_a - others, 0.0),
                           f"station headroom ({station_src} {station_a:g} A minus {others:g} A offered "
                           "to other connectors)"))
        blocked = self._sc_blocked_tx.get(rt.id)
        if blocked is not None and rt.tx is not None and rt.tx.local_id == blocked:
            claims.append((None, "idTag not accepted"))
        return claims

    def _sc_committed_a(self, r: ConnectorRuntime) -> float:
        """What connector ``r`` may still be drawing: its offer, or, while its car may still be following a
        cut (EV_REACTION_S + FOLLOW_MARGIN_S, unless a later meter reading shows it has followed), the
        offer before the cut. The headroom claim hands out only current that is really free."""
        offer = r.limit_a or 0.0
        gave_back = self._sc_gave_back.get(r.id)
        if gave_back is None:
            return offer
        before, since = gave_back
        mono = self.monotonic()
        until = since + EV_REACTION_S + FOLLOW_MARGIN_S
        followed = (
            self._sc_read_at.get(r.id, -math.inf) > since
            and r.reading is not None
            and (measured_current(r.reading) or 0.0) <= offer + 0.5
        )
        if mono >= until or followed:
            del self._sc_gave_back[r.id]
            return offer
        asyncio.get_running_loop().call_later(until - mono + 0.01, self._sc_request_recompute)
        return max(offer, before)

    def _recompute_limit(self, rt: ConnectorRuntime) -> None:
        """The core's decision (lowest claim, None pauses, below the minimum pauses) plus the 5 s pilot
        rate limit for connectors whose pilot it would change."""
        claims = self.limit_claims(rt)
        self._sc_claims[rt.id] = claims
        amps, source = self.decide_limit(rt, claims)
        if amps == rt.limit_a and rt.state.limit_a == amps:
            self._sc_unhold(rt.id)
            rt.limit_source = source
            return
        mono = self.monotonic()
        if rt.state.in_transaction:
            decision = self._sc_limiter(rt.id).decide(_mono_dt(mono), rt.limit_a, amps)
            if not decision.apply_now:
                wait = (decision.at - _EPOCH).total_seconds() - mono
                rt.limit_source = f"{source} (pilot change held {wait:.1f} s: at most one change per 5 s)"
                self._sc_hold(rt, wait)
                return
        self._sc_unhold(rt.id)
        rt.limit_source = source
        now = self.now()
        if amps is None and rt.limit_a is not None:
            self._sc_waiting_since[rt.id] = now
        elif amps is not None and rt.limit_a is None:
            self._sc_served_since[rt.id] = now
        rt.limit_a = amps
        self.apply_limit(rt, amps)

    def _recompute_all_limits(self) -> None:
        if self._sc_soon is not None:
            self._sc_soon.cancel()
            self._sc_soon = None
        for rt in self.connectors.values():
            self._recompute_limit(rt)
        self._sc_reschedule()

    def _sc_request_recompute(self) -> None:
        """Coalesce triggers (meter readings, pilot changes) into one recomputation on the loop."""
        if self._sc_soon is None and not self._stopping:
            self._sc_soon = asyncio.get_running_loop().call_soon(self._sc_run_soon)

    def _sc_run_soon(self) -> None:
        self._sc_soon = None
        self._recompute_all_limits()

    def _sc_hold(self, rt: ConnectorRuntime, wait_s: float) -> None:
        if rt.id in self._sc_held:
            return  # already waiting for the same instant (the limiter's interval end)
        loop = asyncio.get_running_loop()
        self._sc_held[rt.id] = loop.call_at(loop.time() + max(wait_s, 0.0) + TIMER_SLACK_S,
                                            self._sc_release, rt)

    def _sc_unhold(self, cid: int) -> None:
        h = self._sc_held.pop(cid, None)
        if h is not None:
            h.cancel()

    def _sc_release(self, rt: ConnectorRuntime) -> None:
        self._sc_held.pop(rt.id, None)
        if not self._stopping:
            self._recompute_limit(rt)

    def _sc_next_event(self) -> datetime | None:
        """The next instant a profile changes a limit or a balancer turn ends."""
        now = self.now()
        v = self.config.station.nominal_voltage_v
        candidates: list[datetime] = []
        cpmax = [(c, p) for c, p in self.profiles.all() if p.purpose == CHARGE_POINT_MAX]
        if cpmax:
            nc = next_change(cpmax, 0, now, tx_start=None, tx_id=None, voltage=v, phases=self._station_phases())
            if nc is not None:
                candidates.append(nc)
        for rt in self.connectors.values():
            entries = self._tx_entries(rt)
            if any(c in (0, rt.id) for c, _p in entries):
                tx_start, tx_id = self._tx_anchor(rt, now)
                nc = next_change(entries, rt.id, now, tx_start=tx_start, tx_id=tx_id, voltage=v, phases=rt.phases)
                if nc is not None:
                    candidates.append(nc)
        waiting = any(r.state.in_transaction and r.limit_a is None for r in self.connectors.values())
        if waiting:
            for cid, since in self._sc_served_since.items():
                r = self.connectors.get(cid)
                if r is not None and r.state.in_transaction and r.limit_a is not None:
                    candidates.append(max(since + timedelta(seconds=ROTATION_S), now))
        return min(candidates) if candidates else None

    def _sc_reschedule(self) -> None:
        if self._stopping:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        at = self._sc_next_event()
        if at is None:
            if self._sc_timer is not None:
                self._sc_timer.cancel()
            self._sc_timer = None
            self._sc_timer_at = None
            return
        when = loop.time() + max((at - self.now()).total_seconds(), 0.0) + TIMER_SLACK_S
        if self._sc_timer is not None and self._sc_timer_at is not None and abs(self._sc_timer_at - when) < 1e-3:
            return
        if self._sc_timer is not None:
            self._sc_timer.cancel()
        self._sc_timer_at = when
        self._sc_timer = loop.call_at(when, self._sc_on_timer)

    def _sc_on_timer(self) -> None:
        self._sc_timer = None
        self._sc_timer_at = None
        if not self._stopping:
            self._recompute_all_limits()

    # ================================================================== snapshot
    def snapshot(self) -> dict[str, Any]:
        snap = super().snapshot()
        for c in snap["connectors"]:
            claims = self._sc_claims.get(c["id"], [])
            c["limit_claims"] = [{"amps": a, "source": s} for a, s in claims]
        cp_a, cp_src = self._cpmax(self.now())
        snap["smart_charging"] = {
            "profiles": [{"connector_id": cid, **profile_to_ocpp(p)} for cid, p in self.profiles.all()],
            "station_fuse_a": self.config.station.max_current_a,
            "charge_point_max_a": cp_a,
            "charge_point_max_source": cp_src,
        }
        return snap


def _station_total(station: CompositeSchedule, connectors: list[CompositeSchedule]) -> CompositeSchedule:
    """GetCompositeSchedule for connector 0 (§5.7: "the total expected consumption for the grid connection"):
    at every instant the sum of the connectors' composites, never more than the station's own schedule
    (ChargePointMaxProfile, connector-0 profiles, fuse)."""

    def at(schedule: CompositeSchedule, t: int) -> float:
        value = schedule.periods[0].limit if schedule.periods else 0.0
        for p in schedule.periods:
            if p.start_period <= t:
                value = p.limit
        return value

    points = sorted({p.start_period for sch in [station, *connectors] for p in sch.periods} | {0})
    # the station's schedule was converted with the station's phases: every total period says so (§7.9)
    phases = station.periods[0].number_phases if station.periods else None
    periods: list[CompositePeriod] = []
    for t in points:
        total = sum(at(c, t) for c in connectors) if connectors else at(station, t)
        limit = round(min(at(station, t), total), 1)
        if not periods or periods[-1].limit != limit:
            periods.append(CompositePeriod(t, limit, phases))
    return replace(station, periods=tuple(periods))
