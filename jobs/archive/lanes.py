"""Lanes: time ranges of the due rows whose batches run side by side (spec.batch.parallelism).

The run splits the due rows into lanes by the timestamp column's statistics, aligns a lane's batch
ends to partition boundaries, and lets a lane that runs out of rows take over half of another's.
docs/design.md ("Batches side by side") gives the argument and the figures.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from jobs.archive.settings import Tuning

log = logging.getLogger(__name__)


@dataclass
class Lane:
    """A time range of the due rows that one stream of batches works through: [start, end).

    A run splits the due rows into lanes (spec.batch.parallelism) whose batches run at the same time,
    each on its own connections; None is open-ended. `resume_from` is where its next batch starts, and
    `until` where it should stop (a partition boundary, see aligned_batch_end), if anywhere. A lane that
    runs out of rows takes over part of another (LaneBoard.take_over), which moves that one's `end`.
    """

    start: datetime | None = None
    end: datetime | None = None
    resume_from: object = None
    until: datetime | None = None
    last_batch_span: timedelta | None = None  # from its last batch's oldest row to its newest


def split_into_lanes(
    oldest: object, newest: object, count: int, histogram: Sequence[object] = (), *, bounds_per_lane: int = 4
) -> list[Lane]:
    """`count` lanes between the oldest and the newest due timestamp; the first and the last are
    open-ended, so a row inserted with any timestamp during the run still falls in one of them.

    `histogram`: the column's histogram bounds from ANALYZE (pg_stats), each bucket holding about as
    many rows. When enough of them fall among the due rows, lanes get about as many buckets each, so a
    table that grew over time does not leave most rows to the newest lane; else lanes of equal time.
    """
    start, end = as_utc(oldest), as_utc(newest)
    if count <= 1 or start is None or end is None or start >= end:
        return [Lane()]
    inside = sorted(b for b in (as_utc(v) for v in histogram) if b is not None and start < b < end)
    inner: list[datetime]
    if len(inside) >= bounds_per_lane * count:
        inner = [inside[len(inside) * i // count] for i in range(1, count)]
    else:
        step = (end - start) / count
        inner = [start + step * i for i in range(1, count)]
    bounds: list[datetime | None] = [None, *inner, None]
    return [Lane(bounds[i], bounds[i + 1]) for i in range(count)]


def period_start(instant: datetime, partitioning: str) -> datetime:
    """The start of the (UTC) day or month an instant falls in: where a Daily or Monthly partition begins."""
    day = instant.replace(hour=0, minute=0, second=0, microsecond=0)
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


class LaneBoard:
    """The lanes of a run while they go, and the one move between them: taking over (see take_over)."""

    def __init__(
        self, lanes: Sequence[Lane], histogram_bounds: Sequence[datetime], cutoff: datetime, tuning: Tuning
    ) -> None:
        self._lock = threading.Lock()
        self._running = list(lanes)
        self._histogram_bounds = list(histogram_bounds)
        self._cutoff = cutoff
        self._tuning = tuning

    def take_over(self, finished: Lane) -> Lane | None:
        """A lane with nothing left takes the later half of what the lane with the most time left has.

        Lanes are split at the start by the whole table's statistics, so a filter, or rows that bunch up
        in one lane's range, can leave one lane most of the work; without this the run would go at one
        lane's speed once the others are done. Taking over is safe whatever the timing: a batch of the
        other lane already in flight keeps its rows locked (SKIP LOCKED passes them) and deletes them.
        """
        with self._lock:
            self._running = [lane for lane in self._running if lane is not finished]  # not by value
            best: tuple[timedelta, Lane, datetime, datetime] | None = None
            for lane in self._running:
                resumed = as_utc(lane.resume_from)
                if resumed is None or lane.last_batch_span is None:
                    continue  # no batch yet: nothing to judge its pace by
                end = lane.end or self._cutoff
                left = end - resumed
                if left > self._tuning.batches_left_to_split * lane.last_batch_span and (
                    best is None or left > best[0]
                ):
                    best = (left, lane, resumed, end)
            if best is None:
                return None
            _, lane, resumed, end = best
            # The rule that split the run into lanes, on what is left: half of the rows by the statistics
            # when they say enough about that range, else half of the time.
            middle = split_into_lanes(
                resumed, end, 2, self._histogram_bounds, bounds_per_lane=self._tuning.histogram_bounds_per_lane
            )[0].end
            assert middle is not None  # end > resumed: two lanes
            taken = Lane(start=middle, end=lane.end)
            lane.end = middle
            self._running.append(taken)
        log.info(
            "lane split",
            extra={"kept": [jsonable(resumed), jsonable(middle)], "taken": [jsonable(middle), jsonable(taken.end)]},
        )
        return taken
