"""Benchmark of the smart-charging hot paths (plain script; prints numbers, asserts nothing).

    python tests/bench/bench_smart.py

1. composite_schedule for 24 h with 3 purposes x 10 stack levels x 48 periods on 2 connectors
   (goal p50 <= 2 ms per connector schedule);
2. balance() for 8 connectors (goal <= 0.5 ms);
3. limit_at / next_change on the same profile set (what the controller's timer calls).
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from chargepoint.smart import (  # noqa: E402
    CHARGE_POINT_MAX,
    TX_DEFAULT,
    TX_PROFILE,
    ChargingProfile,
    ChargingSchedule,
    ChargingSchedulePeriod,
    ConnectorDemand,
    InstalledProfiles,
    ProfileLimits,
    balance,
    composite_schedule,
    limit_at,
    next_change,
)

T0 = datetime(2024, 3, 4, tzinfo=UTC)
LIMITS = ProfileLimits(max_stack_level=10, max_periods=48, max_profiles_installed=1000)


def build(worst: bool = False) -> InstalledProfiles:
    """3 purposes x 10 stack levels x 48 periods. Higher stack levels have a duration and start later
    so every level shows through somewhere. `worst`: stack level 0 has a duration too, so no layer is
    ever fully covered and every profile of every layer is evaluated."""
    ip = InstalledProfiles()
    pid = 0
    for purpose, connectors in ((CHARGE_POINT_MAX, (0,)), (TX_DEFAULT, (1, 2)), (TX_PROFILE, (1, 2))):
        for connector in connectors:
            for stack in range(10):
                pid += 1
                periods = tuple(ChargingSchedulePeriod(i * 1800, 6 + (i * 7 + stack * 3 + pid) % 26)
                                for i in range(48))
                kind = "Recurring" if stack % 3 == 0 else "Absolute" if stack % 3 == 1 else "Relative"
                start = None if kind == "Relative" else T0 + timedelta(minutes=37 * stack)
                ip.install(connector, ChargingProfile(
                    charging_profile_id=pid, stack_level=stack, purpose=purpose, kind=kind,
                    recurrency_kind="Daily" if kind == "Recurring" else None,
                    schedule=ChargingSchedule("A" if stack % 2 else "W", periods,
                                              (40000 - 2000 * stack) if worst else None if stack == 0 else 86400 - 3000 * stack,
                                              start),
                ), LIMITS)
    return ip


def timeit(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def report(name: str, ms: list[float], goal: float | None = None) -> None:
    ms = sorted(ms)
    p50, p95 = statistics.median(ms), ms[int(len(ms) * 0.95) - 1]
    verdict = "" if goal is None else f"  (goal <= {goal:.2f} ms: {'met' if p50 <= goal else 'MISSED'})"
    print(f"{name:58s} p50 {p50:7.3f} ms  p95 {p95:7.3f} ms  max {ms[-1]:7.3f} ms{verdict}")


def main() -> None:
    start = T0 + timedelta(hours=5, minutes=13)
    tx = T0 + timedelta(hours=4)
    for worst, unit in ((False, "A"), (False, "W"), (True, "A")):
        ip = build(worst)
        label = f"unit {unit}{', no full cover' if worst else ''}"

        def one_conn(unit: str = unit, ip: InstalledProfiles = ip) -> None:
            composite_schedule(ip, 1, start, 86400, unit, tx_start=tx, tx_id=1, voltage=230, phases=3,
                               default_limit_a=32)

        def both(unit: str = unit, ip: InstalledProfiles = ip) -> None:
            for c in (1, 2):
                composite_schedule(ip, c, start, 86400, unit, tx_start=tx, tx_id=1, voltage=230, phases=3,
                                   default_limit_a=32)
        for _ in range(20):
            both()
        report(f"composite 24 h, 1 connector, {label}", timeit(one_conn, 300), 2.0)
        report(f"composite 24 h, both connectors, {label}", timeit(both, 200), 2.0)
    print(f"{len(ip)} profiles installed")
    cs = composite_schedule(ip, 1, start, 86400, "A", tx_start=tx, tx_id=1, voltage=230, phases=3,
                            default_limit_a=32)
    print(f"  (composite has {len(cs.periods)} periods)")
    report("limit_at", timeit(lambda: limit_at(ip, 1, start, tx_start=tx, tx_id=1, voltage=230, phases=3),
                              500))
    report("next_change (8-day horizon)", timeit(
        lambda: next_change(ip, 1, start, tx_start=tx, tx_id=1, voltage=230, phases=3), 100))

    now = T0 + timedelta(hours=12)
    demands = [
        ConnectorDemand(connector_id=i, wants_power=i != 3, composite_limit_a=None if i % 2 else 20.0,
                        min_current_a=6.0, max_current_a=32.0, measured_a=None if i == 5 else 4.0 + i,
                        offered_a=None if i in (6, 7) else 10.0,
                        waiting_since=now - timedelta(minutes=i) if i in (6, 7) else None,
                        served_since=now - timedelta(minutes=3 * i))
        for i in range(1, 9)
    ]
    for _ in range(200):
        balance(40, demands, now)
    report("balance, 8 connectors, contended (40 A)", timeit(lambda: balance(40, demands, now), 5000), 0.5)
    report("balance, 8 connectors, plenty (200 A)", timeit(lambda: balance(200, demands, now), 5000), 0.5)


if __name__ == "__main__":
    main()
