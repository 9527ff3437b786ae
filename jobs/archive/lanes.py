"""Lanes: time ranges of the due rows whose batches run side by side (spec.batch.parallelism).

The run splits the time from the oldest due row to the newest into lanes of equal length; each lane
works through its range on its own connections, and ends its batches on partition boundaries where a
whole partition fits. docs/design.md ("Batches side by side") gives the argument, and the figures for
what the scheduler keeps and what it dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any


@dataclass
class Lane:
    """A time range of the due rows that one stream of batches works through: [start, end).

    A run splits the due rows into lanes (spec.batch.parallelism) whose batches run at the same time,
    each on its own connections; None is open-ended. `resume_from` is where its next batch starts, and
    `until` where it should stop (a partition boundary, see aligned_batch_end), if anywhere.
    """

    start: datetime | None = None
    end: datetime | None = None
    resume_from: object = None
    until: datetime | None = None


def split_into_lanes(oldest: object, newest: object, count: int) -> list[Lane]:
    """`count` lanes of equal time between the oldest and the newest due timestamp; the first and the
    last are open-ended, so a row inserted with any timestamp during the run still falls in one of them."""
    start, end = as_utc(oldest), as_utc(newest)
    if count <= 1 or start is None or end is None or start >= end:
        return [Lane()]
    step = (end - start) / count
    bounds: list[datetime | None] = [None, *(start + step * i for i in range(1, count)), None]
    return [Lane(bounds[i], bounds[i + 1]) for i in range(count)]


def period_start(instant: datetime, partitioning: str) -> datetime:
    """The start of the (UTC) day, month or year an instant falls in: where a Daily, Monthly or Yearly partition
    begins."""
    day = instant.replace(hour=0, minute=0, second=0, microsecond=0)
    if partitioning == "Yearly":
        return day.replace(month=1, day=1)
    return day.replace(day=1) if partitioning == "Monthly" else day


def aligned_batch_end(first: object, last: object, rows: int, limit: int, partitioning: str) -> datetime | None:
    """Where a lane's next batch should stop so that it ends on a partition boundary, or None.

    The batch just taken held `rows` rows from `first` to `last`; at that density, the next `limit` rows
    reach some instant, and the next batch stops at the start of that instant's partition. A day (or
    month) then goes into one file instead of being cut by a batch edge into two, as long as it holds
    fewer rows than a batch. None when no whole partition fits (the batch's LIMIT cuts, as before).
    """
    start, end = as_utc(first), as_utc(last)
    if partitioning == "None" or rows < 2 or start is None or end is None or end <= start:
        return None
    seconds_per_row = (end - start).total_seconds() / (rows - 1)
    reach = end + timedelta(seconds=seconds_per_row * limit)
    boundary = period_start(reach, partitioning)
    return boundary if boundary > end else None


def as_utc(value: object) -> datetime | None:
    """A timestamp column's value as an instant: a date at midnight UTC, a timestamp without zone as UTC
    (how the batch statement compares them too: its transaction runs with TimeZone UTC)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return None


def jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value if isinstance(value, (int, float, bool)) or value is None else str(value)
