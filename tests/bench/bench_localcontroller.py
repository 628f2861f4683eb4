"""Benchmark of the local controller with many downstream boxes. Prints numbers; asserts nothing about time.

    python tests/bench/bench_localcontroller.py [--boxes 50] [--seconds 30] [--every 2]

(works from a checkout without installing the package: the repository root is put on sys.path)

Three processes, as on a real site: the local controller (``chargepoint local-controller``), the central
system (chargepoint.csms in a process of its own) and the N boxes (raw websocket OCPP clients, this
process). The same boxes' traffic is sent once through the local controller and once straight to the
central system, so the difference is what the local controller adds. Measured:

1. steady load: every box sends a MeterValues (three phase currents, its transaction) every ``--every`` s at
   a random phase (a real box sends one every 60-900 s: this is 30-450 times that); round trips via the
   local controller and direct, p50/p99, and the local controller's CPU over that phase;
2. burst: all boxes send a Heartbeat at the same instant (the worst case: a site power-up, or a CSMS that
   triggers every box at once), 20 times;
3. idle: boxes connected and charging, no traffic: the local controller's CPU (the planner, leases);
4. arrival → all allocations updated: a box starts a transaction while every other box charges; time until
   every box has accepted its new allocation (follow_s = 0: the EV reaction wait excluded; add one meter
   interval for the measured-current path);
5. memory: the local controller's max RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import websockets  # noqa: E402

PASSWORD = "bench-password-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Box:
    def __init__(self, cp_id: str, ws: Any) -> None:
        self.id, self.ws = cp_id, ws
        self.waiting: dict[str, asyncio.Future[Any]] = {}
        self.limit: float | None = None
        self.n = 0
        self.tx: int | None = None

    async def reader(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if msg[0] == 2:
                if msg[2] == "SetChargingProfile":
                    prof = msg[3]["csChargingProfiles"]
                    if prof["stackLevel"] == 9:
                        self.limit = prof["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"]
                await self.ws.send(json.dumps([3, msg[1], {"status": "Accepted"}]))
            else:
                fut = self.waiting.pop(msg[1], None)
                if fut is not None:
                    fut.set_result(msg)

    async def call(self, action: str, payload: dict[str, Any]) -> Any:
        self.n += 1
        uid = f"{self.id}-{self.n}"
        fut = asyncio.get_running_loop().create_future()
        self.waiting[uid] = fut
        await self.ws.send(json.dumps([2, uid, action, payload]))
        return await asyncio.wait_for(fut, 30)

    async def timed(self, action: str, payload: dict[str, Any]) -> float:
        t = time.perf_counter()
        await self.call(action, payload)
        return (time.perf_counter() - t) * 1000

    def meter_values(self, amps: float) -> dict[str, Any]:
        now = datetime.now(UTC).isoformat()
        return {"connectorId": 1, "transactionId": self.tx, "meterValue": [{"timestamp": now, "sampledValue": [
            {"value": f"{amps:.1f}", "measurand": "Current.Import", "phase": p, "unit": "A"}
            for p in ("L1", "L2", "L3")] + [{"value": str(self.n * 10), "unit": "Wh"}]}]}


async def connect(url: str, cp_id: str) -> Box:
    token = base64.b64encode(f"{cp_id}:{PASSWORD}".encode()).decode()
    ws = await websockets.connect(f"{url}/{cp_id}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                  additional_headers={"Authorization": f"Basic {token}"}, max_queue=None)
    box = Box(cp_id, ws)
    asyncio.create_task(box.reader())
    return box


def _proc_times(pid: int) -> tuple[float, int]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    return cpu, rss


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


class CpuWindow:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu0, _ = _proc_times(pid)
        self.t0 = time.perf_counter()

    def percent(self) -> float:
        cpu, _ = _proc_times(self.pid)
        return 100 * (cpu - self.cpu0) / (time.perf_counter() - self.t0)


async def steady(boxes: list[Box], seconds: float, every: float, seed: int) -> list[float]:
    """Each box sends MeterValues every ``every`` s at its own random phase; the round trips in ms."""
    rng = random.Random(seed)
    out: list[float] = []

    async def one(box: Box, phase: float) -> None:
        await asyncio.sleep(phase)
        t_end = time.perf_counter() + seconds
        nxt = time.perf_counter()
        while nxt < t_end:
            out.append(await box.timed("MeterValues", box.meter_values(8.0)))
            nxt += every
            await asyncio.sleep(max(0.0, nxt - time.perf_counter()))

    await asyncio.gather(*(one(b, rng.uniform(0, every)) for b in boxes))
    return out


async def burst(boxes: list[Box], rounds: int) -> list[float]:
    out: list[float] = []
    for _ in range(rounds):
        out += await asyncio.gather(*(b.timed("Heartbeat", {}) for b in boxes))
        await asyncio.sleep(0.5)
    return out


async def start_transactions(boxes: list[Box]) -> None:
    now = datetime.now(UTC).isoformat()
    for i, b in enumerate(boxes):
        await b.call("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging"})
        ans = await b.call("StartTransaction", {"connectorId": 1, "idTag": f"T{b.id}{i}", "meterStart": 0,
                                                "timestamp": now})
        b.tx = ans[2]["transactionId"]


def line(name: str, via: list[float], direct: list[float]) -> str:
    return (f"  {name:<10} via LC p50 {statistics.median(via):5.2f} p99 {pct(via, 0.99):6.2f} ms | direct p50 "
            f"{statistics.median(direct):5.2f} p99 {pct(direct, 0.99):6.2f} ms | added p50 "
            f"{statistics.median(via) - statistics.median(direct):5.2f} p99 {pct(via, 0.99) - pct(direct, 0.99):6.2f}"
            f" ms  ({len(via)} calls)")


async def serve_csms() -> None:
    """The central system's process: prints its URL, runs until stdin closes."""
    from chargepoint.csms import CentralSystem

    async with CentralSystem() as cs:
        print(cs.url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def main(n: int, seconds: float, every: float, profile: str | None = None) -> None:
    port = _free_port()
    csms = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve-csms", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        cwd=ROOT)
    assert csms.stdout is not None and csms.stdin is not None
    csms_url = (await csms.stdout.readline()).decode().strip()
    ids = [f"B{i:03d}" for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "lc.toml"
        cfg.write_text(
            f'[local_controller]\nid = "LC-BENCH"\ncsms_url = "{csms_url}"\nlisten = "127.0.0.1:{port}"\n'
            f"site_limit_a = {8 * n}\nfollow_s = 0\nlease_s = 600\n"
            + "".join(f'[[local_controller.charge_points]]\nid = "{i}"\npassword = "{PASSWORD}"\n' for i in ids))
        prof = ["-m", "cProfile", "-o", profile] if profile else []
        lc = await asyncio.create_subprocess_exec(
            sys.executable, *prof, "-m", "chargepoint", "local-controller", "--config", str(cfg), "--state-dir",
            str(Path(tmp) / "state"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd=ROOT)
        assert lc.stdout is not None
        await lc.stdout.readline()
        url = f"ws://127.0.0.1:{port}"
        boxes = await asyncio.gather(*(connect(url, i) for i in ids))
        direct = await asyncio.gather(*(connect(csms_url, f"D{i:03d}") for i in range(n)))
        for group in (boxes, direct):
            await asyncio.gather(*(b.call("BootNotification", {"chargePointVendor": "Bench", "chargePointModel": "B"})
                                   for b in group))
        charging = boxes[:-1]
        await start_transactions(charging)
        await start_transactions(direct[:-1])
        await asyncio.sleep(3)  # allocations settle

        # 1. steady load
        cpu = CpuWindow(lc.pid)
        via_steady = await steady(charging, seconds, every, seed=1)
        steady_cpu = cpu.percent()
        direct_steady = await steady(direct[:-1], seconds, every, seed=1)
        # 2. burst
        via_burst = await burst(boxes, 20)
        direct_burst = await burst(direct, 20)
        # 3. idle
        cpu = CpuWindow(lc.pid)
        await asyncio.sleep(min(seconds, 20))
        idle_cpu = cpu.percent()
        # 4. arrival → all allocations updated
        last = boxes[-1]
        share_before = charging[0].limit
        t0 = time.perf_counter()
        await last.call("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging"})
        await last.call("StartTransaction", {"connectorId": 1, "idTag": "LAST", "meterStart": 0,
                                             "timestamp": datetime.now(UTC).isoformat()})
        expect = 8.0

        def settled() -> bool:
            return all(b.limit is not None and abs(b.limit - expect) < 0.15 for b in boxes)

        while not settled() and time.perf_counter() - t0 < 30:
            await asyncio.sleep(0.005)
        arrival_s = time.perf_counter() - t0
        _, rss_kb = _proc_times(lc.pid)
        lc.terminate()
        await lc.wait()
    csms.stdin.close()
    await csms.wait()
    rate = len(charging) / every
    print(f"local controller with {n} boxes (LC, central system and boxes in three processes)")
    print(f"  steady load: {len(charging)} charging boxes, one MeterValues each every {every:g} s ({rate:.0f} msg/s)")
    print(line("steady", via_steady, direct_steady) + "   (goal: added p99 <= 5 ms)")
    print(line("burst", via_burst, direct_burst) + f"   (all {n} at the same instant)")
    print(f"  LC CPU: {steady_cpu:.1f} % of one core under the steady load, {idle_cpu:.1f} % idle "
          f"(goal <= 10 %); max RSS {rss_kb / 1024:.1f} MB (goal <= 100 MB)")
    print(f"  arrival -> all {n} allocations updated: {arrival_s * 1000:.0f} ms"
          f" (each box {share_before} A -> {expect} A; settled: {settled()})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--boxes", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--every", type=float, default=2.0)
    ap.add_argument("--profile", help="run the local controller under cProfile, stats to this file")
    ap.add_argument("--serve-csms", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    asyncio.run(serve_csms() if a.serve_csms else main(a.boxes, a.seconds, a.every, a.profile))
