"""The energy service: the pure models (surplus, phase switch, schedule, dimming) fed from the hardware, their
claims registered with the limit arbiter (chargepoint/services/limits.py) under their own sources.

It only *claims*: the contactor stays the connector state machine's (chargepoint/connector.py) under its
safety invariant; a phase switch pauses through a claim and switches the relay only once the meter shows no
current and the contactor is open. Every claim goes through the arbiter, so a central system's profiles
still cap everything, and a lowered limit takes effect before a raised one as for every other source.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import datetime
from typing import Any

from chargepoint.energy import EnergyClaim
from chargepoint.energy.config import EnergyConfig
from chargepoint.energy.dimming import STATUS_INFO, Dimming
from chargepoint.energy.phase_switch import Failed, Finished, PhaseSwitchConfig, PhaseSwitchSequence, SetRelay
from chargepoint.energy.schedule import OffPeakSchedule
from chargepoint.energy.surplus import SurplusConfig, SurplusController
from chargepoint.services.station import Claim, Connectors
from hal import registry
from hal.interfaces import MeterError

log = logging.getLogger(__name__)

PRIORITY_ENERGY = 45  # after temperature (40), before the owner's local limit (50)
TICK_S = 1.0


class EnergyService:
    def __init__(self, cfg: EnergyConfig, connectors: Connectors, *, voltage_v: float, recompute: Callable[[], None],
                 monotonic: Callable[[], float], now: Callable[[], datetime], emit: Callable[..., None],
                 profile_phases: Callable[[int], int | None] = lambda cid: None,
                 on_dimming: Callable[[bool], None] = lambda active: None,
                 rand: Callable[[], float] | None = None) -> None:
        self.cfg = cfg
        self._connectors = connectors
        self._v = voltage_v
        self._recompute = recompute
        self._monotonic = monotonic
        self._now = now
        self._emit = emit
        self._profile_phases = profile_phases
        self._on_dimming_cb = on_dimming
        self._rand = rand or random.SystemRandom().random
        self.cid = cfg.connector
        self.phase_switch_dev: Any = None
        self.dimming_input: Any = None
        self._grid: Any = None
        self._grid_w: float | None = None
        self.surplus: SurplusController | None = None
        self.sequence: PhaseSwitchSequence | None = None
        self.schedule = (OffPeakSchedule(cfg.schedule.windows, tz=cfg.schedule.timezone,
                                         random_delay_s=cfg.schedule.random_delay_s, rand=self._rand)
                         if cfg.schedule else None)
        self.dimming = Dimming(power_w=cfg.dimming.power_w, voltage_v=voltage_v) if cfg.dimming else None
        self._was_in_tx = False

    # ------------------------------------------------------------------ set-up
    def build(self, ctx: Any) -> None:
        """Build the energy devices in the station's build context (pins are claimed with the others)."""
        if self.cfg.phase_switch is not None:
            self.phase_switch_dev = registry.build("phase_switch", self.cfg.phase_switch.device,
                                                   "energy.phase_switch", self.cid, ctx)
        if self.cfg.dimming is not None:
            self.dimming_input = registry.build("dimming", self.cfg.dimming.device, "energy.dimming.input", 0, ctx)

    async def start(self, grid_meter: Any, emit_hal: Any) -> None:
        rt = self._connectors.get(self.cid)
        wired = rt.phases if rt is not None else 3
        max_a = rt.max_current_a if rt is not None else 16.0
        if self.phase_switch_dev is not None:
            await self.phase_switch_dev.start(emit_hal)
            ps = self.cfg.phase_switch
            assert ps is not None
            self.sequence = PhaseSwitchSequence(PhaseSwitchConfig(settle_s=ps.settle_s,
                                                                  pause_timeout_s=ps.pause_timeout_s),
                                                phases=self.phase_switch_dev.phases)
        phases_now = self.sequence.phases if self.sequence else wired
        if self.cfg.mode in ("surplus", "minpv"):
            ps = self.cfg.phase_switch
            self.surplus = SurplusController(SurplusConfig(
                mode=self.cfg.mode, voltage_v=self._v, max_current_a=max_a, phases=wired,
                can_switch=self.sequence is not None, start_delay_s=self.cfg.start_delay_s,
                stop_delay_s=self.cfg.stop_delay_s, margin_w=self.cfg.margin_w,
                max_cycles_per_hour=self.cfg.max_switches_per_hour,
                phase_delay_s=ps.phase_delay_s if ps else 120.0,
                phase_hysteresis_w=ps.phase_hysteresis_w if ps else 500.0), phases=phases_now)
            self._grid = grid_meter
        if self.dimming_input is not None:
            await self.dimming_input.start(emit_hal)
            self.dimming_input.on_change(self._on_dimming)
            self._on_dimming(self.dimming_input.active)
        if self.schedule is not None:
            delay = self.schedule.power_restored(self._now())
            log.info("off-peak schedule: randomised start delay %.0f s after the start (power restore)", delay)

    async def stop(self) -> None:
        for dev in (self.phase_switch_dev, self.dimming_input):
            if dev is not None:
                await dev.stop()

    # ------------------------------------------------------------------ the claims
    def claims(self, cid: int) -> list[Claim]:
        out: list[EnergyClaim | None] = []
        now = self._monotonic()
        rt = self._connectors.get(cid)
        if self.dimming is not None and rt is not None:
            sharing = sum(1 for r in self._connectors.values() if r.state.in_transaction) or 1
            out.append(self.dimming.claim(self._phases(cid), sharing))
        if self.schedule is not None:
            out.append(self.schedule.claim(self._now()))
        if cid == self.cid:
            if self.sequence is not None:
                out.append(self.sequence.claim(now))
            if self.surplus is not None:
                out.append(self.surplus.claim)
        return [c.as_claim() for c in out if c is not None]

    def _phases(self, cid: int) -> int:
        if cid == self.cid and self.sequence is not None:
            return self.sequence.phases
        rt = self._connectors.get(cid)
        return rt.phases if rt is not None else 3

    def status_info(self, cid: int) -> str | None:
        """StatusNotification.info while dimmed (security-neutral: not a fault)."""
        return STATUS_INFO if self.dimming is not None and self.dimming.active else None

    def override(self, on: bool = True) -> None:
        """"Charge now" for the off-peak schedule (web UI, MQTT, card)."""
        if self.schedule is not None:
            self.schedule.override(on)
            log.info("off-peak schedule override %s", "on" if on else "off")
            self._recompute()

    def snapshot(self) -> dict[str, Any]:
        return {
            "mode": self.cfg.mode,
            "surplus_w": round(self.surplus.surplus_w) if self.surplus else None,
            "phases": self.sequence.phases if self.sequence else None,
            "phase_switch": self.sequence.step.value if self.sequence else None,
            "dimmed": bool(self.dimming and self.dimming.active),
            "schedule_override": bool(self.schedule and self.schedule.overridden),
        }

    # ------------------------------------------------------------------ inputs
    def _on_dimming(self, active: bool) -> None:
        assert self.dimming is not None
        if self.dimming.set_active(active, self._monotonic()):
            log.warning("§14a EnWG grid operator signal %s: %s", "active" if active else "ended",
                        f"limited to {self.dimming.power_w:g} W" if active else "limit lifted",
                        extra={"ENERGY_DIMMING": "1" if active else "0"})
            self._emit("dimming", active=active, power_w=self.dimming.power_w)
            self._on_dimming_cb(active)
            self._recompute()

    async def run(self) -> None:
        """One loop per second: grid reading, surplus decision, phase switch sequence, schedule edges."""
        poll_every = 2.0
        last_poll = -1e9
        while True:
            now = self._monotonic()
            if self._grid is not None and now - last_poll >= poll_every:
                last_poll = now
                try:
                    reading = await asyncio.wait_for(self._grid.read(), 5.0)
                    self._grid_w = reading.power_w
                except (MeterError, TimeoutError, OSError) as exc:
                    log.warning("energy: grid meter does not answer (%s): no surplus known", exc)
                    self._grid_w = None
            await self.step(now)
            await asyncio.sleep(TICK_S)

    async def step(self, now: float) -> None:
        """One decision round (tests call it directly)."""
        rt = self._connectors.get(self.cid)
        if rt is None:
            return
        reading = rt.reading
        currents = tuple(reading.current_a) if reading is not None else (None, None, None)
        car_w = (reading.power_w or 0.0) if reading is not None and rt.state.contactor_closed else 0.0
        drawing = sum(1 for a in currents if a is not None and a >= 1.0)
        if rt.state.in_transaction != self._was_in_tx:
            self._was_in_tx = rt.state.in_transaction
            if not rt.state.in_transaction:
                if self.schedule is not None and self.schedule.overridden:
                    self.schedule.override(False)  # an override lasts for the session
                if self.sequence is not None:
                    self.sequence.reset()
        if self.surplus is not None:
            amps = max((a or 0.0) for a in currents) if reading is not None else 0.0
            self.surplus.sample(now, self._grid_w, car_w, amps)
        if self.sequence is not None:
            await self._phase_round(now, rt, currents, drawing)
        self._recompute()

    async def _phase_round(self, now: float, rt: Any, currents: tuple[Any, ...], drawing: int) -> None:
        seq = self.sequence
        assert seq is not None
        wanted = None
        profile = self._profile_phases(self.cid)
        if profile == 1:
            # a profile period's numberPhases 1 on a switchable connector charges on one phase (OCPP 1.6 §7.9;
            # 3 is the default when absent, so only 1 asks for something)
            wanted = 1
        elif self.surplus is not None:
            wanted = self.surplus.wanted_phases
        else:
            wanted = rt.phases  # no surplus mode: the connector's wiring
        if wanted != seq.phases and not seq.busy and seq.step.value != "fault":
            if seq.request(now, wanted, car_phases_before=drawing if drawing else 0):
                log.info("connector %d: phase switch to %d phase(s) begins (pause)", self.cid, wanted,
                         extra={"CONNECTOR_ID": self.cid})
        for action in seq.update(now, currents, rt.state.contactor_closed):
            await self._act(now, action, rt)
        sp = self.surplus
        if sp is not None and seq.step.value in ("resuming", "idle") and sp.phases != seq.phases:
            sp.phases_changed(now, seq.phases)  # the relay is in place: the offer for the new phases may come

    async def _act(self, now: float, action: Any, rt: Any) -> None:
        seq = self.sequence
        assert seq is not None
        if isinstance(action, SetRelay):
            if rt.state.contactor_closed:  # defence in depth: never switch under load
                for a in seq.relay_set(now, ok=False, detail="contactor closed at the switch"):
                    await self._act(now, a, rt)
                return
            try:
                await self.phase_switch_dev.set_phases(action.phases)
                follow = seq.relay_set(self._monotonic())
            except Exception as exc:  # a driver error is a failed switch, not a crash
                follow = seq.relay_set(self._monotonic(), ok=False, detail=str(exc))
            for a in follow:
                await self._act(now, a, rt)
        elif isinstance(action, Finished):
            log.info("connector %d: now on %d phase(s)%s", self.cid, action.phases,
                     "" if action.verified else " (not verified: the car did not draw)",
                     extra={"CONNECTOR_ID": self.cid})
            self._emit("phase_switch", connector=self.cid, phases=action.phases, verified=action.verified)
        elif isinstance(action, Failed):
            log.error("connector %d: phase switch failed: %s", self.cid, action.detail,
                      extra={"CONNECTOR_ID": self.cid})
            self._emit("phase_switch_fault", connector=self.cid, detail=action.detail)
            if self.surplus is not None:
                self.surplus.phases_changed(now, action.phases)
