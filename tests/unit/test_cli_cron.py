"""The next run of a CronJob schedule (cli/cron.py), against dates worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cli.cron import Schedule, ScheduleError

NOW = datetime(2026, 12, 6, 21, 30, 15, tzinfo=UTC)  # a Sunday


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("17 3 * * *", "2026-12-07T03:17"),  # the chart's @daily, spread by name
        ("17 * * * *", "2026-12-06T22:17"),
        ("31 21 * * *", "2026-12-06T21:31"),
        ("30 21 * * *", "2026-12-07T21:30"),  # the current minute has begun: the next is tomorrow's
        ("*/15 * * * *", "2026-12-06T21:45"),
        ("0 0 * * 0", "2026-12-13T00:00"),
        ("0 0 * * 7", "2026-12-13T00:00"),  # 7 is Sunday too
        ("0 9 * * MON-FRI", "2026-12-07T09:00"),
        ("0 0 1 * *", "2027-01-01T00:00"),
        ("0 0 1 JAN *", "2027-01-01T00:00"),
        ("0 0 29 2 *", "2028-02-29T00:00"),
        ("0 0 13 * 5", "2026-12-11T00:00"),  # both restricted: the 13th or a Friday
        ("0 0 13 * *", "2026-12-13T00:00"),
        ("0 0 ? * 3", "2026-12-09T00:00"),
        ("@hourly", "2026-12-06T22:00"),
        ("@weekly", "2026-12-13T00:00"),
        ("5,10 1-2 * * *", "2026-12-07T01:05"),
    ],
)
def test_the_next_run_is_the_first_matching_minute_after_now(schedule: str, expected: str) -> None:
    upcoming = Schedule.parse(schedule).next_after(NOW)
    assert upcoming is not None
    assert upcoming.strftime("%Y-%m-%dT%H:%M") == expected


def test_a_time_zone_moves_the_wall_clock_not_the_schedule() -> None:
    upcoming = Schedule.parse("0 2 * * *").next_after(NOW, "Europe/Berlin")
    assert upcoming is not None
    assert upcoming.astimezone(UTC).strftime("%Y-%m-%dT%H:%M") == "2026-12-07T01:00"


def test_a_date_that_never_comes_has_no_next_run() -> None:
    assert Schedule.parse("0 0 31 2 *").next_after(NOW) is None


@pytest.mark.parametrize("schedule", ["* * * *", "61 * * * *", "5-1 * * * *", "*/0 * * * *", "x * * * *"])
def test_what_kubernetes_refuses_is_refused(schedule: str) -> None:
    with pytest.raises(ScheduleError):
        Schedule.parse(schedule)


def test_an_unknown_time_zone_is_refused() -> None:
    with pytest.raises(ScheduleError):
        Schedule.parse("0 0 * * *").next_after(NOW, "Mars/Olympus")
