"""The analogue side of the Pi pilot: PWM output (sysfs duty file) + EV/test adapter -> peak-hold voltage.

A thread follows the duty_cycle file that the driver writes and sets the MCP3008 input the way the
reference circuit would: duty 0 -> constant -12 V (state F); otherwise the high level is set by the
vehicle side (A 12 V, B 9 V, C 6 V, D 3 V, E 0 V shorted).
"""

from __future__ import annotations

import threading
from pathlib import Path

from tests.fakes.mcp3008 import FakeMCP3008

LEVELS = {"A": 12.0, "B": 9.0, "C": 6.0, "D": 3.0, "E": 0.0}


class PilotCircuit:
    def __init__(self, adc: FakeMCP3008, pwm_dir: Path, channel: int = 0) -> None:
        self.adc, self.pwm_dir, self.channel = adc, pwm_dir, channel
        self.vehicle = "A"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def volts(self) -> float:
        try:
            duty = int((self.pwm_dir / "duty_cycle").read_text().strip() or 0)
            enabled = (self.pwm_dir / "enable").read_text().strip() == "1"
        except (OSError, ValueError):
            duty, enabled = 0, False
        if not enabled or duty == 0:
            return -12.0
        return LEVELS[self.vehicle]

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.adc.channels[self.channel] = (self.volts() + 12.0) / 24.0 * self.adc.vref

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
