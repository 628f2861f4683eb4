"""A scripted house for the simulated grid meter: a PV sun curve with passing clouds and a house load.

Pure and deterministic (a seed chooses the clouds), so the surplus tests, the benchmark and
``chargepoint simulate`` (``sun W``) replay the same day. ``t`` is seconds since local midnight.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Cloud:
    start: float
    end: float
    depth: float  # fraction of the PV power the cloud takes away
    edge_s: float = 20.0  # the shadow comes and goes over this many seconds


class SunProfile:
    """PV power: ``peak_w`` × sin(π·(t − sunrise)/(sunset − sunrise))^1.3, less the clouds passing over."""

    def __init__(self, *, peak_w: float = 8000.0, sunrise_h: float = 6.0, sunset_h: float = 20.0,
                 clouds_per_hour: float = 3.0, cloud_min_s: float = 30.0, cloud_max_s: float = 480.0,
                 depth_min: float = 0.4, depth_max: float = 0.8, house_w: float = 350.0, seed: int = 16) -> None:
        self.peak_w = peak_w
        self.sunrise_s = sunrise_h * 3600.0
        self.sunset_s = sunset_h * 3600.0
        self.house_w = house_w
        rng = random.Random(seed)
        clouds: list[Cloud] = []
        t = self.sunrise_s
        while clouds_per_hour > 0 and t < self.sunset_s:
            t += rng.expovariate(clouds_per_hour / 3600.0)
            length = rng.uniform(cloud_min_s, cloud_max_s)
            clouds.append(Cloud(t, t + length, rng.uniform(depth_min, depth_max)))
            t += length
        self.clouds = clouds
        self._starts = [c.start for c in clouds]
        # a few household appliances: (start, end, watts) — a kettle, a washing machine, an oven
        self.appliances = [(7.5 * 3600, 7.5 * 3600 + 180, 2000.0), (10 * 3600, 11.5 * 3600, 800.0),
                           (12 * 3600, 12 * 3600 + 2400, 2200.0), (18 * 3600, 18.75 * 3600, 2500.0)]

    def pv_w(self, t: float) -> float:
        t = t % 86400.0
        if not self.sunrise_s < t < self.sunset_s:
            return 0.0
        x = (t - self.sunrise_s) / (self.sunset_s - self.sunrise_s)
        clear = self.peak_w * math.sin(math.pi * x) ** 1.3
        i = bisect.bisect_right(self._starts, t) - 1
        if i >= 0:
            c = self.clouds[i]
            if t < c.end + c.edge_s:
                ramp = min(1.0, (t - c.start) / c.edge_s, (c.end + c.edge_s - t) / c.edge_s)
                clear *= 1.0 - c.depth * max(0.0, ramp)
        return clear

    def house_load_w(self, t: float) -> float:
        t = t % 86400.0
        return self.house_w + sum(w for a, b, w in self.appliances if a <= t < b)

    def export_w(self, t: float) -> float:
        """What the house exports without the car (negative: it imports)."""
        return self.pv_w(t) - self.house_load_w(t)
