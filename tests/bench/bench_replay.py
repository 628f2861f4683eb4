"""Benchmark: replay of a long offline queue, and the safety reaction meanwhile.  Prints numbers; asserts nothing.

    python tests/bench/bench_replay.py [--messages 10000] [--profile out.prof]

1. A transaction runs, the central system goes away, ``--messages`` MeterValues pile up in the outbox
   (3-phase sampled data, as the sampler writes them), the central system (loopback, real websocket,
   ``chargepoint.csms.CentralSystem``) comes back: messages per second until the queue is empty
   (one outstanding request at a time, OCPP-J §4.1.1).  Goal >= 500/s.
2. Meanwhile the simulated car leaves state C every ~40 ms (EV suspends) and resumes: time from the
   pilot leaving C to the contactor open command (p50/p99/max).  Goal p99 <= 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import pstats
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from chargepoint.config import simulated_config  # noqa: E402
from chargepoint.controller import Controller  # noqa: E402
from chargepoint.csms import CentralSystem  # noqa: E402
from chargepoint.metering import iso, sampled_values  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


REMOTE_CSMS = f"""
import asyncio, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from chargepoint.csms import CentralSystem
async def main():
    async with CentralSystem(port=int(sys.argv[1])) as cs:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        print(len(cs.received("MeterValues")), flush=True)
asyncio.run(main())
"""

#: ``--bare-csms``: a minimal central system that answers every CALL at once without the ocpp
#: library (no schema validation, no case conversion): measures what the charger alone can do.
BARE_CSMS = f"""
import asyncio, json, sys
from datetime import datetime, UTC
import websockets
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
count = 0
async def handler(ws):
    global count
    async for raw in ws:
        msg = json.loads(raw)
        if msg[0] != 2:
            continue
        action = msg[2]
        now = datetime.now(UTC).isoformat()
        answer = {{}}
        if action == "MeterValues":
            count += 1
        elif action == "BootNotification":
            answer = {{"status": "Accepted", "currentTime": now, "interval": 3600}}
        elif action == "Heartbeat":
            answer = {{"currentTime": now}}
        elif action in ("Authorize", "StopTransaction"):
            answer = {{"idTagInfo": {{"status": "Accepted"}}}}
        elif action == "StartTransaction":
            answer = {{"transactionId": 1, "idTagInfo": {{"status": "Accepted"}}}}
        await ws.send(json.dumps([3, msg[1], answer]))
async def main():
    async with websockets.serve(handler, "127.0.0.1", int(sys.argv[1]), subprotocols=["ocpp1.6"]):
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        print(count, flush=True)
asyncio.run(main())
"""


async def run(messages: int, profile: str | None, separate: bool, bare: bool = False) -> None:
    logging.basicConfig(level=logging.ERROR)
    state_dir = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    async with CentralSystem() as csms:
        config = simulated_config(
            charge_point_id="CP-BENCH", csms_url=csms.url, state_dir=state_dir, ev_reaction_s=0.0,
            ocpp_keys={"MeterValueSampleInterval": 0, "HeartbeatInterval": 3600},
        )  # fmt: skip
        controller = Controller(config, restart=lambda kind: None)
        await controller.start()
        await csms.wait_for(lambda: controller.boot_accepted, 10)
        bench = controller.build_context.shared["sim_bench"]  # type: ignore[union-attr]
        rt = controller.connectors[1]
        bench.ev(1).plug()
        bench.readers[0].present("BENCH")
        await csms.wait_for(lambda: rt.tx is not None and rt.tx.transaction_id is not None, 10)
        await csms.close()
        await csms.wait_for(lambda: controller.snapshot()["csms"] == "offline", 10)

        # Fill the queue the way the sampler does (event timestamps, no transactionId: substituted).
        assert controller.outbox is not None and controller.store is not None and rt.tx is not None
        reading = await rt.hw.meter.read()
        t0 = datetime.now(UTC)
        fill = time.perf_counter()
        with controller.store.batch("bench fill"):
            for i in range(messages):
                ts = t0 + timedelta(seconds=i)
                values = sampled_values(
                    reading, controller.keys.csl("MeterValuesSampledData"),  # type: ignore[union-attr]
                    context="Sample.Periodic", offered_a=32.0, phases=3,
                )  # fmt: skip
                payload = {"connectorId": 1, "meterValue": [{"timestamp": iso(ts), "sampledValue": values}]}
                controller.outbox.enqueue("MeterValues", payload, local_tx_id=rt.tx.local_id, created_at=ts)
        fill = time.perf_counter() - fill
        queued = len(controller.outbox)
        print(f"queued {queued} MeterValues offline in {fill:.1f} s (one commit)")

        # Safety reaction probe: pilot leaves C -> contactor open.
        reactions: list[float] = []
        opened: dict[str, float] = {}

        def on_timeline(kind: str, data: dict[str, Any]) -> None:
            if kind == "contactor" and not data["closed"]:
                opened["t"] = time.perf_counter()

        controller.listeners.append(on_timeline)
        stop_probe = asyncio.Event()

        async def probe() -> None:
            ev = bench.ev(1)
            while not stop_probe.is_set():
                await csms.wait_for(lambda: rt.hw.contactor.is_closed, 10)
                await asyncio.sleep(0.02)
                opened.pop("t", None)
                left = time.perf_counter()
                ev.suspend()
                while "t" not in opened:
                    await asyncio.sleep(0)
                reactions.append((opened["t"] - left) * 1000)
                await asyncio.sleep(0.02)
                ev.resume()

        profiler = cProfile.Profile() if profile else None
        probe_task = asyncio.create_task(probe())
        await asyncio.sleep(0.5)
        # The central system that comes back runs in its own process on the same port, as a real one
        # would (in this loop it would take half of the CPU the charger has).
        remote = None
        if separate:
            remote = await asyncio.create_subprocess_exec(
                sys.executable, "-c", BARE_CSMS if bare else REMOTE_CSMS, str(csms.port),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert remote.stdout is not None and remote.stdin is not None
            await remote.stdout.readline()
        else:
            await csms.start()
        assert controller.sender is not None
        await csms.wait_for(lambda: controller.sender.online, 30)  # type: ignore[union-attr]
        before = len(reactions)
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        while controller.outbox.head() is not None:
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - start
        if profiler:
            profiler.disable()
        during = reactions[before:]
        stop_probe.set()
        await asyncio.sleep(0.2)
        probe_task.cancel()
        if remote is not None:
            assert remote.stdout is not None and remote.stdin is not None
            remote.stdin.write(b"count\n")
            await remote.stdin.drain()
            delivered = int((await remote.stdout.readline()).decode().strip())
            remote.kill()
            await remote.wait()
        else:
            delivered = len(csms.received("MeterValues"))
        where = "in its own process" if separate else "in the charger's event loop"
        where = "bare, no ocpp library, in its own process" if bare else where
        print(f"replayed {queued} messages in {elapsed:.2f} s after reconnect: {queued / elapsed:.0f} messages/s; "
              f"central system ({where}) saw {delivered} MeterValues")  # fmt: skip
        if during:
            print(
                f"pilot left C -> contactor open during replay ({len(during)} samples): "
                f"p50 {statistics.median(during):.2f} ms, p99 {pct(during, 99):.2f} ms, max {max(during):.2f} ms"
            )
        await controller.stop()
        if profiler and profile:
            profiler.dump_stats(profile)
            pstats.Stats(profile).sort_stats("cumulative").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--profile", help="write a cProfile of the replay to this file and print the top")
    parser.add_argument(
        "--sync-validation",
        action="store_true",
        help="validate OCPP payloads on the loop (ocpp.messages.ASYNC_VALIDATION = False) instead of "
        "a thread hop per message: what link.py could choose",
    )
    parser.add_argument(
        "--bare-csms", action="store_true", help="answer with a minimal websocket server (the charger's own limit)"
    )
    parser.add_argument(
        "--same-loop", action="store_true", help="run the returning central system in the charger's event loop"
    )
    args = parser.parse_args()
    if args.sync_validation:
        import ocpp.messages

        ocpp.messages.ASYNC_VALIDATION = False
    asyncio.run(run(args.messages, args.profile, not args.same_loop or args.bare_csms, args.bare_csms))


if __name__ == "__main__":
    main()
