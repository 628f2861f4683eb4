"""Benchmark of the state store and outbox.  Prints numbers; asserts nothing.

    python tests/bench/bench_store.py [--hours 3] [--no-loop]

1. Persisted events per second with synchronous (FULL) commits: one event = the meter register
   update plus the queued MeterValues message in one commit (``Store.batch``), and separately the
   removal once the central system answered.
2. Bytes written per hour of charging at a 10 s sample interval, online (each sample queued and
   removed again) and offline (the hour's samples queue up, then drain on reconnect), for several
   page sizes.  Measured three ways:
     - sqlite: bytes this process passed to write(2) (/proc/self/io wchar; WAL frames + checkpoints)
     - page cache: /proc/self/io write_bytes (what the kernel will write back for us)
     - device: sectors written to a loop-mounted ext4 image incl. the file system journal
       (/sys/block/loopN/stat) — the closest to what an SD card sees.  Needs root + losetup;
       skipped otherwise.
   Goal from the issue: <= 5 MB per charging hour.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from chargepoint.protocol.outbox import Outbox  # noqa: E402
from chargepoint.store import Store  # noqa: E402

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
MB = 1_000_000
PAGE_SIZES = (512, 1024, 2048, 4096)


def meter_values(ts: datetime, wh: int) -> dict[str, object]:
    """A realistic 3-phase MeterValues.req (energy, power, 3 currents, 3 voltages)."""
    stamp = ts.strftime("%Y-%m-%dT%H:%M:%SZ")

    def sv(value: str, measurand: str, unit: str, phase: str | None = None) -> dict[str, str]:
        d = {
            "value": value,
            "context": "Sample.Periodic",
            "measurand": measurand,
            "unit": unit,
            "location": "Outlet",
        }
        if phase:
            d["phase"] = phase
        return d

    values = [sv(str(wh), "Energy.Active.Import.Register", "Wh"), sv("11040", "Power.Active.Import", "W")]
    values += [sv("16.0", "Current.Import", "A", p) for p in ("L1", "L2", "L3")]
    values += [sv("230.1", "Voltage", "V", p + "-N") for p in ("L1", "L2", "L3")]
    return {"connectorId": 1, "meterValue": [{"timestamp": stamp, "sampledValue": values}]}


def io_counters() -> dict[str, int]:
    out = {}
    with open("/proc/self/io") as f:
        for line in f:
            k, v = line.split(":")
            out[k] = int(v)
    return out


@contextmanager
def loop_ext4(size_mb: int = 64) -> Iterator[tuple[Path, str] | None]:
    """An ext4 file system on a loop device (like the SD card's root fs); None if not possible."""
    tmp = Path(tempfile.mkdtemp(prefix="bench_store_"))
    img, mnt = tmp / "img", tmp / "mnt"
    mnt.mkdir()
    dev = None
    try:
        with open(img, "wb") as f:
            f.truncate(size_mb * 1024 * 1024)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True, capture_output=True)
        dev = subprocess.run(
            ["losetup", "-f", "--show", str(img)], check=True, capture_output=True, text=True
        ).stdout.strip()
        subprocess.run(["mount", "-o", "data=ordered", dev, str(mnt)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"  (device-level measurement skipped: cannot set up a loop-mounted ext4: {exc})")
        if dev:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        yield None
        return
    try:
        yield mnt, Path(dev).name
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        subprocess.run(["losetup", "-d", dev], capture_output=True)
        img.unlink(missing_ok=True)


def sectors_written(devname: str) -> int:
    fields = Path(f"/sys/block/{devname}/stat").read_text().split()
    return int(fields[6]) * 512


def events_per_second(state: Path, n: int = 500) -> None:
    store = Store.open(state)
    outbox = Outbox(store)
    local = store.begin_transaction(1, "TAG", T0.isoformat(), 0)
    t = time.perf_counter()
    seqs = []
    for i in range(n):
        ts = T0 + timedelta(seconds=10 * i)
        stamp = ts.strftime("%Y-%m-%dT%H:%M:%SZ")
        seqs.append(
            outbox.enqueue(
                "MeterValues",
                meter_values(ts, i * 30),
                local,
                ts,
                with_store=lambda: store.update_meter(local, i * 30, stamp),  # noqa: B023
            )
        )
    t_sample = time.perf_counter() - t
    msgs = outbox.pending()
    t = time.perf_counter()
    for m in msgs:
        outbox.complete(m, {})
    t_remove = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(n):
        store.update_meter(local, i, "2026-11-24T10:00:00Z")
    t_meter = time.perf_counter() - t
    store.close()
    print(
        f"  sample (update_meter + enqueue MeterValues, one FULL commit): {n / t_sample:8.0f} /s"
        f"  ({t_sample / n * 1000:.2f} ms each)"
    )
    print(f"  remove after answer (FULL commit):                          {n / t_remove:8.0f} /s")
    print(f"  update_meter alone (FULL commit):                           {n / t_meter:8.0f} /s")


def charging_hours(state: Path, hours: int, page_size: int, offline: bool, devname: str | None) -> None:
    samples = 360 * hours
    store = Store.open(state, page_size=page_size)
    outbox = Outbox(store)
    os.sync()
    io0, dev0 = io_counters(), sectors_written(devname) if devname else 0
    local = store.begin_transaction(1, "TAG", T0.isoformat(), 0)
    start = outbox.enqueue(
        "StartTransaction",
        {"connectorId": 1, "idTag": "TAG", "meterStart": 0, "timestamp": "2026-11-24T10:00:00Z"},
        local,
        T0,
    )
    if not offline:
        outbox.complete(outbox.head(), {"transactionId": 1, "idTagInfo": {"status": "Accepted"}})  # type: ignore[arg-type]
    for i in range(1, samples + 1):
        ts = T0 + timedelta(seconds=10 * i)
        wh = i * 30
        stamp = ts.strftime("%Y-%m-%dT%H:%M:%SZ")
        outbox.enqueue(
            "MeterValues",
            meter_values(ts, wh),
            local,
            ts,
            with_store=lambda: store.update_meter(local, wh, stamp),  # noqa: B023
        )
        if not offline:
            outbox.complete(outbox.head(), {})  # type: ignore[arg-type]
    if offline:
        assert outbox.head() is not None and outbox.head().seq == start  # type: ignore[union-attr]
        for m in outbox.pending():
            outbox.complete(m, {"transactionId": 1} if m.seq == start else {})
    store.close()
    os.sync()
    io1 = io_counters()
    wchar = (io1["wchar"] - io0["wchar"]) / hours
    wbytes = (io1["write_bytes"] - io0["write_bytes"]) / hours
    line = (
        f"  page {page_size:5d} B, {'offline' if offline else 'online '}: sqlite write(2) "
        f"{wchar / MB:6.2f} MB/h, page cache {wbytes / MB:6.2f} MB/h"
    )
    if devname:
        dev = (sectors_written(devname) - dev0) / hours
        line += f", device incl. ext4 journal {dev / MB:6.2f} MB/h"
    db = state / "state.db"
    line += f"  (file {db.stat().st_size / 1024:.0f} KiB)"
    print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=int, default=2, help="simulated charging hours per run")
    ap.add_argument("--no-loop", action="store_true", help="skip the loop-mounted ext4 measurement")
    args = ap.parse_args()
    print(
        f"SQLite {__import__('sqlite3').sqlite_version}, Python {sys.version.split()[0]}, "
        f"samples every 10 s = 360 per charging hour, MeterValues payload "
        f"{len(str(meter_values(T0, 123456)))} chars"
    )
    with tempfile.TemporaryDirectory() as tmp:
        print("\n1. persisted events per second (state dir on", tmp, ")")
        events_per_second(Path(tmp) / "eps")
    print(f"\n2. bytes written per charging hour (average over {args.hours} h; goal <= 5 MB/h)")
    ctx = loop_ext4() if not args.no_loop and os.geteuid() == 0 else None
    if ctx is None:
        with tempfile.TemporaryDirectory() as tmp:
            for ps in PAGE_SIZES:
                for off in (False, True):
                    charging_hours(Path(tmp) / f"h{ps}{off}", args.hours, ps, off, None)
        return
    with ctx as where:
        if where is None:
            with tempfile.TemporaryDirectory() as tmp:
                for ps in PAGE_SIZES:
                    for off in (False, True):
                        charging_hours(Path(tmp) / f"h{ps}{off}", args.hours, ps, off, None)
            return
        mnt, dev = where
        print(f"  (state dir on a fresh ext4 loop device /dev/{dev})")
        for ps in PAGE_SIZES:
            for off in (False, True):
                charging_hours(mnt / f"h{ps}{off}", args.hours, ps, off, dev)


if __name__ == "__main__":
    main()
