"""End-to-end smart charging latency (plain script; prints numbers, asserts nothing).

    python tests/bench/bench_smart_e2e.py [--boundaries 20] [--spacing 1] [--rate-limit]

A whole controller on simulated hardware, connected to the loopback central system (127.0.0.1), charges
one car. A TxProfile alternating 16 A / 10 A every ``--spacing`` seconds is installed; for every period
boundary the time from the boundary to the pilot command (the "offer" timeline event, emitted right after
the pilot driver took the new current) is measured. Also: the cost of one full limit recomputation.

By default the 5 s duty rate limit is switched off (``duty_min_interval_s = 0``) so that 20 boundaries take
~20 seconds; the path measured (call_at timer -> claims -> Limit event -> dispatcher -> pilot) is the same.
``--rate-limit`` keeps the 5 s limit and spaces the boundaries 6 s apart (about 2 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (conftest's running_station)

from conftest import running_station  # noqa: E402

from chargepoint.smart.profiles import format_datetime  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(boundaries: int, spacing: int, rate_limit: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with running_station(Path(tmp)) as st:
            c: Any = st.controller
            if not rate_limit:
                c.limits.set_duty_min_interval(0.0)
            offers: list[tuple[float, float | None]] = []
            c.listeners.append(
                lambda kind, d: offers.append((time.monotonic(), d["amps"]))
                if kind == "offer" and d["connector"] == 1 else None
            )
            await st.start_charging()
            rt = c.connectors[1]
            await asyncio.sleep(5.2 if rate_limit else 0.1)  # the first offer is a change too
            now = c.now()
            start = (now + timedelta(seconds=1)).replace(microsecond=(now.microsecond // 1000) * 1000)
            step = max(1, round(spacing))  # startPeriod is whole seconds
            mono_ref = time.monotonic()
            wall_ref = c.now()
            periods = [{"startPeriod": k * step, "limit": 16 if k % 2 == 0 else 10}
                       for k in range(boundaries + 1)]
            prof = {"chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
                    "chargingProfileKind": "Absolute", "transactionId": rt.tx.transaction_id,
                    "chargingSchedule": {"chargingRateUnit": "A", "startSchedule": format_datetime(start),
                                         "chargingSchedulePeriod": periods}}
            ans = await st.call("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": prof})
            assert ans["status"] == "Accepted", ans
            marks = [mono_ref + (start + timedelta(seconds=k * step) - wall_ref).total_seconds()
                     for k in range(1, boundaries + 1)]
            total_s = boundaries * step
            await asyncio.sleep(total_s + 1.5)
            lat = []
            for k, mark in enumerate(marks, start=1):
                want = 16.0 if k % 2 == 0 else 10.0
                hit = next((t for t, a in offers if a == want and t >= mark - 0.05), None)
                if hit is not None:
                    lat.append((hit - mark) * 1000)
            print(f"boundaries {len(marks)}, pilot changes matched {len(lat)}, rate limit "
                  f"{'on (5 s)' if rate_limit else 'off'}")
            if lat:
                print(f"boundary -> pilot command: p50 {pct(lat, 0.5):.2f} ms, p99 {pct(lat, 0.99):.2f} ms, "
                      f"max {max(lat):.2f} ms, min {min(lat):.2f} ms")
            # cost of one recomputation (all claims, balancer, timer) with these profiles installed
            n = 200
            t0 = time.perf_counter()
            for _ in range(n):
                c.limits.recompute_all()
            per = (time.perf_counter() - t0) / n * 1000
            print(f"_recompute_all_limits with {len(c.smart.profiles)} profile(s), 1 connector: "
                  f"{per:.3f} ms (mean of {n}); median offer latency "
                  f"{statistics.median(lat) if lat else float('nan'):.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--boundaries", type=int, default=20)
    ap.add_argument("--spacing", type=int, default=1, help="whole seconds between boundaries")
    ap.add_argument("--rate-limit", action="store_true", help="keep the 5 s duty limit (spacing at least 6 s)")
    args = ap.parse_args()
    spacing = max(args.spacing, 6) if args.rate_limit else max(args.spacing, 1)
    asyncio.run(run(args.boundaries, spacing, args.rate_limit))


if __name__ == "__main__":
    main()
