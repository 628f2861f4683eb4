"""Off-peak schedule (pure): windows across midnight and DST, the randomised delay, override, overlaps."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from chargepoint.energy.schedule import OffPeakSchedule, Window, overlaps, parse_days, parse_window

BERLIN = ZoneInfo("Europe/Berlin")
LONDON = ZoneInfo("Europe/London")


def _local(tz: ZoneInfo, *args: int) -> datetime:
    return datetime(*args, tzinfo=tz).astimezone(UTC)  # type: ignore[misc]


def _sched(*windows: str, tz: str = "Europe/Berlin", delay: float = 600.0, r: float = 0.5) -> OffPeakSchedule:
    return OffPeakSchedule([parse_window(w) for w in windows], tz=tz, random_delay_s=delay, rand=lambda: r)


def test_parse_windows_and_days() -> None:
    w = parse_window("mon-fri 22:00-06:00")
    assert w.days == frozenset(range(5)) and w.start == time(22) and w.end == time(6)
    assert parse_days("sat,sun") == frozenset({5, 6}) and parse_days("daily") == frozenset(range(7))
    assert parse_window("01:00-05:00").days == frozenset(range(7))
    for bad in ("mon-fri 22-06", "moon 22:00-06:00", "fri-mon 22:00-06:00", "22:00"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_weekday_window_across_midnight() -> None:
    s = _sched("mon-fri 22:00-06:00", delay=0)
    # Friday 2024-03-08 23:30 is inside; Saturday 05:59 still (the Friday window); Saturday 22:30 not
    assert s.in_window(_local(BERLIN, 2024, 3, 8, 23, 30))
    assert s.in_window(_local(BERLIN, 2024, 3, 9, 5, 59))
    assert not s.in_window(_local(BERLIN, 2024, 3, 9, 6, 0))
    assert not s.in_window(_local(BERLIN, 2024, 3, 9, 22, 30))
    assert not s.in_window(_local(BERLIN, 2024, 3, 10, 23, 0))  # Sunday
    assert s.in_window(_local(BERLIN, 2024, 3, 11, 22, 0))  # Monday 22:00 opens
    assert not s.in_window(_local(BERLIN, 2024, 3, 11, 21, 59))
    assert s.in_window(_local(BERLIN, 2024, 3, 11, 0, 30)) is False  # Monday 00:30: Sunday had no window


def test_sunday_window_wraps_into_monday() -> None:
    s = _sched("sun 23:00-02:00", delay=0)
    assert s.in_window(_local(BERLIN, 2024, 3, 11, 1, 0))  # Monday 01:00, from Sunday


def _open_hours(s: OffPeakSchedule, start: datetime, hours: int) -> float:
    """Real (UTC) hours the window is open in [start, start + hours), minute resolution."""
    minutes = sum(1 for m in range(hours * 60) if s.in_window(start + timedelta(minutes=m)))
    return minutes / 60


def test_dst_spring_forward_night_is_an_hour_shorter_and_fall_back_an_hour_longer() -> None:
    s = _sched("daily 22:00-06:00", delay=0)
    # Europe/Berlin: 2024-03-31 02:00 → 03:00; 2024-10-27 03:00 → 02:00
    assert _open_hours(s, _local(BERLIN, 2024, 3, 30, 12, 0), 24) == 7
    assert _open_hours(s, _local(BERLIN, 2024, 10, 26, 12, 0), 24) == 9
    assert _open_hours(s, _local(BERLIN, 2024, 3, 23, 12, 0), 24) == 8


def test_a_window_starting_in_the_skipped_hour_opens_at_the_first_existing_minute() -> None:
    s = _sched("sun 02:30-04:00", delay=0)
    # 2024-03-31 01:59 CET → 03:00 CEST: 02:30 never exists
    assert not s.in_window(_local(BERLIN, 2024, 3, 31, 1, 59))
    first = datetime(2024, 3, 31, 1, 0, tzinfo=UTC)  # = 03:00 CEST
    assert s.in_window(first)
    assert s.next_start(_local(BERLIN, 2024, 3, 31, 1, 0)) == first


def test_the_random_delay_applies_at_every_window_start() -> None:
    s = _sched("mon-fri 22:00-06:00", delay=600, r=0.25)  # 150 s
    before = _local(BERLIN, 2024, 3, 11, 21, 59)
    c = s.claim(before)
    assert c is not None and c.amps is None and "off-peak only" in c.detail and "next Mon 22:00" in c.detail
    start = _local(BERLIN, 2024, 3, 11, 22, 0)
    c = s.claim(start)
    assert c is not None and c.amps is None and "randomised delay at the window start" in c.detail
    assert "150 s" in c.detail and "reg. 11" in c.detail
    assert s.claim(start + timedelta(seconds=149)) is not None
    assert s.claim(start + timedelta(seconds=150)) is None  # charging may start
    assert s.claim(_local(BERLIN, 2024, 3, 12, 3, 0)) is None
    assert s.claim(_local(BERLIN, 2024, 3, 12, 6, 0)) is not None  # closed again
    # the next evening: a fresh delay
    nxt = _local(BERLIN, 2024, 3, 12, 22, 0)
    c = s.claim(nxt)
    assert c is not None and "at the window start" in c.detail


def test_the_random_delay_is_drawn_from_the_range() -> None:
    draws = iter([0.0, 0.999])
    s = OffPeakSchedule([parse_window("daily 00:00-00:00")], tz="UTC", random_delay_s=600, rand=lambda: next(draws))
    now = datetime(2024, 1, 1, tzinfo=UTC)
    assert s.power_restored(now) == 0.0
    assert s.power_restored(now) == pytest.approx(599.4)


def test_power_restore_inside_a_window_delays_the_start() -> None:
    s = _sched("daily 22:00-06:00", delay=600, r=0.5)
    now = _local(BERLIN, 2024, 3, 12, 23, 0)
    assert s.claim(now) is None  # the first evaluation inside: no window start was seen
    assert s.power_restored(now) == 300
    c = s.claim(now + timedelta(seconds=10))
    assert c is not None and "after a power restore" in c.detail
    assert s.claim(now + timedelta(seconds=300)) is None


def test_override_now_and_back() -> None:
    s = _sched("mon-fri 22:00-06:00")
    noon = _local(BERLIN, 2024, 3, 12, 12, 0)
    assert s.claim(noon) is not None
    s.override(True)
    assert s.overridden and s.claim(noon) is None
    s.override(False)
    assert s.claim(noon) is not None


def test_london_time_zone_is_used() -> None:
    s = _sched("daily 00:00-07:00", tz="Europe/London", delay=0)
    assert s.in_window(_local(LONDON, 2024, 7, 1, 6, 30))  # 05:30 UTC
    assert not s.in_window(_local(LONDON, 2024, 7, 1, 7, 30))


def test_overlaps_are_named() -> None:
    assert overlaps([parse_window("mon-fri 22:00-06:00")]) == []
    assert overlaps([parse_window("mon-fri 22:00-06:00"), parse_window("sat,sun 08:00-12:00")]) == []
    found = overlaps([parse_window("mon-fri 22:00-06:00"), parse_window("tue 05:00-07:00")])
    assert found == ["Mon 22:00–06:00 overlaps Tue 05:00–07:00"]
    # 20 hours every day: each day's window ends before the next one starts
    assert overlaps([parse_window("daily 12:00-08:00")]) == []
    # Sunday into Monday wraps around the week
    assert overlaps([parse_window("sun 22:00-06:00"), parse_window("mon 05:00-06:00")]) == [
        "Sun 22:00–06:00 overlaps Mon 05:00–06:00"]
    assert overlaps([Window(frozenset({0}), time(1), time(3)), Window(frozenset({0}), time(2), time(4))])


def test_no_windows_means_never() -> None:
    s = OffPeakSchedule([], tz="UTC", random_delay_s=0, rand=lambda: 0.0)
    c = s.claim(datetime(2024, 1, 1, tzinfo=UTC))
    assert c is not None and "no window" in c.detail
