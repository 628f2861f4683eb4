"""Proximity pilot (PP) of a Type 2 socket: which current the plugged cable is rated for.

IEC 61851-1 (Annex B, Table B.2) and IEC 62196-2 code a cable's current capability with a resistor Rc
between PP and PE in the plug: 1.5 kΩ = 13 A, 680 Ω = 20 A, 220 Ω = 32 A, 100 Ω = 63 A (70 A single
phase), each ±3 %. An open PP on a socket means "no cable": no charging. A socket must never offer
more than the cable carries (IEC 61851-1 clause 6.3.1.4 / Annex B: "the EVSE shall limit the PWM to the
current capability of the cable assembly").

Reading (decided here, a commercial wallbox's reading of the standard): a reading is accepted for a code
only inside that code's band, which is the worst case of the coded resistor's ±3 % *and* of the
measuring circuit's own tolerances (pull-up, divider, supply, ADC error in LSB). A reading between
two bands, below the 63 A band (PP shorted to PE) or between the 13 A band and "open" is an **invalid
cable**: nothing is offered and the connector is faulted (OCPP OtherError, vendorErrorCode InvalidCable)
until the cable is pulled out (PP open again). Narrow bands with gaps are safer than the contiguous
interpretation ranges some controllers use: a drifting or tampered cable is refused instead of being
read as the neighbouring code.

Circuit (``PpCircuit``): pull-up ``pullup_ohm`` from ``supply_v`` to the PP contact, Rc to PE; the PP
node reaches MCP3008 ``channel`` through ``series_ohm`` and, optionally, a divider ``divider_ohm`` to
ground. The defaults (``REFERENCE_CIRCUIT``) are the reference board's design values from
hardware-docs/pilot/values.toml ``[pp]`` (keep the two equal). With the pull-up fed from the ADC's
reference (``supply_v == vref_v``) the reading is ratiometric and the supply's tolerance cancels.

Everything above the driver class is pure (no I/O, time passed in) and tested band edge by band edge.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hal.adc import ADC_MAX, PolledAdcChannel, claim_adc_channel
from hal.driver_options import Options
from hal.interfaces import CableChanged, CableState, HalEvent, HardwareConfigError

log = logging.getLogger(__name__)

# IEC 61851-1 Table B.2 / IEC 62196-2: cable current capability (A) -> nominal Rc (ohm).
RC_CODES: tuple[tuple[float, float], ...] = ((13.0, 1500.0), (20.0, 680.0), (32.0, 220.0), (63.0, 100.0))
RC_TOLERANCE = 0.03  # the coded resistor's tolerance (IEC 62196-2)
OPEN_MIN_OHM = 10_000.0  # at or above this the PP counts as open: no cable


@dataclass(frozen=True)
class PpCircuit:
    """The PP measuring circuit. Tolerances are fractions (0.01 = 1 %)."""

    # Defaults = hardware-docs/pilot/values.toml [pp] (the reference board): pull-up from the 3.0 V
    # reference that is also the MCP3008's VREF, 1 kΩ series resistor into the ADC input, no divider.
    pullup_ohm: float = 1000.0
    supply_v: float = 3.0
    vref_v: float = 3.0
    series_ohm: float = 1000.0  # PP node -> ADC input (protection); divider top when divider_ohm is set
    divider_ohm: float | None = None  # ADC input -> ground; None: no divider (the ADC sees the node)
    resistor_tolerance: float = 0.01
    supply_tolerance: float = 0.0  # 0 when ratiometric (pull-up fed from the ADC reference)
    adc_error_lsb: int = 4  # MCP3008 offset + gain + INL budget (values.toml [adc] error_lsb)

    def fraction(self, rc_ohm: float, *, pullup: float | None = None, series: float | None = None,
                 divider: float | None = None, supply: float | None = None) -> float:
        """ADC input / vref for a cable resistance ``rc_ohm`` (math.inf = open)."""
        rpu = self.pullup_ohm if pullup is None else pullup
        rs = self.series_ohm if series is None else series
        rd = self.divider_ohm if divider is None else divider
        vs = self.supply_v if supply is None else supply
        load = rc_ohm if rd is None else _parallel(rc_ohm, rs + rd)
        node = vs if math.isinf(load) else vs * load / (load + rpu)
        adc = node if rd is None else node * rd / (rs + rd)
        return min(max(adc / self.vref_v, 0.0), 1.0)

    def counts(self, rc_ohm: float) -> int:
        """What the ADC reads for ``rc_ohm`` with every part at its nominal value."""
        return round(self.fraction(rc_ohm) * ADC_MAX)

    def ohms(self, counts: int) -> float:
        """The cable resistance that explains ``counts`` with nominal parts (math.inf = open)."""
        f = min(max(counts, 0), ADC_MAX) / ADC_MAX
        adc = f * self.vref_v
        rd = self.divider_ohm
        node = adc if rd is None else adc * (self.series_ohm + rd) / rd
        if node >= self.supply_v:
            return math.inf
        load = self.pullup_ohm * node / (self.supply_v - node)
        if rd is None:
            return load
        inv = 1.0 / load - 1.0 / (self.series_ohm + rd) if load > 0 else math.inf
        return math.inf if inv <= 0 else 1.0 / inv

    def fraction_range(self, rc_lo: float, rc_hi: float) -> tuple[float, float]:
        """Lowest and highest ADC fraction for a cable resistance in [rc_lo, rc_hi] over every part's
        tolerance. The reading is monotonic in each part, so the corners bound it."""
        t, st = self.resistor_tolerance, self.supply_tolerance
        values = [
            self.fraction(rc, pullup=self.pullup_ohm * a, series=self.series_ohm * b,
                          divider=None if self.divider_ohm is None else self.divider_ohm * c,
                          supply=self.supply_v * d)
            for rc, a, b, c, d in itertools.product((rc_lo, rc_hi), (1 - t, 1 + t), (1 - t, 1 + t),
                                                    (1 - t, 1 + t), (1 - st, 1 + st))
        ]
        return min(values), max(values)


REFERENCE_CIRCUIT = PpCircuit()


def _parallel(a: float, b: float) -> float:
    if math.isinf(a):
        return b
    if math.isinf(b):
        return a
    return a * b / (a + b)


@dataclass(frozen=True)
class Band:
    """ADC counts ``lo``..``hi`` (inclusive) read as cable rating ``amps`` (None: open, no cable)."""

    amps: float | None
    nominal_ohm: float
    lo: int
    hi: int


def bands(circuit: PpCircuit = REFERENCE_CIRCUIT) -> list[Band]:
    """The acceptance band of every code plus "open", ascending. Raises ValueError when two overlap or
    touch (the circuit cannot tell those codes apart)."""
    out: list[Band] = []
    lsb = circuit.adc_error_lsb
    for amps, rc in sorted(RC_CODES, key=lambda c: c[1]):
        lo_f, hi_f = circuit.fraction_range(rc * (1 - RC_TOLERANCE), rc * (1 + RC_TOLERANCE))
        out.append(Band(amps, rc, max(math.floor(lo_f * ADC_MAX) - lsb, 0),
                        min(math.ceil(hi_f * ADC_MAX) + lsb, ADC_MAX)))
    open_lo, _ = circuit.fraction_range(OPEN_MIN_OHM, OPEN_MIN_OHM)
    out.append(Band(None, math.inf, max(math.floor(open_lo * ADC_MAX) - lsb, 0), ADC_MAX))
    for below, above in itertools.pairwise(out):
        if above.lo <= below.hi + 1:
            what = "open" if above.amps is None else f"{above.amps:g} A"
            raise ValueError(f"the {below.amps:g} A and {what} bands overlap (ADC {below.lo}-{below.hi} "
                             f"and {above.lo}-{above.hi})")
    return out


@dataclass(frozen=True)
class PpReading:
    state: CableState
    amps: float | None
    counts: int
    detail: str


def _ohm_text(ohm: float) -> str:
    if math.isinf(ohm):
        return "open"
    return f"{ohm / 1000:.1f} kohm" if ohm >= 10_000 else f"{ohm:.0f} ohm"


def classify(counts: int, table: list[Band], circuit: PpCircuit = REFERENCE_CIRCUIT) -> PpReading:
    """One ADC reading -> cable state. ``table`` from :func:`bands` (ascending)."""
    for band in table:
        if band.lo <= counts <= band.hi:
            if band.amps is None:
                return PpReading(CableState.ABSENT, None, counts, "PP open: no cable")
            return PpReading(CableState.RATED, band.amps, counts,
                             f"PP {_ohm_text(circuit.ohms(counts))}: {band.amps:g} A cable")
    ohm = _ohm_text(circuit.ohms(counts))
    if counts < table[0].lo:
        why = f"below the {table[0].amps:g} A code (PP shorted to PE?)"
    else:
        below = max((b for b in table if b.hi < counts), key=lambda b: b.hi)
        above = min((b for b in table if b.lo > counts), key=lambda b: b.lo)
        why = (f"above the {below.amps:g} A code" if above.amps is None
               else f"between the {below.amps:g} A and {above.amps:g} A codes")
    return PpReading(CableState.INVALID, None, counts, f"PP {ohm}: {why}")


class PpMonitor:
    """Debounced cable state of one socket from raw ADC samples (pure: the caller passes the time).

    A classification must hold for ``debounce_s`` before it is reported (plugging in bounces; the first
    stable reading after start is always reported, so the controller learns "no cable" too). ``fail_limit``
    failed reads in a row report UNKNOWN (nothing may be offered on a rating nobody can read)."""

    def __init__(self, connector_id: int, circuit: PpCircuit = REFERENCE_CIRCUIT, *, debounce_s: float = 0.1,
                 fail_limit: int = 3) -> None:
        self.connector_id = connector_id
        self.circuit = circuit
        self.table = bands(circuit)
        self.debounce_s = debounce_s
        self.fail_limit = fail_limit
        self.reported: PpReading | None = None
        self.last: PpReading | None = None
        self._candidate: PpReading | None = None
        self._since = 0.0
        self._failures = 0

    def sample(self, counts: int | None, now: float, error: str = "") -> list[HalEvent]:
        """Feed one ADC sample (None = the read failed, ``error`` says why). Returns events to emit."""
        if counts is None:
            self._failures += 1
            self._candidate = None
            if self._failures >= self.fail_limit and (self.reported is None
                                                      or self.reported.state != CableState.UNKNOWN):
                self.reported = PpReading(CableState.UNKNOWN, None, -1, f"PP ADC read failed: {error}"[:80])
                return [CableChanged(self.connector_id, CableState.UNKNOWN, None, self.reported.detail)]
            return []
        self._failures = 0
        reading = classify(counts, self.table, self.circuit)
        self.last = reading
        key = (reading.state, reading.amps)
        if self.reported is not None and (self.reported.state, self.reported.amps) == key:
            self._candidate = None
            return []
        if self._candidate is None or (self._candidate.state, self._candidate.amps) != key:
            self._candidate, self._since = reading, now
        if now - self._since < self.debounce_s - 1e-6:  # (float sums of poll periods)
            return []
        self.reported, self._candidate = reading, None
        return [CableChanged(self.connector_id, reading.state, reading.amps, reading.detail)]


class Mcp3008CableInput(PolledAdcChannel):
    """PP of one socket through an MCP3008 channel, polled by a thread (like the pilot's sensing)."""

    thread_prefix = "pp"
    monitor: PpMonitor

    def __init__(self, connector_id: int, monitor: PpMonitor, *, channel: int, spi_port: int = 0,
                 spi_device: int = 0, poll_hz: float = 20.0, pin_factory: Any = None) -> None:
        super().__init__(connector_id, monitor, channel=channel, spi_port=spi_port, spi_device=spi_device,
                         poll_hz=poll_hz, pin_factory=pin_factory)

    @property
    def state(self) -> CableState | None:
        return self.monitor.reported.state if self.monitor.reported else None

    @property
    def amps(self) -> float | None:
        return self.monitor.reported.amps if self.monitor.reported else None

    @property
    def last_counts(self) -> int | None:
        return self.monitor.last.counts if self.monitor.last else None

    def _log_event(self, event: HalEvent) -> None:
        if isinstance(event, CableChanged):
            log.info("connector %d: cable %s %s", self.connector_id, event.state.value, event.detail)


def circuit_from_options(o: Options) -> PpCircuit:
    d = REFERENCE_CIRCUIT
    divider = o.raw("divider_ohm", "none")
    if divider != "none" and (isinstance(divider, bool) or not isinstance(divider, int | float)
                              or not 100 <= divider <= 1_000_000):
        raise HardwareConfigError(o.key + ".divider_ohm", divider, 'a resistance 100-1000000 ohm or "none"')
    return PpCircuit(
        pullup_ohm=o.float("pullup_ohm", d.pullup_ohm, lo=100.0, hi=100_000.0),
        supply_v=o.float("supply_v", d.supply_v, lo=1.0, hi=15.0),
        vref_v=o.float("vref_v", d.vref_v, lo=1.0, hi=5.5),
        series_ohm=o.float("series_ohm", d.series_ohm, lo=0.0, hi=1_000_000.0),
        divider_ohm=None if divider == "none" else float(divider),
        resistor_tolerance=o.float("resistor_tolerance", d.resistor_tolerance, lo=0.0, hi=0.1),
        supply_tolerance=o.float("supply_tolerance", d.supply_tolerance, lo=0.0, hi=0.1),
        adc_error_lsb=o.int("adc_error_lsb", d.adc_error_lsb, lo=0, hi=20),
    )


def build_cable_input(options: Mapping[str, Any], key: str, connector_id: int, ctx: Any) -> Mcp3008CableInput:
    o = Options(options, key)
    circuit = circuit_from_options(o)
    try:
        bands(circuit)
    except ValueError as exc:
        raise HardwareConfigError(key + ".pullup_ohm", circuit.pullup_ohm,
                                  f"a circuit that tells every cable code apart ({exc})") from None
    channel = o.int("channel", None, lo=0, hi=7)
    spi_port, spi_device = o.int("spi_port", 0, lo=0, hi=1), o.int("spi_device", 0, lo=0, hi=1)
    poll_hz = o.float("poll_hz", 20.0, lo=2.0, hi=200.0)
    debounce_ms = o.float("debounce_ms", 100.0, lo=0.0, hi=1000.0)
    o.finish()
    claim_adc_channel(ctx, key, spi_port, spi_device, channel)
    monitor = PpMonitor(connector_id, circuit, debounce_s=debounce_ms / 1000.0,
                        fail_limit=max(1, math.ceil(0.15 * poll_hz)))
    return Mcp3008CableInput(connector_id, monitor, channel=channel, spi_port=spi_port, spi_device=spi_device,
                             poll_hz=poll_hz, pin_factory=ctx.shared.get("gpio_pin_factory"))
