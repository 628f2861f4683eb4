"""Web UI benchmarks (print numbers; no assertions). Goals from issue 14: status page first load ≤ 100 ms on
loopback, live update ≤ 200 ms after the event, the reaction benchmark (pilot leaves C → contactor open)
p99 ≤ 2 ms with the UI open in a browser.

1. First load: GET / (logged in) and its two static files, n times, over loopback.
2. Live update latency: a change in the station → the ``snapshot`` event at an SSE client (what the page's
   EventSource receives), p50/p99.
3. Reaction with a live page open: bench_core's reaction loop while an SSE client (or, with --browser, a
   headless Debian chromium on the status page) follows every change.

Against the real controller (simulated hardware, loopback central system) when chargepoint.api has its
implementation; parts 1–2 fall back to the unit tests' fake API otherwise, and say so.

Run: python tests/bench/bench_web.py [--loads 200] [--updates 200] [--events 400] [--browser]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aiohttp import ClientSession, CookieJar  # noqa: E402

from chargepoint.config import simulated_config  # noqa: E402
from chargepoint.controller import Controller  # noqa: E402
from chargepoint.csms import CentralSystem  # noqa: E402
from chargepoint.frontends.web.server import WebServer, station_api  # noqa: E402
from hal.interfaces import FaultKind  # noqa: E402
from tests.web_fakes import FakeApi  # noqa: E402
from tests.web_helpers import ADMIN_PW, web_config  # noqa: E402


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def line(name: str, vals: list[float], goal: str) -> None:
    print(f"  {name:28s} n={len(vals):4d}  p50 {statistics.median(vals):7.2f} ms  p99 {pct(vals, 99):7.2f} ms  "
          f"max {max(vals):7.2f} ms   ({goal})")


async def logged_in(http: ClientSession, base: str) -> None:
    text = await (await http.get(base + "/login")).text()
    token = re.search(r'name="csrf" content="([^"]+)"', text).group(1)  # type: ignore[union-attr]
    resp = await http.post(base + "/login", data={"csrf": token, "password": ADMIN_PW}, allow_redirects=False)
    assert resp.status == 303, "login failed"


async def first_load(base: str, n: int) -> None:
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        await logged_in(http, base)
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            for path in ("/", "/static/style.css", "/static/app.js"):
                async with http.get(base + path, allow_redirects=False) as r:
                    assert r.status == 200, (path, r.status)
                    await r.read()
            samples.append((time.perf_counter() - t0) * 1000)
    line("status page + css + js", samples, "goal ≤ 100 ms")


async def sse_reader(http: ClientSession, base: str, seen: list[float], ready: asyncio.Event) -> None:
    async with http.get(base + "/events") as resp:
        buf = b""
        async for chunk in resp.content.iter_any():
            buf += chunk
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if event.startswith(b"event: snapshot"):
                    seen.append(time.perf_counter())
                    ready.set()


async def live_latency(base: str, n: int, poke) -> None:  # type: ignore[no-untyped-def]
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as http:
        await logged_in(http, base)
        seen: list[float] = []
        ready = asyncio.Event()
        task = asyncio.create_task(sse_reader(http, base, seen, ready))
        await ready.wait()
        samples = []
        for i in range(n):
            await asyncio.sleep(0.15)  # beyond the 100 ms coalescing window: each event is a fresh one
            count = len(seen)
            t0 = time.perf_counter()
            await poke(i)
            while len(seen) == count:
                await asyncio.sleep(0.0005)
            samples.append((seen[count] - t0) * 1000)
        task.cancel()
    line("event → snapshot at client", samples, "goal ≤ 200 ms")


async def with_fake(args: argparse.Namespace) -> None:
    api = FakeApi()
    server = WebServer(api, web_config())
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    print("web UI over the FAKE api (chargepoint.api has no implementation in this build):")

    async def poke(i: int) -> None:
        api.update(1, power_w=float(i))

    await first_load(base, args.loads)
    await live_latency(base, args.updates, poke)
    await server.stop()


async def with_controller(args: argparse.Namespace) -> bool:
    with tempfile.TemporaryDirectory() as state:
        async with CentralSystem() as cs:
            cfg = simulated_config(charge_point_id="BENCH", csms_url=cs.url, state_dir=state, ev_reaction_s=0.0,
                                   ocpp_keys={"MeterValueSampleInterval": 0})
            c = Controller(cfg)
            try:
                api = station_api(c)
            except RuntimeError as exc:
                print(f"real controller: skipped ({exc})")
                return False
            await c.start()
            await cs.wait_for(lambda: c.boot_accepted, 10)
            server = WebServer(api, web_config())
            await server.start()
            base = f"http://127.0.0.1:{server.port}"
            bench = c.build_context.shared["sim_bench"]
            mqtt_cm = broker = None
            if args.mqtt:  # MQTT publishing to a real mosquitto on loopback, as the setting asks
                from tests.mqtt_helpers import Mosquitto, running_frontend

                broker = Mosquitto(Path(state) / "mosquitto")
                broker.start()
                mqtt_cm = running_frontend(api, broker)
                await mqtt_cm.__aenter__()
                print("  (MQTT front end publishing to mosquitto on 127.0.0.1)")
            ev = bench.ev(1)
            print("web UI over the controller (simulated hardware, loopback central system):")
            await first_load(base, args.loads)

            async def poke(i: int) -> None:
                ev.plug() if i % 2 == 0 else ev.unplug()

            await live_latency(base, args.updates, poke)
            ev.unplug()
            # 3. reaction while a live page follows
            contactor = bench.contactors[1]
            opened_at: list[float] = []
            original_open = contactor.open

            async def timed_open() -> None:
                opened_at.append(time.perf_counter())
                await original_open()

            contactor.open = timed_open  # type: ignore[method-assign]
            http = ClientSession(cookie_jar=CookieJar(unsafe=True))
            await logged_in(http, base)
            seen: list[float] = []
            ready = asyncio.Event()
            follower = asyncio.create_task(sse_reader(http, base, seen, ready))
            await ready.wait()
            driver_cm = None
            if args.browser:
                from tests.web_browser import browser, log_in

                driver_cm = browser()
                driver = driver_cm.__enter__()
                await asyncio.to_thread(log_in, driver, base, ADMIN_PW)
            ev.plug()
            bench.readers[0].present("BENCH1")
            await cs.wait_for(lambda: contactor.is_closed, 10)
            samples: list[float] = []
            for i in range(args.events):
                await cs.wait_for(lambda: contactor.is_closed, 10)
                opened_at.clear()
                t0 = time.perf_counter()
                if i % 4 == 3:
                    bench.inject(1, FaultKind.OVERCURRENT)
                else:
                    ev.suspend()
                await cs.wait_for(lambda: opened_at, 5)
                samples.append((opened_at[0] - t0) * 1000)
                bench.clear(1, FaultKind.OVERCURRENT) if i % 4 == 3 else ev.resume()
            follower.cancel()
            await http.close()
            if driver_cm is not None:
                driver_cm.__exit__(None, None, None)
            line("reaction, live page open" + (" (chromium)" if args.browser else "")
                 + (" + MQTT" if args.mqtt else ""), samples, "goal p99 ≤ 2 ms; compare bench_core.py")
            print(f"  live snapshots the page received meanwhile: {len(seen)}")
            ev.unplug()
            if args.idle_s > 0:  # idle: a page following the live stream, MQTT connected, nothing happening
                http2 = ClientSession(cookie_jar=CookieJar(unsafe=True))
                await logged_in(http2, base)
                follower = asyncio.create_task(sse_reader(http2, base, seen, asyncio.Event()))
                await asyncio.sleep(1.0)
                t_cpu, t_wall = time.process_time(), time.perf_counter()
                await asyncio.sleep(args.idle_s)
                cpu = time.process_time() - t_cpu
                minutes = (time.perf_counter() - t_wall) / 60
                follower.cancel()
                await http2.close()
                print(f"  idle CPU, page open{' + MQTT' if args.mqtt else ''}: {cpu / minutes:.2f} CPU-s/min "
                      "(process incl. the embedded CSMS; goal ≤ 1 CPU-s/min)")
            import resource

            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"  peak RSS of this process (controller + CSMS + web{' + MQTT' if args.mqtt else ''}"
                  f"{' + selenium client' if args.browser else ''}): {rss:.0f} MB (goal ≤ 70 MB)")
            if mqtt_cm is not None:
                await mqtt_cm.__aexit__(None, None, None)
            if broker is not None:
                broker.stop()
            await server.stop()
            await c.stop()
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loads", type=int, default=200)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--browser", action="store_true", help="also keep a headless chromium on the page")
    parser.add_argument("--mqtt", action="store_true", help="also publish to a mosquitto on 127.0.0.1")
    parser.add_argument("--idle-s", type=float, default=30.0, help="idle CPU measurement (0: skip)")
    args = parser.parse_args()
    if not asyncio.run(with_controller(args)):
        asyncio.run(with_fake(args))


if __name__ == "__main__":
    main()
