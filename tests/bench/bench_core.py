"""Core benchmarks (print numbers; no assertions).

1. Reaction: simulated pilot leaves state C (or a fault is raised) → contactor-open command, p50/p99 over
   1,000 events while the OCPP link handles 20 messages per second. Goal p99 ≤ 10 ms (IEC 61851-1: 100 ms).
2. Idle cost: CPU seconds per minute with one connected idle charge point (goal ≤ 0.6 s/min) and resident
   memory (goal ≤ 60 MB).

Run: python tests/bench/bench_core.py [--events 1000] [--idle-seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from chargepoint.config import simulated_config  # noqa: E402
from chargepoint.controller import Controller  # noqa: E402
from chargepoint.csms import CentralSystem  # noqa: E402
from hal.interfaces import FaultKind  # noqa: E402


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def reaction(events: int) -> None:
    with tempfile.TemporaryDirectory() as state:
        async with CentralSystem() as cs:
            cfg = simulated_config(
                charge_point_id="BENCH",
                csms_url=cs.url,
                state_dir=state,
                ev_reaction_s=0.0,
                ocpp_keys={"MeterValueSampleInterval": 0},
            )
            c = Controller(cfg)
            await c.start()
            await cs.wait_for(lambda: c.boot_accepted, 10)
            bench = c.build_context.shared["sim_bench"]
            ev = bench.ev(1)
            contactor = bench.contactors[1]
            opened_at: list[float] = []
            original_open = contactor.open

            async def timed_open() -> None:
                opened_at.append(time.perf_counter())
                await original_open()

            contactor.open = timed_open  # type: ignore[method-assign]

            async def load() -> None:  # 20 OCPP messages per second through the link
                while True:
                    await cs.call("BENCH", "GetConfiguration", {"key": ["HeartbeatInterval"]})
                    await asyncio.sleep(0.05)

            loader = asyncio.create_task(load())
            ev.plug()
            bench.readers[0].present("BENCH1")
            await cs.wait_for(lambda: contactor.is_closed, 10)
            samples: dict[str, list[float]] = {"pilot C→B": [], "fault": []}
            for i in range(events):
                await cs.wait_for(lambda: contactor.is_closed, 10)
                kind = "fault" if i % 4 == 3 else "pilot C→B"
                opened_at.clear()
                t0 = time.perf_counter()
                if kind == "fault":
                    bench.inject(1, FaultKind.OVERCURRENT)
                else:
                    ev.suspend()
                await cs.wait_for(lambda: opened_at, 5)
                samples[kind].append((opened_at[0] - t0) * 1000)
                if kind == "fault":
                    bench.clear(1, FaultKind.OVERCURRENT)
                else:
                    ev.resume()
            loader.cancel()
            await c.stop()
    every = samples["pilot C→B"] + samples["fault"]
    print(f"reaction over {len(every)} events with 20 OCPP msg/s on the link:")
    for name, vals in (*samples.items(), ("all", every)):
        print(
            f"  {name:10s} n={len(vals):4d}  p50 {statistics.median(vals):6.3f} ms  p99 {pct(vals, 99):6.3f} ms  "
            f"max {max(vals):6.3f} ms   (goal p99 ≤ 10 ms)"
        )


async def idle(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as state:
        async with CentralSystem() as cs:
            cfg = simulated_config(charge_point_id="IDLE", csms_url=cs.url, state_dir=state)
            c = Controller(cfg)
            await c.start()
            await cs.wait_for(lambda: c.boot_accepted, 10)
            await asyncio.sleep(2)
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.monotonic()
            await asyncio.sleep(seconds)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            elapsed = time.monotonic() - t0
            await c.stop()
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    rss_mb = int(open(f"/proc/{os.getpid()}/status").read().split("VmRSS:")[1].split()[0]) / 1024
    print(
        f"idle for {elapsed:.0f} s (central system in the same process): CPU {cpu / elapsed * 60:.3f} s/min "
        f"(goal ≤ 0.6), RSS {rss_mb:.1f} MB now, max RSS {r1.ru_maxrss / 1024:.1f} MB (goal ≤ 60 MB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=60)
    args = parser.parse_args()
    asyncio.run(reaction(args.events))
    asyncio.run(idle(args.idle_seconds))


if __name__ == "__main__":
    main()
