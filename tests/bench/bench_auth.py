"""Benchmark of the pure authorization model. Prints numbers; asserts nothing about time.

    python tests/bench/bench_auth.py [--entries 10000] [--lookups 10000] [--repeat 5]

(works from a checkout without installing the package: the repository root is put on sys.path)

1. SendLocalList Full with N entries: time to validate and build the new list (persistence excluded).
   Goal: well under 1 s on a Raspberry Pi.
2. decide() latency over M lookups against a list of N entries and a full cache (p50/p99/max).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from chargepoint.auth import (  # noqa: E402
    AuthCache,
    AuthConfig,
    IdTagInfo,
    LocalAuthList,
    apply_send_local_list,
    decide,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
STATUSES = ["Accepted"] * 8 + ["Blocked", "Expired"]


def make_entries(n: int, rng: random.Random) -> list[dict]:
    entries = []
    for i in range(n):
        info: dict = {"status": rng.choice(STATUSES)}
        if i % 3 == 0:
            info["expiryDate"] = (
                (NOW + timedelta(days=rng.randint(-10, 300))).isoformat().replace("+00:00", "Z")
            )
        if i % 4 == 0:
            info["parentIdTag"] = f"GROUP{i % 50:03d}"
        entries.append({"idTag": f"{i:014X}", "idTagInfo": info})
    return entries


def pct(sorted_values: list[float], p: float) -> float:
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--lookups", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cache-size", type=int, default=1_000)
    args = ap.parse_args()
    rng = random.Random(1)

    entries = make_entries(args.entries, rng)
    times = []
    new_list: LocalAuthList | None = None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        status, new_list = apply_send_local_list(
            LocalAuthList(),
            1,
            "Full",
            entries,
            max_length=args.entries,
            send_max_length=args.entries,
            enabled=True,
        )
        times.append(time.perf_counter() - t0)
        assert status == "Accepted"
    assert new_list is not None and len(new_list) == args.entries
    print(f"SendLocalList Full, {args.entries} entries, validate+build ({args.repeat} runs):")
    print(f"  min {min(times) * 1000:.1f} ms  median {statistics.median(times) * 1000:.1f} ms  "
          f"max {max(times) * 1000:.1f} ms")  # fmt: skip

    diff = entries[: min(len(entries), 500)]
    t0 = time.perf_counter()
    status, _ = apply_send_local_list(
        new_list, 2, "Differential", diff, max_length=args.entries, send_max_length=args.entries, enabled=True
    )
    print(f"SendLocalList Differential, {len(diff)} entries on {args.entries}: "
          f"{(time.perf_counter() - t0) * 1000:.1f} ms ({status})")  # fmt: skip

    cache = AuthCache(args.cache_size)
    for i in range(args.cache_size):
        cache.update(f"C{i:013X}", apply_info(i), NOW - timedelta(minutes=1))
    tags = [e["idTag"] for e in entries] + [f"C{i:013X}" for i in range(args.cache_size)]
    tags += [f"UNKNOWN{i}" for i in range(len(tags) // 10)]
    config = AuthConfig(
        local_pre_authorize=True, local_authorize_offline=True, allow_offline_tx_for_unknown_id=False
    )
    lat = []
    outcomes: dict[str, int] = {}
    for i in range(args.lookups):
        tag = rng.choice(tags)
        t0 = time.perf_counter()
        d = decide(tag, now=NOW, online=bool(i % 2), config=config, local_list=new_list, cache=cache)
        lat.append(time.perf_counter() - t0)
        outcomes[d.outcome] = outcomes.get(d.outcome, 0) + 1
    lat.sort()
    print(f"decide() over {args.lookups} lookups (list {args.entries}, cache {args.cache_size}):")
    print(f"  p50 {pct(lat, 50) * 1e6:.1f} us  p99 {pct(lat, 99) * 1e6:.1f} us  max {lat[-1] * 1e6:.1f} us  "
          f"outcomes {outcomes}")  # fmt: skip


def apply_info(i: int) -> IdTagInfo:
    return IdTagInfo("Accepted" if i % 5 else "Blocked", None, None)


if __name__ == "__main__":
    main()
