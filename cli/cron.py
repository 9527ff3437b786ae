"""The next run of a CronJob's schedule: the five fields Kubernetes reads, and its @-descriptors.

No dependency: the chart writes five plain fields (cellar.schedule in _helpers.tpl), and Kubernetes' own
parser (robfig/cron) is small enough to follow exactly: ranges, steps, lists, names, `?`, and the rule that
a day matches either day-of-month or day-of-week when both are restricted, both when either is `*`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTHS = {
    name: n
    for n, name in enumerate(("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1)
}
WEEKDAYS = {name: n for n, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
# (low, high, names) of minute, hour, day of month, month, day of week
FIELDS: tuple[tuple[int, int, dict[str, int]], ...] = (
    (0, 59, {}),
    (0, 23, {}),
    (1, 31, {}),
    (1, 12, MONTHS),
    (0, 6, WEEKDAYS),
)
SEARCH_DAYS = 366 * 5  # a yearly schedule runs within a year, 29 February within four; more: it never runs


class ScheduleError(ValueError):
    """A schedule this parser does not read (Kubernetes would have refused it too)."""


@dataclass(frozen=True)
class Schedule:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool  # day of month was `*` or `?`
    any_weekday: bool

    @classmethod
    def parse(cls, text: str) -> Schedule:
        expression = DESCRIPTORS.get(text.strip(), text.strip())
        parts = expression.split()
        if len(parts) != 5:
            raise ScheduleError(f"{text!r}: a schedule has five fields (minute hour day month weekday)")
        sets = [_field(part, *spec) for part, spec in zip(parts, FIELDS, strict=True)]
        weekdays = frozenset(0 if day == 7 else day for day in sets[4])
        return cls(sets[0], sets[1], sets[2], sets[3], weekdays, parts[2][0] in "*?", parts[4][0] in "*?")

    def day_matches(self, day: datetime) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week

    def next_after(self, moment: datetime, time_zone: str | None = None) -> datetime | None:
        """The first run strictly after `moment` (aware), in `time_zone` (IANA; None or '' is UTC), or None."""
        try:
            zone = ZoneInfo(time_zone or "UTC")
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ScheduleError(f"unknown time zone {time_zone!r}") from exc
        local = moment.astimezone(zone).replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = local.replace(hour=0, minute=0)
        for _ in range(SEARCH_DAYS):
            if self.day_matches(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        candidate = day.replace(hour=hour, minute=minute)
                        if candidate >= local:
                            return candidate
            day = (day + timedelta(days=1)).replace(hour=0, minute=0)
        return None


def _field(text: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        values |= _item(item, low, high, names)
    return frozenset(values)


def _item(item: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    span, _, step_text = item.partition("/")
    step = _number(step_text, names={}) if step_text else 1
    if step < 1:
        raise ScheduleError(f"{item!r}: a step is at least 1")
    if span in ("*", "?"):
        first, last = low, high
    elif "-" in span:
        start, end = span.split("-", 1)
        first, last = _number(start, names), _number(end, names)
    else:
        first = _number(span, names)
        last = high if step_text else first
    # Sunday may be written 7 in the day-of-week field.
    top = 7 if names is WEEKDAYS else high
    if not (low <= first <= last <= top):
        raise ScheduleError(f"{item!r}: outside {low}-{high}, or a range that runs backwards")
    return set(range(first, last + 1, step))


def _number(text: str, names: dict[str, int]) -> int:
    if text.upper() in names:
        return names[text.upper()]
    if not text.isdigit():
        raise ScheduleError(f"{text!r} is not a number")
    return int(text)
