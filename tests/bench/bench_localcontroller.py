"""Benchmark of the local controller with many downstream boxes. Prints numbers; asserts nothing about time.

    python tests/bench/bench_localcontroller.py [--boxes 50] [--calls 2000]

(works from a checkout without installing the package: the repository root is put on sys.path)

The local controller runs as its own process (``chargepoint local-controller``), the central system
(chargepoint.csms) and N lightweight boxes (raw websocket OCPP clients) in this one. Measured:

1. forwarding latency added: Heartbeat round trips through the local controller minus direct round trips to
   the central system (p50/p99 of each; all boxes concurrently, and one call at a time).
2. arrival → all allocations updated: a box starts a transaction while every other box charges; time until
   every box has accepted its new allocation (follow_s = 0: the EV reaction wait excluded; add one meter
   interval for the measured-current path).
3. CPU (% of one core over the run) and memory (max RSS) of the local controller process.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
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

from chargepoint.csms import CentralSystem  # noqa: E402

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
        self.changed = asyncio.Event()
        self.n = 0

    async def reader(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if msg[0] == 2:
                if msg[2] == "SetChargingProfile":
                    prof = msg[3]["csChargingProfiles"]
                    if prof["stackLevel"] == 9:
                        self.limit = prof["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"]
                        self.changed.set()
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


async def connect(url: str, cp_id: str) -> Box:
    token = base64.b64encode(f"{cp_id}:{PASSWORD}".encode()).decode()
    ws = await websockets.connect(f"{url}/{cp_id}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                                  additional_headers={"Authorization": f"Basic {token}"})
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


async def main(n: int, calls: int) -> None:
    port = _free_port()
    async with CentralSystem() as cs:
        ids = [f"B{i:03d}" for i in range(n)]
        with tempfile.TemporaryDirectory() as tmp:
            cfg = Path(tmp) / "lc.toml"
            cfg.write_text(
                f'[local_controller]\nid = "LC-BENCH"\ncsms_url = "{cs.url}"\nlisten = "127.0.0.1:{port}"\n'
                f"site_limit_a = {8 * n}\nfollow_s = 0\nlease_s = 600\n"
                + "".join(f'[[local_controller.charge_points]]\nid = "{i}"\npassword = "{PASSWORD}"\n' for i in ids))
            lc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "chargepoint", "local-controller", "--config", str(cfg), "--state-dir",
                str(Path(tmp) / "state"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
                cwd=ROOT)
            assert lc.stdout is not None
            await lc.stdout.readline()
            cpu0, _ = _proc_times(lc.pid)
            t_start = time.perf_counter()
            url = f"ws://127.0.0.1:{port}"
            boxes = await asyncio.gather(*(connect(url, i) for i in ids))
            await asyncio.gather(*(b.call("BootNotification", {"chargePointVendor": "Bench",
                                                                "chargePointModel": "B"}) for b in boxes))
            await asyncio.sleep(2)
            # 1. forwarding latency
            direct = [await connect(cs.url, f"D{i:03d}") for i in range(min(n, 10))]
            per = max(1, calls // n)

            async def rtts(box: Box, k: int) -> list[float]:
                out = []
                for _ in range(k):
                    t = time.perf_counter()
                    await box.call("Heartbeat", {})
                    out.append((time.perf_counter() - t) * 1000)
                return out

            via = [x for r in await asyncio.gather(*(rtts(b, per) for b in boxes)) for x in r]
            base = [x for r in await asyncio.gather(*(rtts(b, per * n // len(direct)) for b in direct)) for x in r]
            seq_via = [x for b in boxes for x in await rtts(b, 10)]  # one call in flight at a time
            seq_base = [x for b in direct for x in await rtts(b, 50)]
            # 2. arrival → all allocations updated
            now = datetime.now(UTC).isoformat()
            charging = boxes[:-1]
            for i, b in enumerate(charging):
                await b.call("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging"})
                await b.call("StartTransaction", {"connectorId": 1, "idTag": f"T{i}", "meterStart": 0,
                                                  "timestamp": now})
            await asyncio.sleep(3)
            share_before = {b.id: b.limit for b in boxes}
            last = boxes[-1]
            for b in boxes:
                b.changed.clear()
            t0 = time.perf_counter()
            await last.call("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging"})
            await last.call("StartTransaction", {"connectorId": 1, "idTag": "LAST", "meterStart": 0, "timestamp": now})
            expect = round(8 * n / n, 1)

            def settled() -> bool:
                return all(b.limit is not None and abs(b.limit - expect) < 0.15 for b in boxes)

            while not settled() and time.perf_counter() - t0 < 30:
                await asyncio.sleep(0.005)
            arrival_s = time.perf_counter() - t0
            elapsed = time.perf_counter() - t_start
            cpu1, rss_kb = _proc_times(lc.pid)
            lc.terminate()
            await lc.wait()
    add50 = statistics.median(via) - statistics.median(base)
    add99 = pct(via, 0.99) - pct(base, 0.99)
    print(f"local controller with {n} boxes ({len(via)} forwarded Heartbeats, all boxes concurrently)")
    print(f"  round trip via LC   p50 {statistics.median(via):6.2f} ms  p99 {pct(via, 0.99):6.2f} ms")
    print(f"  round trip direct   p50 {statistics.median(base):6.2f} ms  p99 {pct(base, 0.99):6.2f} ms")
    print(f"  added by the LC     p50 {add50:6.2f} ms  p99 {add99:6.2f} ms   (goal p99 <= 5 ms)")
    s50 = statistics.median(seq_via) - statistics.median(seq_base)
    s99 = pct(seq_via, 0.99) - pct(seq_base, 0.99)
    print(f"  one call at a time: via LC p50 {statistics.median(seq_via):.2f} ms p99 {pct(seq_via, 0.99):.2f} ms,"
          f" direct p50 {statistics.median(seq_base):.2f} ms p99 {pct(seq_base, 0.99):.2f} ms,"
          f" added p50 {s50:.2f} ms p99 {s99:.2f} ms")
    print(f"  arrival -> all {n} allocations updated: {arrival_s * 1000:.0f} ms"
          f" (each box {share_before[boxes[0].id]} A -> {expect} A; settled: {settled()})")
    print(f"  LC process: CPU {100 * (cpu1 - cpu0) / elapsed:.1f} % of one core over {elapsed:.1f} s "
          f"(busy phase incl.), max RSS {rss_kb / 1024:.1f} MB")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--boxes", type=int, default=50)
    ap.add_argument("--calls", type=int, default=2000)
    a = ap.parse_args()
    asyncio.run(main(a.boxes, a.calls))
