"""MQTT front end cost during a charging session (plain script; prints numbers, asserts nothing).

    python tests/bench/bench_mqtt.py [--seconds 30] [--fake]

A mosquitto on 127.0.0.1 (own config and password file), a subscriber on ``#`` like Home Assistant, and the
MQTT front end publishing a station: by default the whole controller on simulated hardware charging one car
against the loopback central system (through the application API's implementation); with ``--fake`` (or
when the API implementation is not there) a fake StationApi whose meter changes 20 times a second.
Prints messages published per second (after coalescing), change events seen, CPU seconds per minute of the
process and the loop lag (how late a 5 ms timer fires).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (helpers)

from mqtt_helpers import FakeApi, Mosquitto, Subscriber, controller_api, loop_lag, running_frontend  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(api: Any, broker: Mosquitto, seconds: float, drive: Any) -> None:
    async with Subscriber(broker) as sub, running_frontend(api, broker) as fe:
        await fe.wait_idle()
        before_pub, before_msgs, before_snap = fe.stats.published, len(sub.messages), fe.stats.snapshots
        cpu0, t0 = time.process_time(), time.monotonic()
        driver = asyncio.create_task(drive(seconds))
        lags = await loop_lag(seconds)
        await driver
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        published = fe.stats.published - before_pub
        print(f"session of {wall:.1f} s: {published} messages published ({published / wall:.1f}/s), "
              f"{len(sub.messages) - before_msgs} received by the subscriber, "
              f"{fe.stats.snapshots - before_snap} snapshots taken")
        top = fe.stats.by_topic.most_common(3)
        print("most published topics: " + ", ".join(f"{t.rsplit('/', 2)[-2:]}×{n}" for t, n in top))
        print(f"CPU of the whole process: {cpu:.2f} s = {cpu / wall * 60:.1f} CPU-s/min "
              "(controller, simulated hardware and broker client; the broker is another process)")
        print(f"loop lag (5 ms timer): p50 {statistics.median(lags) * 1000:.2f} ms, p99 "
              f"{pct(lags, 0.99) * 1000:.2f} ms, max {max(lags) * 1000:.2f} ms")


async def run_fake(broker: Mosquitto, seconds: float) -> None:
    api = FakeApi()

    async def drive(duration: float) -> None:
        end = time.monotonic() + duration
        energy = 1000.0
        api.update(1, status="Charging", pilot="C", contactor="closed", transaction_id=1, session_energy_wh=0.0)
        while time.monotonic() < end:
            energy += 0.6
            api.update(1, power_w=7360.0 + (energy % 7), measured_a=10.7, energy_wh=energy,
                       session_energy_wh=energy - 1000.0)
            await asyncio.sleep(0.05)

    print("fake StationApi, meter changes 20×/s")
    await measure(api, broker, seconds, drive)


async def run_real(broker: Mosquitto, seconds: float, tmp: Path) -> bool:
    from e2e_helpers import running_rig

    async with running_rig(tmp / "state") as rig:
        api = controller_api(rig.controller)
        if api is None:
            return False

        async def drive(duration: float) -> None:
            rig.bench.ev(1).plug()
            rig.tap("04A2B3C4")
            await asyncio.sleep(duration)

        print("controller on simulated hardware, one session against the loopback central system")
        await measure(api, broker, seconds, drive)
    return True


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--fake", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto")
        broker.start()
        try:
            if args.fake or not await run_real(broker, args.seconds, Path(tmp)):
                await run_fake(broker, args.seconds)
        finally:
            broker.stop()


if __name__ == "__main__":
    asyncio.run(main())
