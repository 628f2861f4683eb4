"""Benchmark of the real hardware drivers against the test emulators. Prints numbers; asserts nothing.

    python tests/bench/bench_drivers.py [--cycles 20] [--seconds 20]

(works from a checkout without installing the package: the repository root is put on sys.path)

1. Meter poll cycle over Modbus RTU at 9600 baud: one full SDM630 read (2 requests), measured over a
   socat pty pair (a pty does not pace bytes at 9600 baud), next to the bus time computed for a real
   RS-485 line at 9600 baud 8N1 (10 bits per byte, 3.5 character silent interval per frame) plus the
   configured request gap.
2. CPU share of all real drivers polling at their default rates: Pi pilot (50 Hz MCP3008 sampling via
   gpiozero's *mock* software SPI -- far more work than the kernel spidev on a Pi, so an upper bound),
   OpenEVSE RAPI board (GS poll 1 s + SY heartbeat), SDM630 over RTU read once a second (the
   controller's rate while charging), RDM6300 reader, GPIO contactor/lock/RCM (edge driven) and, if
   pcscd + vpcd are installed, the PC/SC reader. Emulators run in a child process so that only the
   drivers' CPU time is counted. Goal: <= 3 % of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hal.registry import BuildContext, build  # noqa: E402
from tests.fakes.vpcd_card import (  # noqa: E402
    VPCD_DRIVER,
    VPCD_PORT,
    pcscd_command,
    tcp_listeners,
    vpcd_reader_conf,
    wait_own_netns,
)

BAUD = 9600


def rtu_bus_time_s(blocks: list[int], gap_s: float, baud: int = BAUD) -> float:
    """Wire time of reading ``blocks`` (register counts): request 8 bytes, reply 5 + 2n bytes."""
    char_s = 10.0 / baud  # start + 8 data + stop bits
    silent_s = 3.5 * char_s
    total = 0.0
    for n in blocks:
        total += (8 + 5 + 2 * n) * char_s + 2 * silent_s
    return total + gap_s * (len(blocks) - 1)


def socat_pair(tmp: Path, name: str) -> tuple[subprocess.Popen[bytes], str, str]:
    a, b = str(tmp / f"{name}A"), str(tmp / f"{name}B")
    proc = subprocess.Popen(["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while not (os.path.exists(a) and os.path.exists(b)):
        if time.monotonic() > deadline:
            raise RuntimeError("socat did not start")
        time.sleep(0.01)
    return proc, a, b


# ---------------------------------------------------------------- emulator child process


async def serve(meter_port: str, rapi_port: str) -> None:
    from tests.fakes.modbus_meters import image, serve_rtu, sim_device
    from tests.fakes.rapi_board import RapiBoardEmulator

    fc, regs = image("sdm630")
    emu = RapiBoardEmulator(rapi_port)
    async with serve_rtu(meter_port, [sim_device(1, fc, regs)], baudrate=BAUD):
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    emu.close()


# ---------------------------------------------------------------- benchmarks


async def bench_meter(meter_port: str, cycles: int) -> None:
    from hal.modbus import ModbusMeter

    print(f"1. SDM630 full read over Modbus RTU, {BAUD} baud (socat pty), {cycles} cycles")
    for gap_ms in (100.0, 0.0):
        meter = build("meter", {"driver": "modbus", "model": "sdm630", "port": meter_port, "baudrate": BAUD,
                                "request_gap_ms": gap_ms}, "m", 1, BuildContext())
        assert isinstance(meter, ModbusMeter)
        await meter.start(lambda e: None)
        await meter.read()  # connect
        times = []
        for _ in range(cycles):
            t0 = time.perf_counter()
            await meter.read()
            times.append(time.perf_counter() - t0)
        blocks = [count for _, _, count, _ in meter.model.blocks()]
        await meter.stop()
        print(f"   request_gap_ms={gap_ms:5.0f}: {len(blocks)} requests {blocks} registers; measured "
              f"p50 {statistics.median(times) * 1000:6.1f} ms, max {max(times) * 1000:6.1f} ms; computed for "
              f"a real 9600 baud line: {rtu_bus_time_s(blocks, gap_ms / 1000) * 1000:6.1f} ms + meter turnaround")


async def bench_cpu(tmp: Path, meter_port: str, rapi_port: str, rdm_port: str, seconds: float) -> None:
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    from tests.fakes.gpio_rig import FakeContactor, FakeLockMotor, FakeRcm
    from tests.fakes.mcp3008 import FakeMCP3008
    from tests.test_hal_pilot_pwm import make_sysfs, set_cp

    factory = MockFactory()
    Device.pin_factory = factory
    FakeContactor(factory)
    FakeLockMotor(factory)
    FakeRcm(factory)
    adc = FakeMCP3008(pin_factory=factory)
    set_cp(adc, 9.0)
    make_sysfs(tmp / "sys")
    ctx = BuildContext(gpio_pin_factory=factory)
    devices = [
        build("pilot", {"driver": "pwm", "sysfs_root": str(tmp / "sys")}, "c1.pilot", 1, ctx),
        build("contactor", {"driver": "gpio"}, "c1.contactor", 1, ctx),
        build("lock", {"driver": "gpio"}, "c1.lock", 1, ctx),
        build("rcm", {"driver": "gpio"}, "c1.rcm", 1, ctx),
        build("pilot", {"driver": "rapi", "port": rapi_port}, "c2.pilot", 2, ctx),
        build("contactor", {"driver": "rapi", "port": rapi_port}, "c2.contactor", 2, ctx),
        build("reader", {"driver": "rdm6300", "port": rdm_port}, "readers[0]", 0, ctx),
    ]
    meter = build("meter", {"driver": "modbus", "model": "sdm630", "port": meter_port, "baudrate": BAUD}, "c1.meter",
                  1, ctx)
    pcsc_note = "PC/SC reader not included (pcscd/vpcd/pyscard/unshare missing or not root)"
    pcscd = None
    if shutil.which("pcscd") and VPCD_DRIVER.exists() and shutil.which("unshare") and os.geteuid() == 0:
        with contextlib.suppress(ImportError):
            import smartcard.scard  # noqa: F401

            conf = tmp / "reader.conf.d"
            conf.mkdir()
            (conf / "vpcd").write_text(vpcd_reader_conf())
            # own network namespace: vpcd listens on 0.0.0.0 (see tests/fakes/vpcd_card.py)
            pcscd = subprocess.Popen(pcscd_command(conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            ready, deadline = False, time.monotonic() + 10
            while not ready and pcscd.poll() is None and time.monotonic() < deadline:
                ready = wait_own_netns(pcscd.pid, 0.5) and bool(tcp_listeners(pcscd.pid, VPCD_PORT))
                time.sleep(0.05)
            if ready:
                devices.append(build("reader", {"driver": "pcsc"}, "readers[1]", 0, ctx))
                pcsc_note = "PC/SC reader included (polling 250 ms; pcscd's own CPU reported separately)"
            else:
                pcsc_note = "PC/SC reader not included (pcscd with vpcd did not start in its own network namespace)"
                pcscd.kill()
                pcscd.wait()
                pcscd = None
    events: list[object] = []
    for d in devices + [meter]:
        await d.start(events.append)
    await devices[4].offer(16)

    async def meter_loop() -> None:
        while True:
            await meter.read()
            await asyncio.sleep(1.0)

    task = asyncio.create_task(meter_loop())
    await asyncio.sleep(1.0)  # warm-up
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    th0 = _threads_cpu()
    p0 = _proc_cpu(pcscd.pid) if pcscd else None
    await asyncio.sleep(seconds)
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    th1 = _threads_cpu()
    p1 = _proc_cpu(pcscd.pid) if pcscd else None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    pilot = devices[0]
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(f"2. CPU of all drivers at default rates over {t1 - t0:.1f} s: {cpu / (t1 - t0) * 100:.2f} % of one core "
          f"(goal <= 3 %)")
    print(f"   pilot samples: {pilot.samples / (t1 - t0 + 1.0):.0f}/s incl. warm-up; RAPI commands: "
          f"{devices[4].board.commands_sent}; meter requests: {meter.bus.requests}; {pcsc_note}")
    share = {k: (v - th0.get(k, 0.0)) / (t1 - t0) * 100 for k, v in th1.items()}
    print("   by thread: " + ", ".join(f"{k} {v:.2f} %" for k, v in sorted(share.items(), key=lambda kv: -kv[1])
                                       if v >= 0.01))
    if p0 is not None and p1 is not None:
        print(f"   pcscd (separate process): {(p1 - p0) / (t1 - t0) * 100:.2f} % of one core")
    for d in reversed(devices + [meter]):
        await d.stop()
    if pcscd:
        pcscd.terminate()
        pcscd.wait(5)


def _threads_cpu() -> dict[str, float]:
    """CPU seconds per Python thread (Linux /proc/self/task), keyed by thread name."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            name = names.get(int(task.name), "other (executor, pymodbus)")
            if name.startswith(("asyncio_", "ThreadPoolExecutor")):
                name = "executor workers (to_thread)"
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        procs = []
        try:
            sm, meter_client, meter_server = socat_pair(tmp, "meter")
            sr, rapi_client, rapi_server = socat_pair(tmp, "rapi")
            sd, rdm_client, rdm_server = socat_pair(tmp, "rdm")
            procs += [sm, sr, sd]
            child = subprocess.Popen([sys.executable, __file__, "--serve", meter_server, rapi_server],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            procs.append(child)
            assert child.stdout is not None
            if child.stdout.readline().strip() != b"ready":
                raise RuntimeError("emulators did not start")
            await bench_meter(meter_client, args.cycles)
            await bench_cpu(tmp, meter_client, rapi_client, rdm_client, args.seconds)
        finally:
            for p in reversed(procs):
                with contextlib.suppress(Exception):
                    if p.stdin:
                        p.stdin.close()
                    p.terminate()
                    p.wait(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--serve", nargs=2, metavar=("METER_PTY", "RAPI_PTY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(*args.serve))
        return
    if shutil.which("socat") is None:
        sys.exit("socat is required (apt-get install socat)")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
