"""Off-peak schedule with a randomised start delay (pure: time and the random source are arguments).

Weekly windows on the local wall clock of the configured time zone (zoneinfo), e.g. weekdays 22:00–06:00:
a window whose end is not after its start runs past midnight into the next day (its day is the day it
starts). Because the windows are wall-clock times, the spring-forward night is an hour shorter and the
fall-back night an hour longer, as a household's tariff is; a start inside the skipped hour opens at the
first wall-clock minute that exists after it.

Randomised delay: The Electric Vehicles (Smart Charge Points) Regulations 2021 (SI 2021/1467),
regulation 11 ("Randomised delay"; regulation 10 is the default off-peak charging mode and Schedule 1 is
security), require a charge point to apply a random delay, by default up to 600 seconds, so that many
chargers do not all switch on at the same instant when a tariff window opens or the power comes back.
A delay drawn uniformly from [0, ``random_delay_s``] is applied at every window start and after a power
restore (:meth:`OffPeakSchedule.power_restored`). The owner may override the schedule for the running
session (:meth:`override`), from the web UI, MQTT or a card.

The claim pauses the connector (amps None) outside the windows and during a delay; inside a window, or
with an override, there is no claim, so a central system's TxDefaultProfile still applies on top.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from chargepoint.energy import EnergyClaim

_HHMM = re.compile(r"[0-2][0-9]:[0-5][0-9]")

SOURCE = "schedule"
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEK_MIN = 7 * 1440
DEFAULT_RANDOM_DELAY_S = 600.0  # SI 2021/1467 reg. 11: up to 600 s by default


@dataclass(frozen=True)
class Window:
    """``days``: weekdays the window *starts* on (0 = Monday); ``end`` ≤ ``start`` runs past midnight
    (``end`` = ``start``: 24 hours)."""

    days: frozenset[int]
    start: time
    end: time

    def intervals(self) -> list[tuple[int, int]]:
        """Minute-of-week intervals [a, b) (b may exceed a week: it wraps to Monday)."""
        s = self.start.hour * 60 + self.start.minute
        e = self.end.hour * 60 + self.end.minute
        length = e - s if e > s else e + 1440 - s
        return [(d * 1440 + s, d * 1440 + s + length) for d in sorted(self.days)]

    def describe(self) -> str:
        return f"{_days_text(self.days)} {self.start:%H:%M}–{self.end:%H:%M}"


def _days_text(days: Iterable[int]) -> str:
    ds = sorted(days)
    if ds == list(range(5)):
        return "Mon–Fri"
    if ds == list(range(7)):
        return "daily"
    return ",".join(DAY_NAMES[d].capitalize() for d in ds)


def _split(a: int, b: int) -> list[tuple[int, int]]:
    if b <= WEEK_MIN:
        return [(a, b)]
    return [(a, WEEK_MIN), (0, b - WEEK_MIN)]


def overlaps(windows: Iterable[Window]) -> list[str]:
    """Pairs of windows (or days of one window) that cover the same minute, in words (for check-config)."""
    spans: list[tuple[int, int, str]] = []
    for w in windows:
        for a, b in w.intervals():
            label = f"{DAY_NAMES[a // 1440].capitalize()} {w.start:%H:%M}–{w.end:%H:%M}"
            spans.extend((x, y, label) for x, y in _split(a, b))
    spans.sort()
    out: list[str] = []
    for i, (a, b, la) in enumerate(spans):
        for c, d, lc in spans[i + 1:]:
            if c >= b:
                break
            if a < d and la != lc:
                out.append(f"{la} overlaps {lc}")
    return sorted(set(out))


def parse_days(text: str) -> frozenset[int]:
    """``"mon-fri"``, ``"sat,sun"``, ``"daily"`` → weekday numbers; ValueError for anything else."""
    t = text.strip().lower()
    if t in ("daily", "all", "mon-sun"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in t.split(","):
        part = part.strip()
        if "-" in part:
            a, _, b = part.partition("-")
            i, j = DAY_NAMES.index(a.strip()), DAY_NAMES.index(b.strip())
            if j < i:
                raise ValueError(part)
            days.update(range(i, j + 1))
        else:
            days.add(DAY_NAMES.index(part))
    return frozenset(days)


def parse_window(text: str) -> Window:
    """``"mon-fri 22:00-06:00"`` → Window; ValueError with what is wrong."""
    try:
        days_text, _, span = text.strip().rpartition(" ")
        start_text, _, end_text = span.partition("-")
        if not (_HHMM.fullmatch(start_text) and _HHMM.fullmatch(end_text)):
            raise ValueError(span)
        start, end = time.fromisoformat(start_text), time.fromisoformat(end_text)
        days = parse_days(days_text or "daily")
    except ValueError:
        raise ValueError(f"'DAYS HH:MM-HH:MM', e.g. 'mon-fri 22:00-06:00' (days: {', '.join(DAY_NAMES)}, "
                         "daily)") from None
    return Window(days, start.replace(second=0, microsecond=0), end.replace(second=0, microsecond=0))


class OffPeakSchedule:
    """Whether charging may run now; :meth:`claim` is evaluated with the current UTC time."""

    def __init__(self, windows: Iterable[Window], *, tz: str = "UTC", random_delay_s: float = DEFAULT_RANDOM_DELAY_S,
                 rand: Callable[[], float]) -> None:
        """``rand()`` returns a float in [0, 1) (random.Random().random; tests pass a fixed one)."""
        self.windows = list(windows)
        self.tz = ZoneInfo(tz)
        self.random_delay_s = random_delay_s
        self._rand = rand
        self._intervals = [x for w in self.windows for a, b in w.intervals() for x in _split(a, b)]
        self._was_open: bool | None = None
        self._delay_until: datetime | None = None
        self._delay_reason = ""
        self._override = False
        self._next: tuple[datetime, datetime | None] | None = None  # (computed at, result)

    # ------------------------------------------------------------------ queries
    def in_window(self, now: datetime) -> bool:
        local = now.astimezone(self.tz)
        m = local.weekday() * 1440 + local.hour * 60 + local.minute
        return any(a <= m < b for a, b in self._intervals)

    def next_start(self, now: datetime) -> datetime | None:
        """The next UTC instant a window opens (minute resolution, searched a week ahead)."""
        if not self._intervals:
            return None
        if self._next is not None and self._next[0] <= now and (self._next[1] is None or now < self._next[1]):
            return self._next[1]
        found = self._search(now)
        self._next = (now, found)
        return found

    def _search(self, now: datetime) -> datetime | None:
        t = now.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        was = self.in_window(now)
        for _ in range(WEEK_MIN + 120):
            cur = self.in_window(t)
            if cur and not was:
                return t
            was = cur
            t += timedelta(minutes=1)
        return None

    # ------------------------------------------------------------------ commands
    def power_restored(self, now: datetime) -> float:
        """The charger (re)started: a fresh random delay before anything starts. Returns it in seconds."""
        return self._draw(now, "after a power restore")

    def override(self, on: bool = True) -> None:
        """"Charge now": ignore the schedule and any delay until :meth:`override` (False) / session end."""
        self._override = on

    @property
    def overridden(self) -> bool:
        return self._override

    # ------------------------------------------------------------------ the claim
    def claim(self, now: datetime) -> EnergyClaim | None:
        is_open = self.in_window(now)
        if is_open and self._was_open is False:
            self._draw(now, "at the window start")
        self._was_open = is_open
        if self._override:
            return None
        if self._delay_until is not None and now < self._delay_until:
            left = (self._delay_until - now).total_seconds()
            until = self._delay_until.astimezone(self.tz)
            return EnergyClaim(None, SOURCE, f"randomised delay {self._delay_reason}: {left:.0f} s more, until "
                                             f"{until:%H:%M:%S} (SI 2021/1467 reg. 11)")
        if is_open:
            return None
        nxt = self.next_start(now)
        when = f"next {nxt.astimezone(self.tz):%a %H:%M}" if nxt else "no window"
        return EnergyClaim(None, SOURCE, f"off-peak only ({'; '.join(w.describe() for w in self.windows)}), {when}")

    def _draw(self, now: datetime, reason: str) -> float:
        delay = self._rand() * self.random_delay_s
        self._delay_until = now + timedelta(seconds=delay)
        self._delay_reason = reason
        return delay
