"""One MCP3008 channel polled by a thread, its samples fed to a pure monitor (PP cable coding, NTC).

The monitor owns every decision (bands, debounce, faults) and takes the time as an argument; this class only
reads the ADC, hands the monitor's events to the loop (``ThreadedDevice._hand_over``) and cleans up.
"""

from __future__ import annotations

import time
from typing import Any

from hal.interfaces import Emit, HalEvent, HardwareConfigError
from hal.threaded import ThreadedDevice

ADC_MAX = 1023  # MCP3008: 10 bits


def claim_adc_channel(ctx: Any, key: str, spi_port: int, spi_device: int, channel: int | None) -> None:
    """One owner per ADC channel across the pilot, PP and NTC inputs (shared with hal/pilot_pwm.py)."""
    claimed: dict[str, str] = ctx.get_or_create("pilot_pwm.channels", dict)
    ident = f"adc:{spi_port}.{spi_device}:{channel}"
    if ident in claimed:
        raise HardwareConfigError(key + ".channel", channel, f"one not used by {claimed[ident]}")
    claimed[ident] = key


class PolledAdcChannel(ThreadedDevice):
    """Reads ``channel`` every ``1 / poll_hz`` s and passes each reading (or the read error) to ``monitor``."""

    join_timeout_s = 2.0
    thread_prefix = "adc"

    def __init__(self, connector_id: int, monitor: Any, *, channel: int, spi_port: int = 0,
                 spi_device: int = 0, poll_hz: float = 2.0, pin_factory: Any = None) -> None:
        super().__init__(fault_connector=connector_id)
        self.connector_id = connector_id
        self.monitor = monitor
        self.channel, self.spi_port, self.spi_device = channel, spi_port, spi_device
        self.poll_hz = poll_hz
        self._pf = pin_factory
        self._adc: Any = None

    def _thread_name(self) -> str:
        return f"{self.thread_prefix}-{self.connector_id}"

    async def start(self, emit: Emit) -> None:
        from gpiozero import MCP3008

        self._adc = MCP3008(channel=self.channel, port=self.spi_port, device=self.spi_device,
                            pin_factory=self._pf)
        await super().start(emit)

    def read_counts(self) -> int:
        return round(float(self._adc.value) * ADC_MAX)

    def _log_event(self, event: HalEvent) -> None:
        """Hook: a subclass logs the events a maintainer should see."""

    def _run(self) -> None:
        period = 1.0 / self.poll_hz
        while not self._stop.is_set():
            try:
                counts: int | None = self.read_counts()
                error = ""
            except Exception as exc:  # SPI error: the monitor decides (UNKNOWN / a sensor fault after a few)
                counts, error = None, str(exc)
            for event in self.monitor.sample(counts, time.monotonic(), error):
                self._log_event(event)
                self._hand_over(event)
            self._stop.wait(period)

    async def stop(self) -> None:
        await super().stop()
        if self._adc is not None:
            self._adc.close()
            self._adc = None
