"""NTC temperature sensor of a connector (socket terminals, contactor) on an MCP3008 channel.

Circuit: ``series_ohm`` from the ADC reference to the channel, the NTC from the channel to ground
(``ntc_position = "low"``; "high" swaps them). Ratiometric, so the reference's tolerance cancels.
Temperature from the Beta model: 1/T = 1/T25 + ln(R/R25)/B (T in kelvin), with the NTC's ``r25_ohm``
and ``beta`` from its datasheet.

Fail safe: a reading outside ``VALID_RANGE_C`` is a broken sensor, not a temperature: with the NTC on the
low side an open NTC reads far below -40 °C and a short far above 150 °C. After ``fault_samples`` such
readings (or failed ADC reads) in a row the driver raises ``FaultRaised(TEMP_SENSOR)``, which stops
charging (the terminals can no longer be watched); it is cleared after as many good readings.

The driver only measures; what a temperature means (derate, stop) is the controller's decision
(chargepoint/thermal.py), because the meter's temperature counts too. Everything above the driver
class is pure (time passed in).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hal.adc import ADC_MAX, PolledAdcChannel, claim_adc_channel
from hal.driver_options import Options
from hal.interfaces import (
    FaultCleared,
    FaultKind,
    FaultRaised,
    HalEvent,
    TemperatureReading,
)

log = logging.getLogger(__name__)

T25_K = 298.15
KELVIN = 273.15
VALID_RANGE_C = (-40.0, 150.0)  # outside: the sensor is open or shorted


@dataclass(frozen=True)
class NtcCircuit:
    """Defaults = the reference board (hardware-docs/pilot/values.toml [ntc], schematic R20 / J6)."""

    r25_ohm: float = 10_000.0
    beta: float = 3950.0
    series_ohm: float = 10_000.0
    ntc_low_side: bool = True  # NTC between the ADC input and ground

    def resistance(self, fraction: float) -> float:
        """NTC resistance for an ADC fraction 0..1 (0 or inf at the rails)."""
        if fraction <= 0.0:
            return 0.0 if self.ntc_low_side else math.inf
        if fraction >= 1.0:
            return math.inf if self.ntc_low_side else 0.0
        if self.ntc_low_side:
            return self.series_ohm * fraction / (1.0 - fraction)
        return self.series_ohm * (1.0 - fraction) / fraction

    def celsius(self, fraction: float) -> float:
        """Temperature for an ADC fraction; -inf for an open, +inf for a shorted NTC."""
        r = self.resistance(fraction)
        if r == 0.0:
            return math.inf
        if math.isinf(r):
            return -math.inf
        inv = 1.0 / T25_K + math.log(r / self.r25_ohm) / self.beta
        return math.inf if inv <= 0 else 1.0 / inv - KELVIN

    def fraction_at(self, celsius: float) -> float:
        """What the ADC sees at ``celsius`` (for tests and the commissioning check)."""
        r = self.r25_ohm * math.exp(self.beta * (1.0 / (celsius + KELVIN) - 1.0 / T25_K))
        return r / (r + self.series_ohm) if self.ntc_low_side else self.series_ohm / (r + self.series_ohm)


# The reference board's values (hardware-docs/pilot/values.toml [ntc]; tests/test_hardware_values.py keeps
# the two equal): the driver's defaults.
REFERENCE_NTC = NtcCircuit()


class NtcMonitor:
    """Filtered temperature and sensor health from raw ADC samples (pure: the caller passes the time).

    The mean of the last ``window`` samples is reported as ``TemperatureReading`` when it moved by
    ``report_delta_c`` or ``report_every_s`` passed; broken-sensor readings are never reported as
    temperatures."""

    def __init__(self, connector_id: int, circuit: NtcCircuit = NtcCircuit(), *, sensor: str = "socket",
                 window: int = 4, fault_samples: int = 3, report_delta_c: float = 0.5,
                 report_every_s: float = 10.0) -> None:
        self.connector_id = connector_id
        self.circuit = circuit
        self.sensor = sensor
        self.fault_samples = fault_samples
        self.report_delta_c = report_delta_c
        self.report_every_s = report_every_s
        self._window: deque[float] = deque(maxlen=window)
        self._bad = 0
        self._good = 0
        self.faulted = False
        self.celsius: float | None = None
        self._reported: float | None = None
        self._reported_at = -math.inf

    def sample(self, counts: int | None, now: float, error: str = "") -> list[HalEvent]:
        events: list[HalEvent] = []
        celsius = None if counts is None else self.circuit.celsius(counts / ADC_MAX)
        if celsius is None or not VALID_RANGE_C[0] <= celsius <= VALID_RANGE_C[1]:
            self._bad += 1
            self._good = 0
            self._window.clear()
            if self._bad >= self.fault_samples and not self.faulted:
                self.faulted = True
                self.celsius = None
                if counts is None:
                    why = f"{self.sensor} NTC: ADC read failed: {error}"
                else:
                    kind = "open" if celsius is not None and celsius < VALID_RANGE_C[0] else "shorted"
                    why = f"{self.sensor} NTC {kind} (ADC {counts})"
                events.append(FaultRaised(self.connector_id, FaultKind.TEMP_SENSOR, why[:50]))
            return events
        self._bad = 0
        self._good += 1
        self._window.append(celsius)
        if self.faulted:
            if self._good < self.fault_samples:
                return events
            self.faulted = False
            events.append(FaultCleared(self.connector_id, FaultKind.TEMP_SENSOR))
            self._reported = None
        mean = sum(self._window) / len(self._window)
        self.celsius = mean
        if (self._reported is None or abs(mean - self._reported) >= self.report_delta_c
                or now - self._reported_at >= self.report_every_s):
            self._reported, self._reported_at = mean, now
            events.append(TemperatureReading(self.connector_id, self.sensor, round(mean, 1)))
        return events


class Mcp3008Ntc(PolledAdcChannel):
    """The NTC of one connector, polled by a thread."""

    thread_prefix = "ntc"
    monitor: NtcMonitor

    def __init__(self, connector_id: int, monitor: NtcMonitor, *, channel: int, spi_port: int = 0,
                 spi_device: int = 0, poll_hz: float = 2.0, pin_factory: Any = None) -> None:
        super().__init__(connector_id, monitor, channel=channel, spi_port=spi_port, spi_device=spi_device,
                         poll_hz=poll_hz, pin_factory=pin_factory)

    @property
    def celsius(self) -> float | None:
        return self.monitor.celsius

    def _log_event(self, event: HalEvent) -> None:
        if isinstance(event, FaultRaised):
            log.error("connector %d: %s", self.connector_id, event.info)


def build_ntc(options: Mapping[str, Any], key: str, connector_id: int, ctx: Any) -> Mcp3008Ntc:
    o = Options(options, key)
    d = REFERENCE_NTC
    circuit = NtcCircuit(
        r25_ohm=o.float("r25_ohm", d.r25_ohm, lo=100.0, hi=1_000_000.0),
        beta=o.float("beta", d.beta, lo=1000.0, hi=10_000.0),
        series_ohm=o.float("series_ohm", d.series_ohm, lo=100.0, hi=1_000_000.0),
        ntc_low_side=o.str("ntc_position", "low", choices=("low", "high")) == "low",
    )
    channel = o.int("channel", None, lo=0, hi=7)
    spi_port, spi_device = o.int("spi_port", 0, lo=0, hi=1), o.int("spi_device", 0, lo=0, hi=1)
    poll_hz = o.float("poll_hz", 2.0, lo=0.5, hi=50.0)
    sensor = o.str("name", "socket")
    o.finish()
    claim_adc_channel(ctx, key, spi_port, spi_device, channel)
    monitor = NtcMonitor(connector_id, circuit, sensor=sensor[:20])
    return Mcp3008Ntc(connector_id, monitor, channel=channel, spi_port=spi_port, spi_device=spi_device,
                      poll_hz=poll_hz, pin_factory=ctx.shared.get("gpio_pin_factory"))
