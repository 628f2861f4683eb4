"""Smart Charging (OCPP 1.6 §3.13, §5.5, §5.7, §5.16) and the local load balancer, driving the pilot.

The smart charging service. The decisions are the pure models of :mod:`chargepoint.smart`; this service keeps
the installed profiles (persisted through the store), turns them into per-connector limit claims for the limit
arbiter (:mod:`chargepoint.services.limits`, which also applies the 5 s pilot rate limit) and shares the station
limit among the connectors in transaction.

How a connector's limit is found (every source is one visible claim, see ``claims``; the lowest wins,
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
* the owner's station-wide local limit (``LimitArbiter.set_local_limit(None, amps)``) caps the station
  current the balancer shares, like the fuse.

(The idTag that was not accepted, the cable and the temperature are other services' claims on the arbiter.)

Timing: a timer (``loop.call_at``) fires at the next instant any profile changes a limit (``next_change``)
or a balancer turn ends; there is no polling. Limits are also recomputed on profile changes, transaction
start/stop, status changes, every meter reading and every pilot change.

Rate limit: applied by the arbiter (chargepoint/services/limits.py): the pilot duty changes at most once per 5 s;
withdrawing the offer (pause) is immediate.

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
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from chargepoint.keys import ConfigurationKeys
from chargepoint.metering import measured_current
from chargepoint.services.limits import LimitArbiter
from chargepoint.services.station import Claim, ConnectorRuntime, Connectors, Emit
from chargepoint.smart import (
    CHARGE_POINT_MAX,
    TX_PROFILE,
    ChargingProfile,
    CompositePeriod,
    CompositeSchedule,
    ConnectorDemand,
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
    from chargepoint.config import StationConfig
    from chargepoint.store import Store
    from chargepoint.supervisor import TaskFactory

log = logging.getLogger(__name__)

EV_REACTION_S = 5.0  # IEC 61851-1: an EV follows a duty change within 5 s
# Some cars need about 6 s more than the standard allows (shared/HARDWARE-FACTS.md, EVerest PR#762): until then,
# or until a meter reading shows the car has followed, current a connector gave back is not handed to another.
FOLLOW_MARGIN_S = 6.0
ROTATION_S = 900.0  # balancer turn when not every connector fits at its minimum
TIMER_SLACK_S = 0.001  # fire just after a boundary so `limit_at` already shows the new value


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


class SmartCharging:
    """Charging profiles, composite schedules, load balancing: claims on the limit arbiter."""

    def __init__(
        self,
        connectors: Connectors,
        *,
        station: StationConfig,
        keys: ConfigurationKeys,
        store: Store,
        arbiter: LimitArbiter,
        now: Callable[[], datetime],
        monotonic: Callable[[], float],
        emit: Emit,
        read_meter: Callable[[ConnectorRuntime], Awaitable[Any]],
        supervise: Callable[[str, TaskFactory], Any],
    ) -> None:
        self._connectors = connectors
        self._station = station
        self._keys = keys
        self._arbiter = arbiter
        self._now = now
        self._monotonic = monotonic
        self._emit = emit
        self._read_meter = read_meter
        self._supervise = supervise
        self._profiles = InstalledProfiles(StoreProfiles(store))
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._offer_changed: dict[int, float] = {}  # monotonic time of the last pilot change
        self._gave_back: dict[int, tuple[float, float]] = {}  # connector -> (amps before a cut, when)
        self._read_at: dict[int, float] = {}  # monotonic time of the last meter reading
        self._served_since: dict[int, datetime] = {}
        self._waiting_since: dict[int, datetime] = {}
        self._pending_remote: dict[int, ChargingProfile] = {}
        self._reads: set[asyncio.Task[Any]] = set()
        self._grid_reading: Any = None
        self._grid_read_at = -math.inf
        self._stopped = False
        stale = [p.charging_profile_id for _cid, p in self._profiles.all() if p.purpose == TX_PROFILE]
        for pid in stale:
            self._profiles.clear(id=pid)
        if stale:
            log.info("dropped TxProfile(s) %s of transactions that ended with the restart", stale)
        log.info("%d charging profile(s) installed", len(self._profiles))
        arbiter.on_limit_changed(self._limit_changed)
        arbiter.after_recompute(self._reschedule)

    # ================================================================== read-only views
    @property
    def profiles(self) -> InstalledProfiles:
        """The installed profiles (read them; change them through the OCPP operations below)."""
        return self._profiles

    @property
    def grid_read_at(self) -> float:
        """Monotonic time of the last grid meter reading (-inf: none yet)."""
        return self._grid_read_at

    def read_at(self, cid: int) -> float:
        """Monotonic time of the connector's last meter reading this service saw (-1.0: none)."""
        return self._read_at.get(cid, -1.0)

    def claims(self, cid: int) -> list[Claim]:
        """Every smart-charging source that limits this connector, as (amps, source); None = paused."""
        rt = self._connectors[cid]
        now = self._now()
        claims: list[Claim] = []
        cp_a, cp_src = self._cpmax(now)
        fuse = self._station.max_current_a
        if cp_a is not None:
            claims.append((cp_a, cp_src))
        station_a = fuse if cp_a is None else min(fuse, cp_a)
        station_src = "station fuse limit" if cp_a is None or fuse <= cp_a else cp_src
        grid = self._grid_available_a()
        if grid is not None:
            claims.append(grid)
            if grid[0] is not None and grid[0] < station_a:
                station_a, station_src = grid[0], "grid meter"
        local = self._arbiter.station_local_limit()
        if local is not None:
            claims.append(local)
            if local[0] is not None and local[0] < station_a:
                station_a, station_src = local[0], "local limit"
        tx_limits = {r.id: self._tx_limit(r, now) for r in self._connectors.values()
                     if r.state.in_transaction or r is rt}
        amps, src, mcr = tx_limits[rt.id]
        if amps is not None:
            claims.append((amps, src + (" (RemoteStartTransaction)" if rt.id in self._pending_remote
                                        and rt.tx is None else "")))
            if mcr is not None and amps < mcr:
                claims.append((None, f"{src}: limit {amps:g} A below its minChargingRate {mcr:g} A"))
        offer = self._balance(rt, now, station_a, tx_limits).get(rt.id)
        if offer is not None:
            claims.append((offer.amps, f"load balancer, {station_src} {station_a:g} A: {offer.reason}"))
        others = sum(self._committed_a(r) for r in self._connectors.values()
                     if r is not rt and r.state.in_transaction)
        if others > 0:
            claims.append((max(station_a - others, 0.0),
                           f"station headroom ({station_src} {station_a:g} A minus {others:g} A offered "
                           "to other connectors)"))
        return claims

    # ================================================================== start / stop
    def start(self, grid_meter: Any) -> None:
        if self._station.grid is not None and grid_meter is not None:
            # Supervised like the other long-lived tasks: a dead loop would leave the stale reading's
            # fallback (minimum current) for good, and dynamic load management silently off.
            self._supervise("grid-meter", functools.partial(self._grid_loop, grid_meter))

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None
        for task in list(self._reads):
            task.cancel()

    async def _grid_loop(self, meter: Any) -> None:
        """Dynamic load management: read the house connection and share only what the house leaves."""
        grid = self._station.grid
        assert grid is not None
        while True:
            try:
                self._grid_reading = await asyncio.wait_for(meter.read(), 5.0)
                self._grid_read_at = self._monotonic()
            except (MeterError, TimeoutError, OSError) as exc:
                if self._grid_reading is not None:
                    log.error("grid meter does not answer (%s): charging at the minimum until it does", exc)
                self._grid_reading = None
            self._arbiter.request_recompute()
            await asyncio.sleep(grid.poll_s)

    def _grid_available_a(self) -> Claim | None:
        """The house's main fuse minus what the house itself uses (grid current minus this charger's own)."""
        grid = self._station.grid
        if grid is None:
            return None
        reading = self._grid_reading
        if reading is None or self._monotonic() - self._grid_read_at > max(10.0, 5 * grid.poll_s):
            # no fresh reading: be safe, each charging connector gets at most its minimum
            charging = sum(1 for r in self._connectors.values() if r.state.in_transaction) or 1
            floor = max(r.state.min_current_a for r in self._connectors.values())
            return (floor * charging, "grid meter silent: minimum current only")
        ours = [0.0, 0.0, 0.0]
        for r in self._connectors.values():
            if r.reading is not None:
                for i, amps in enumerate(r.reading.current_a):
                    ours[i] += amps or 0.0
        house = max((g or 0.0) - o for g, o in zip(reading.current_a, ours, strict=True))
        available = max(0.0, grid.limit_a - grid.margin_a - house)
        return (round(available, 1), f"grid meter: the house uses {house:.1f} A of {grid.limit_a:g} A")

    def profile_limits(self) -> ProfileLimits:
        """The four §9.4 configuration keys as the validator needs them."""
        keys = self._keys
        return ProfileLimits.from_config(
            charge_profile_max_stack_level=int(keys["ChargeProfileMaxStackLevel"]),
            charging_schedule_allowed_charging_rate_unit=",".join(
                keys.csl("ChargingScheduleAllowedChargingRateUnit")
            ),
            charging_schedule_max_periods=int(keys["ChargingScheduleMaxPeriods"]),
            max_charging_profiles_installed=int(keys["MaxChargingProfilesInstalled"]),
        )

    # ================================================================== OCPP operations
    def set_charging_profile(self, connector_id: int, raw_profile: dict[str, Any]) -> str:
        """SetChargingProfile (§5.16): Accepted, Rejected or NotSupported; nothing changes unless Accepted."""
        limits = self.profile_limits()
        try:
            profile = profile_from_ocpp(plain_numbers(raw_profile), received_at=self._now())
        except ProfileRejected as exc:
            log.warning("SetChargingProfile rejected: %s", exc.reason)
            return "Rejected"
        if profile.schedule.charging_rate_unit not in limits.allowed_units:
            log.warning("SetChargingProfile: unit %s not supported (ChargingScheduleAllowedChargingRateUnit)",
                        profile.schedule.charging_rate_unit)
            return "NotSupported"
        rt = self._connectors.get(connector_id)
        active: int | None = None
        if rt is not None and rt.state.in_transaction:
            active = rt.tx.transaction_id if rt.tx is not None and rt.tx.transaction_id is not None else -1
        try:
            validate_profile(profile, connector_id, limits=limits, active_transaction_id=active,
                             number_of_connectors=len(self._connectors))
            replaced = self._profiles.install(connector_id, profile, limits)
        except ProfileRejected as exc:
            log.warning("SetChargingProfile rejected: %s", exc.reason)
            return "Rejected"
        log.info("charging profile %s installed on connector %d%s", profile.source, connector_id,
                 f" (replaces {replaced})" if replaced else "")
        self._emit("profile", action="set", connector=connector_id, profile=profile.source)
        self._arbiter.recompute_all()
        return "Accepted"

    def clear_charging_profile(
        self, id: int | None = None, connector_id: int | None = None,  # noqa: A002 - OCPP field name
        purpose: str | None = None, stack_level: int | None = None,
    ) -> str:
        """ClearChargingProfile (§5.5): Accepted if anything matched, else Unknown."""
        found = self._profiles.clear(id=id, connector_id=connector_id, purpose=purpose, stack_level=stack_level)
        if found:
            self._emit("profile", action="clear", connector=connector_id, id=id)
            self._arbiter.recompute_all()
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
        now = self._now()
        v = self._station.nominal_voltage_v
        if connector_id == 0:
            # the station's own cap: ChargePointMaxProfiles and the fuse (a connector-0 TxDefaultProfile
            # applies to each connector and enters through the connectors' composites below)
            cp_max = [(cid, p) for cid, p in self._profiles.all() if p.purpose == CHARGE_POINT_MAX]
            station = composite_schedule(cp_max, 0, now, duration_s, unit, tx_start=None, tx_id=None,
                                         voltage=v, phases=self._station_phases(),
                                         default_limit_a=self._station.max_current_a)
            per_connector = [self.composite_schedule(cid, duration_s, unit) for cid in self._connectors]
            return _station_total(station, [c for c in per_connector if c is not None])
        rt = self._connectors.get(connector_id)
        if rt is None:
            return None
        tx_start, tx_id = self._tx_anchor(rt, now)
        return composite_schedule(self._profiles, connector_id, now, duration_s, unit, tx_start=tx_start,
                                  tx_id=tx_id, voltage=v, phases=rt.phases, default_limit_a=rt.max_current_a)

    def accept_remote_start_profile(self, connector_id: int, profile: dict[str, Any]) -> bool:
        """RemoteStartTransaction chargingProfile (§5.11): a valid TxProfile without transactionId."""
        return self._remote_profile_ok(connector_id, profile)

    def remote_profile_usable(self, connector_id: int, profile: dict[str, Any]) -> bool:
        """The ``@after`` hook of RemoteStartTransaction runs even when the answer was Rejected: a start
        whose profile was refused must not go ahead (checked again, quietly)."""
        return self._remote_profile_ok(connector_id, profile, quiet=True)

    def _remote_profile_ok(self, connector_id: int, profile: dict[str, Any], quiet: bool = False) -> bool:
        try:
            p = profile_from_ocpp(plain_numbers(profile), received_at=self._now())
            if p.purpose != TX_PROFILE:
                raise ProfileRejected(f"purpose {p.purpose}: a remote start profile must be a TxProfile")
            if p.transaction_id is not None:
                raise ProfileRejected("transactionId set, but the transaction does not exist yet")
            validate_profile(p, connector_id, limits=self.profile_limits(), active_transaction_id=-1,
                             number_of_connectors=len(self._connectors))
        except ProfileRejected as exc:
            if not quiet:
                log.warning("RemoteStartTransaction chargingProfile rejected: %s", exc.reason)
            return False
        return True

    def remote_start_profile(self, connector_id: int, profile: dict[str, Any] | None) -> None:
        if profile is None:
            self._pending_remote.pop(connector_id, None)
            return
        self._pending_remote[connector_id] = profile_from_ocpp(plain_numbers(profile), received_at=self._now())
        self._arbiter.recompute_all()  # before the Authorize event: the first offer respects the profile

    # ================================================================== what the station tells this service
    def transaction_beginning(self, rt: ConnectorRuntime) -> None:
        """A transaction begins: a RemoteStartTransaction profile is installed now (§5.11)."""
        pending = self._pending_remote.pop(rt.id, None)
        if pending is not None:
            try:
                self._profiles.install(rt.id, pending, self.profile_limits())
                self._emit("profile", action="set", connector=rt.id, profile=pending.source)
            except ProfileRejected as exc:
                log.warning("RemoteStartTransaction profile not installed: %s", exc.reason)
        self._waiting_since.setdefault(rt.id, self._now())

    def transaction_ended(self, rt: ConnectorRuntime) -> None:
        """§3.13.1: a transaction's TxProfiles end with it."""
        removed = self._profiles.remove_tx_profiles(rt.id)
        if removed:
            log.info("connector %d: TxProfile(s) %s removed with the transaction", rt.id, removed)
        self._served_since.pop(rt.id, None)
        self._waiting_since.pop(rt.id, None)

    def transaction_id_known(self, rt: ConnectorRuntime) -> None:
        """StartTransaction.conf: the TxProfile installed without transactionId now carries it."""
        if rt.tx is None:
            return
        tx_id = rt.tx.transaction_id
        if tx_id is not None:
            for cid, p in self._profiles.all():
                if cid == rt.id and p.purpose == TX_PROFILE and p.transaction_id is None:
                    self._profiles.install(cid, replace(p, transaction_id=tx_id), self.profile_limits())

    def status_changed(self, rt: ConnectorRuntime, status: str) -> None:
        if status in ("Available", "Faulted", "Unavailable") and not rt.state.in_transaction:
            self._pending_remote.pop(rt.id, None)  # the remote-started session ended without charging
        self._arbiter.request_recompute()

    def meter_read(self, rt: ConnectorRuntime) -> None:
        """A new meter reading of the connector arrived."""
        self._read_at[rt.id] = self._monotonic()
        self._arbiter.request_recompute()

    def offer_changed(self, rt: ConnectorRuntime, before: float | None, after: float | None, now: float) -> None:
        """The pilot's offer changed (monotonic ``now``)."""
        if before is not None and (after is None or after < before):
            self._gave_back[rt.id] = (before, now)
        self._offer_changed[rt.id] = now
        self._arbiter.request_recompute()  # others may now use what this connector gave back
        # The balancer trusts a measurement taken once the EV had time to follow (see module doc);
        # the idle meter poll may be 10 s away, so read then.
        asyncio.get_running_loop().call_later(EV_REACTION_S + 0.2, self._read_later, rt)

    def _read_later(self, rt: ConnectorRuntime) -> None:
        if self._stopped:
            return
        task = asyncio.create_task(self._read_meter(rt), name=f"smart-read-{rt.id}")
        self._reads.add(task)  # a reference until done (not in the controller's task list: it would grow)
        task.add_done_callback(self._reads.discard)

    def _limit_changed(self, cid: int, before: float | None, after: float | None) -> None:
        now = self._now()
        if after is None and before is not None:
            self._waiting_since[cid] = now
        elif after is not None and before is None:
            self._served_since[cid] = now

    # ================================================================== limits
    def _station_phases(self) -> int:
        return max((rt.phases for rt in self._connectors.values()), default=3)

    def _tx_anchor(self, rt: ConnectorRuntime, now: datetime) -> tuple[datetime | None, int | None]:
        """(tx_start, tx_id) for the composite. A transaction the state machine began but whose
        bookkeeping has not run yet counts as starting now."""
        if rt.tx is not None:
            return rt.tx.start, rt.tx.transaction_id
        if rt.state.in_transaction:
            return now, None
        return None, None

    def _cpmax(self, now: datetime) -> tuple[float | None, str]:
        entries = [(c, p) for c, p in self._profiles.all() if p.purpose == CHARGE_POINT_MAX]
        if not entries:
            return None, "none"
        lim = limit_at(entries, 0, now, tx_start=None, tx_id=None,
                       voltage=self._station.nominal_voltage_v, phases=self._station_phases())
        return lim.amps, lim.source

    def _tx_entries(self, rt: ConnectorRuntime) -> list[tuple[int, ChargingProfile]]:
        entries = [(c, p) for c, p in self._profiles.all() if p.purpose != CHARGE_POINT_MAX]
        pending = self._pending_remote.get(rt.id)
        if pending is not None and rt.tx is None:
            entries.append((rt.id, pending))
        return entries

    def _tx_limit(self, rt: ConnectorRuntime, now: datetime) -> tuple[float | None, str, float | None]:
        """(amps, source, minChargingRate in A) of the TxProfile/TxDefaultProfile composite."""
        entries = self._tx_entries(rt)
        if not any(c in (0, rt.id) for c, _p in entries):
            return None, "none", None
        tx_start, tx_id = self._tx_anchor(rt, now)
        if tx_start is None and rt.id in self._pending_remote:
            tx_start = now  # what the remote-started transaction will be offered
        v = self._station.nominal_voltage_v
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
        for r in self._connectors.values():
            if not (r.state.in_transaction or r is focus):
                continue
            amps, _src, mcr = tx_limits[r.id]
            measured = None
            changed = self._offer_changed.get(r.id, -math.inf)
            if (r.reading is not None and r.state.in_transaction
                    and self._read_at.get(r.id, -math.inf) >= changed + EV_REACTION_S):
                measured = measured_current(r.reading)
            offered = self._arbiter.limit(r.id) if r.state.in_transaction else None
            demands.append(ConnectorDemand(
                connector_id=r.id, wants_power=True, composite_limit_a=amps,
                min_current_a=max(r.state.min_current_a, mcr or 0.0), max_current_a=r.max_current_a,
                measured_a=measured, offered_a=offered,
                waiting_since=self._waiting_since.get(r.id, now) if offered is None else None,
                served_since=self._served_since.get(r.id) if offered is not None else None,
            ))
        return balance(station_a, demands, now, rotation_s=ROTATION_S)

    def _committed_a(self, r: ConnectorRuntime) -> float:
        """What connector ``r`` may still be drawing: its offer, or, while its car may still be following a
        cut (EV_REACTION_S + FOLLOW_MARGIN_S, unless a later meter reading shows it has followed), the
        offer before the cut. The headroom claim hands out only current that is really free."""
        offer = self._arbiter.limit(r.id) or 0.0
        gave_back = self._gave_back.get(r.id)
        if gave_back is None:
            return offer
        before, since = gave_back
        mono = self._monotonic()
        until = since + EV_REACTION_S + FOLLOW_MARGIN_S
        followed = (
            self._read_at.get(r.id, -math.inf) > since
            and r.reading is not None
            and (measured_current(r.reading) or 0.0) <= offer + 0.5
        )
        if mono >= until or followed:
            del self._gave_back[r.id]
            return offer
        asyncio.get_running_loop().call_later(until - mono + 0.01, self._arbiter.request_recompute)
        return max(offer, before)

    def _next_event(self) -> datetime | None:
        """The next instant a profile changes a limit or a balancer turn ends."""
        now = self._now()
        v = self._station.nominal_voltage_v
        candidates: list[datetime] = []
        cpmax = [(c, p) for c, p in self._profiles.all() if p.purpose == CHARGE_POINT_MAX]
        if cpmax:
            nc = next_change(cpmax, 0, now, tx_start=None, tx_id=None, voltage=v, phases=self._station_phases())
            if nc is not None:
                candidates.append(nc)
        for rt in self._connectors.values():
            entries = self._tx_entries(rt)
            if any(c in (0, rt.id) for c, _p in entries):
                tx_start, tx_id = self._tx_anchor(rt, now)
                nc = next_change(entries, rt.id, now, tx_start=tx_start, tx_id=tx_id, voltage=v, phases=rt.phases)
                if nc is not None:
                    candidates.append(nc)
        waiting = any(r.state.in_transaction and self._arbiter.limit(r.id) is None for r in self._connectors.values())
        if waiting:
            for cid, since in self._served_since.items():
                r = self._connectors.get(cid)
                if r is not None and r.state.in_transaction and self._arbiter.limit(r.id) is not None:
                    candidates.append(max(since + timedelta(seconds=ROTATION_S), now))
        return min(candidates) if candidates else None

    def _reschedule(self) -> None:
        if self._stopped:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        at = self._next_event()
        if at is None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None
            self._timer_at = None
            return
        when = loop.time() + max((at - self._now()).total_seconds(), 0.0) + TIMER_SLACK_S
        if self._timer is not None and self._timer_at is not None and abs(self._timer_at - when) < 1e-3:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if not self._stopped:
            self._arbiter.recompute_all()

    # ================================================================== snapshot
    def snapshot(self) -> dict[str, Any]:
        """The ``smart_charging`` part of the station snapshot."""
        cp_a, cp_src = self._cpmax(self._now())
        return {
            "profiles": [{"connector_id": cid, **profile_to_ocpp(p)} for cid, p in self._profiles.all()],
            "station_fuse_a": self._station.max_current_a,
            "charge_point_max_a": cp_a,
            "charge_point_max_source": cp_src,
        }


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
