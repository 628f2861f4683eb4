"""Benchmark of the pure energy models (issue 16). Prints numbers; asserts nothing about time.

    python tests/bench/bench_energy.py [--repeat 5]

(works from a checkout without installing the package: the repository root is put on sys.path)

1. The surplus controller's decision per grid meter sample (p50/p99/max over a simulated day). Goal ≤ 1 ms.
2. A day of simulated sun, 86,400 one-second samples, through the pure model (surplus controller, phase
   switch sequence, car) as tests/test_energy_surplus.py runs it. Goal ≤ 2 s. Also prints the day's
   numbers: energy charged, grid import caused by the car, contactor closes (max per sliding hour).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_energy_surplus import house_day  # noqa: E402

from chargepoint.energy.surplus import SurplusConfig, SurplusController  # noqa: E402
from hal.sim.sun import SunProfile  # noqa: E402


def per_sample(sun: SunProfile, cfg: SurplusConfig) -> list[float]:
    ctl = SurplusController(cfg)
    times: list[float] = []
    car_w = 0.0
    for t in range(86400):
        grid_w = -sun.export_w(t) + car_w
        t0 = time.perf_counter()
        ctl.sample(float(t), grid_w, car_w)
        amps = ctl.claim.amps
        times.append(time.perf_counter() - t0)
        car_w = (amps or 0.0) * 230.0 * ctl.phases
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    sun = SunProfile(peak_w=9000, seed=16)
    cfg = replace(SurplusConfig(), max_current_a=16, can_switch=True)
    times = sorted(per_sample(sun, cfg))
    n = len(times)
    print(f"decision per sample ({n} samples): p50 {times[n // 2] * 1e6:.1f} µs, p99 {times[int(n * 0.99)] * 1e6:.1f} µs, "
          f"max {times[-1] * 1e6:.1f} µs (goal ≤ 1 ms)")
    for label, profile, c in (("9 kWp, 1p/3p switching", sun, cfg),
                              ("9 kWp, 3 phases only", sun, replace(cfg, can_switch=False)),
                              ("5 kWp, 5 clouds/h, switching", SunProfile(peak_w=5000, seed=7, clouds_per_hour=5), cfg)):
        runs = []
        result: dict[str, float] = {}
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            result = house_day(profile, c)
            runs.append(time.perf_counter() - t0)
        share = result["car_import_kwh"] / result["charged_kwh"] * 100 if result["charged_kwh"] else 0.0
        print(f"day of 86,400 samples, {label}: median {statistics.median(runs):.3f} s, best {min(runs):.3f} s "
              f"(goal ≤ 2 s); charged {result['charged_kwh']:.1f} kWh, car import {result['car_import_kwh']:.2f} kWh "
              f"({share:.1f} %), contactor closes {result['closes']:.0f} (max {result['max_closes_per_hour']:.0f}/h)")


if __name__ == "__main__":
    main()
