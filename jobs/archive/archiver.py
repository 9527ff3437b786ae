"""The batch loop, shaped by the guarantee in shared/reference/archiver.md.

One batch is one transaction: capture and delete the rows in one statement (by primary key,
FOR UPDATE SKIP LOCKED), encode exactly the returned rows, upload each object with a checksum and
verify it, record it in the ledger, COMMIT. A crash before COMMIT rolls the rows back and leaves an
object without a ledger row, which the next run deletes once it has checked that its rows are all
still in the table. Every row is always in the table, or in a verified object a committed ledger row
describes, or both; never in neither.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from botocore.exceptions import BotoCoreError, ClientError
from psycopg import sql

from common.errors import CellarError, InvalidSpec, PermanentError, RetryableError
from common.failpoints import failpoint
from common.reasons import Reason
from common.runtime import Interrupts
from common.storage import ObjectStore, translate_storage_error
from jobs.archive import ledger
from jobs.archive.encoding import (
    arrow_type,
    csv_to_table,
    decode,
    encode,
    key_range,
    repeating_columns,
    select_list,
)
from jobs.archive.settings import ArchiveSettings, live_changes, parse_archive_spec
from jobs.archive.standbys import StandbyGate
from jobs.archive.table import Column, TableInfo

log = logging.getLogger(__name__)
Connection = psycopg.Connection[tuple[object, ...]]
MANIFEST_FORMAT_VERSION = 1
UPLOAD_CONCURRENCY = 16
MAX_PARTITIONS_PER_BATCH = 64
SETTINGS_REREAD_SECONDS = 10.0  # how often a run reads its TableArchive again, between batches


def object_name(batch_id: str, number: int) -> str:
    return f"part-{batch_id}-{number:03d}"


def batch_of(object_key: str) -> str | None:
    """The batch id in an object's name (part-<batch id>-<n>.<ext>), or None for a foreign object."""
    name = object_key.rsplit("/", 1)[-1]
    if not name.startswith("part-"):
        return None
    stem = name.removeprefix("part-").split(".", 1)[0]
    return stem.rsplit("-", 1)[0] or None


class VerificationFailed(PermanentError):
    reason = Reason.VERIFICATION_FAILED


class ObjectLayout:
    """Where a table's objects and manifests live: data under `<schema>.<table>/` (hive-style
    partitions), manifests under `_cellar_manifests/` so query engines never read them as data."""

    def __init__(self, store: ObjectStore, settings: ArchiveSettings) -> None:
        self.store = store
        self.settings = settings
        self.data_prefix = store.key(settings.relation) + "/"
        self.manifest_prefix = store.key("_cellar_manifests", settings.relation) + "/"
        self.extension = ".parquet" if settings.format == "Parquet" else ".csv.gz"

    def data_key(self, partition: str | None, name: str) -> str:
        parts = [self.settings.relation, f"dt={partition}" if partition else "", f"{name}{self.extension}"]
        return self.store.key(*[p for p in parts if p])

    def manifest_key(self, name: str) -> str:
        return self.store.key("_cellar_manifests", self.settings.relation, f"{name}.json")


def sql_settings(conn: Connection, settings: ArchiveSettings, info: TableInfo) -> None:
    """Per-transaction settings that make every value's text form predictable and the batch bounded."""
    settings_sql = [
        sql.SQL("SET LOCAL lock_timeout = {}").format(
            sql.Literal(f"{int(settings.lock_timeout.total_seconds() * 1000)}ms")
        ),
        sql.SQL("SET LOCAL statement_timeout = {}").format(
            sql.Literal(f"{int(settings.statement_timeout.total_seconds() * 1000)}ms")
        ),
        sql.SQL("SET LOCAL TimeZone = 'UTC'"),
        sql.SQL("SET LOCAL DateStyle = 'ISO, YMD'"),
        sql.SQL("SET LOCAL extra_float_digits = 3"),
        sql.SQL("SET LOCAL bytea_output = 'hex'"),
        # A batch's statement is estimated costly enough for JIT compilation, which then costs more
        # server time than it saves on a few thousand rows.
        sql.SQL("SET LOCAL jit = off"),
    ]
    if not info.plain:
        settings_sql += [sql.SQL("SET LOCAL enable_hashjoin = off"), sql.SQL("SET LOCAL enable_mergejoin = off")]
    conn.execute(sql.SQL("; ").join(settings_sql))  # one round trip


def eligible_condition(
    settings: ArchiveSettings, info: TableInfo, cutoff: datetime, *, holds: bool = True
) -> sql.Composable:
    """`ts < cutoff`, the trusted filter, and not a row that unarchive brought back into the table."""
    ts = sql.Identifier(info.timestamp_column.name)
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in info.primary_key)
    parts: list[sql.Composable] = [sql.SQL("{} < {}").format(ts, sql.Literal(cutoff))]
    if settings.filter_sql:
        parts.append(sql.SQL("({})").format(sql.SQL(settings.filter_sql)))  # trusted by contract (CRD docs)
    if holds:
        # Two tests, not one anti-join: the first runs once per statement, so while no row of the table is
        # held the per-row look-up never runs. As a filter it also keeps the index scan's timestamp order,
        # so a batch reads about its own rows; planned as one anti-join, every batch read and sorted all
        # the rows still due (test_a_batch_reads_about_its_own_rows).
        parts.append(
            sql.SQL(
                "(NOT EXISTS (SELECT 1 FROM cellar.archive_holds WHERE relation = {relation}) OR "
                "NOT EXISTS (SELECT 1 FROM cellar.archive_holds h WHERE h.relation = {relation} "
                "AND h.key = ROW({keys})::text))"
            ).format(relation=sql.Literal(settings.relation), keys=keys)
        )
    return sql.SQL(" AND ").join(parts)


def table_name(settings: ArchiveSettings) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(settings.schema), sql.Identifier(settings.table))


@dataclass
class Lane:
    """A time range of the due rows that one stream of batches works through: [start, end).

    A run splits the due rows into lanes (spec.batch.parallelism) whose batches run at the same time,
    each on its own connections; None is open-ended. `resume_from` is where its next batch starts, and
    `until` where it should stop (a partition boundary, see aligned_batch_end), if anywhere. A lane that
    runs out of rows takes over part of another (Archiver._take_over), which moves that one's `end`.
    """

    start: datetime | None = None
    end: datetime | None = None
    resume_from: object = None
    until: datetime | None = None
    last_batch_span: timedelta | None = None  # from its last batch's oldest row to its newest


HISTOGRAM_BOUNDS_PER_LANE = 4  # fewer, and the statistics say too little about the due rows
BATCHES_LEFT_TO_SPLIT = 4  # a lane is split for an idle one only with at least this many batches' time left


def split_into_lanes(oldest: object, newest: object, count: int, histogram: Sequence[object] = ()) -> list[Lane]:
    """`count` lanes between the oldest and the newest due timestamp; the first and the last are
    open-ended, so a row inserted with any timestamp during the run still falls in one of them.

    `histogram`: the column's histogram bounds from ANALYZE (pg_stats), each bucket holding about as
    many rows. When enough of them fall among the due rows, lanes get about as many buckets each, so a
    table that grew over time does not leave most rows to the newest lane; else lanes of equal time.
    """
    start, end = _as_utc(oldest), _as_utc(newest)
    if count <= 1 or start is None or end is None or start >= end:
        return [Lane()]
    inside = sorted(b for b in (_as_utc(v) for v in histogram) if b is not None and start < b < end)
    inner: list[datetime]
    if len(inside) >= HISTOGRAM_BOUNDS_PER_LANE * count:
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
    start, end = _as_utc(first), _as_utc(last)
    if partitioning == "None" or rows < 2 or start is None or end is None or end <= start:
        return None
    seconds_per_row = (end - start).total_seconds() / (rows - 1)
    reach = end + timedelta(seconds=seconds_per_row * limit)
    boundary = period_start(reach, partitioning)
    return boundary if boundary > end else None


def _as_utc(value: object) -> datetime | None:
    """A timestamp column's value as an instant: a date at midnight UTC, a timestamp without zone as UTC
    (how the batch statement compares them too: its transaction runs with TimeZone UTC)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return None


def copy_out(query: sql.Composable) -> sql.Composed:
    """A query whose rows the server sends as CSV (one batch's statement is copy_out(batch_query(...)))."""
    return sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(query)


def batch_query(
    settings: ArchiveSettings,
    info: TableInfo,
    cutoff: datetime,
    limit: int,
    watermark: dict[str, Any] | None,
    lane: Lane | None = None,
    *,
    holds: bool = True,
) -> sql.Composed:
    """The query of one batch, within `lane`'s time range, from the lane's `resume_from` on.
    `holds`: whether cellar.archive_holds exists (a dry run creates nothing).

    A lane takes rows in (timestamp, key) order, so the rows before its `resume_from` (the newest
    timestamp of its previous batch) are gone, or locked by an application (SKIP LOCKED passed them).
    Starting the index scan there saves walking the index entries of every row deleted earlier in the
    run, which VACUUM has not removed yet: without it the time per batch grows with the rows archived.
    """
    ts = sql.Identifier(info.timestamp_column.name)
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in info.primary_key)
    order = sql.SQL("{}, {}").format(ts, keys)
    condition = eligible_condition(settings, info, cutoff, holds=holds)
    lane = lane or Lane()
    for bound, operator in ((lane.start, ">="), (lane.end, "<"), (lane.resume_from, ">="), (lane.until, "<")):
        if bound is not None:
            condition = sql.SQL("{} AND {} " + operator + " {}").format(condition, ts, sql.Literal(bound))
    if settings.mode == "Copy":  # noqa: SIM102 (the Copy branch continues below, after the window)
        if watermark is not None:
            key_types = [info.column(k).pg_type for k in info.primary_key]
            values = sql.SQL(", ").join(
                sql.SQL("{}::{}").format(sql.Literal(v), sql.SQL(t))
                for v, t in zip(watermark["key"], key_types, strict=True)
            )
            since = sql.SQL("{}::{}").format(sql.Literal(watermark["ts"]), sql.SQL(info.timestamp_column.pg_type))
            condition = sql.SQL("{} AND {} >= {} AND ROW({}, {}) > ROW({}, {})").format(
                condition, ts, since, ts, keys, since, values
            )
    if settings.partitioning != "None":
        # A batch writes one object per partition it touches: on a sparse table 10,000 rows can span
        # years of days, and a thousand uploads would hold the transaction open for seconds. Taking only
        # rows within MAX_PARTITIONS_PER_BATCH periods of the oldest due row bounds that.
        unit = "days" if settings.partitioning == "Daily" else "months"
        span = sql.SQL(f"interval '{MAX_PARTITIONS_PER_BATCH} {unit}'")
        # Move: the window starts at the oldest row no application holds locked, so locked rows never stall it.
        start = (
            "(SELECT min({ts}) FROM {table} WHERE {condition})"
            if settings.mode == "Copy"
            else "(SELECT {ts} FROM {table} WHERE {condition} ORDER BY {ts} LIMIT 1 FOR UPDATE SKIP LOCKED)"
        )
        condition = sql.SQL("{condition} AND {ts} < " + start + " + {span}").format(
            condition=condition, ts=ts, table=table_name(settings), span=span
        )
    if settings.mode == "Copy":
        return sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT {}").format(
            select_list(info.columns), table_name(settings), condition, order, sql.Literal(limit)
        )

    # One statement chooses the batch's rows, locks them, deletes exactly those and returns them.
    def locked(identity: sql.Composable, relation: sql.Composable) -> sql.Composed:
        return sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT {} FOR UPDATE SKIP LOCKED").format(
            identity, relation, condition, order, sql.Literal(limit)
        )

    if info.plain:
        # The rows this statement locked cannot move while it runs, so their ctids name exactly them: a
        # TID scan deletes them without a lookup in the key's index per row (docs/design.md has the
        # figure). ONLY: an inheritance child created meanwhile is not this table.
        only = sql.SQL("ONLY {}").format(table_name(settings))
        target = sql.SQL("{} WHERE ctid = ANY(ARRAY({}))").format(only, locked(sql.SQL("ctid"), only))
    else:
        # Partitioned and inherited tables, where a ctid is not unique: by key. sql_settings turns hash and
        # merge joins off for this transaction, so this is a nested loop over the key's unique index; a
        # hash join would read the whole table for every batch.
        target = sql.SQL("{} WHERE ({}) IN ({})").format(table_name(settings), keys, locked(keys, table_name(settings)))
    return sql.SQL("DELETE FROM {} RETURNING {}").format(target, select_list(info.columns))


def column_description(column: Column) -> dict[str, str]:
    """A column as a batch manifest records it: unarchive casts each value back to `type`."""
    described = {"name": column.name, "type": column.pg_type, "storedAs": str(arrow_type(column))}
    if column.generated:
        described["generated"] = "stored" if column.generated == "s" else "virtual"
    return described


def sort_batch(table: pa.Table, info: TableInfo) -> pa.Table:
    """A batch in (timestamp, key) order: partitions become contiguous slices and files sort by time."""
    order = [(info.timestamp_column.name, "ascending"), *((k, "ascending") for k in info.primary_key)]
    return table.sort_by(order)


def partitions(table: pa.Table, settings: ArchiveSettings, info: TableInfo) -> list[tuple[str | None, pa.Table]]:
    """Split a batch sorted by sort_batch into the hive partitions of its timestamps (a file holds one).

    Each partition is a zero-copy slice: the day (or month) of each row is floored and run-length
    encoded, so the work is one pass over the timestamps whatever the number of partitions.
    """
    if settings.partitioning == "None" or table.num_rows == 0:
        return [(None, table)]
    column = table.column(info.timestamp_column.name)
    if pa.types.is_timestamp(column.type):
        column = pc.cast(column, pa.timestamp("us"))  # UTC wall time for timestamptz
    daily = settings.partitioning == "Daily"
    runs = pc.run_end_encode(pc.floor_temporal(column.combine_chunks(), unit="day" if daily else "month"))
    result = []
    start = 0
    for end, period in zip(runs.run_ends.to_pylist(), runs.values.to_pylist(), strict=True):
        label = period.strftime("%Y-%m-%d" if daily else "%Y-%m")
        result.append((label, table.slice(start, end - start)))
        start = end
    return result


def split_by_size(table: pa.Table, max_bytes: int) -> list[pa.Table]:
    """Slices whose in-memory size stays under max_bytes (the encoded file is smaller still)."""
    size = max(1, table.nbytes)
    if size <= max_bytes or table.num_rows <= 1:
        return [table]
    pieces = -(-size // max_bytes)
    step = -(-table.num_rows // pieces)
    return [table.slice(offset, step) for offset in range(0, table.num_rows, step)]


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value if isinstance(value, (int, float, bool)) or value is None else str(value)


@dataclass
class BatchResult:
    rows: int = 0
    bytes: int = 0
    objects: int = 0
    transaction_seconds: float = 0.0


@dataclass
class RunTotals:
    rows: int = 0
    bytes: int = 0
    batches: int = 0
    objects: int = 0  # data files, manifests not counted
    longest_transaction_seconds: float = 0.0

    def add(self, result: BatchResult) -> None:
        self.rows += result.rows
        self.bytes += result.bytes
        self.objects += result.objects
        self.batches += 1 if result.rows else 0
        self.longest_transaction_seconds = max(self.longest_transaction_seconds, result.transaction_seconds)


@dataclass
class CapturedBatch:
    """Rows one open transaction has deleted (not yet committed), in (timestamp, key) order."""

    conn: Connection
    batch_id: str
    began: float
    table: pa.Table


def read_copy(conn: Connection, copy: psycopg.Copy) -> bytearray:
    """All the data of a COPY TO.

    The server sends one message per row. The rows libpq has already received are taken from it
    directly (get_copy_data without waiting), which costs less CPU per row than psycopg's read; when
    none is buffered, psycopg's read waits for the next one (and ends the COPY when it is the end).
    """
    pgconn = conn.pgconn
    data = bytearray()
    while True:
        size, buffered = pgconn.get_copy_data(1)
        if size > 0:
            data += buffered
            continue
        if size < 0:  # the end was buffered too: take the COPY's result, as psycopg's read would
            _finish_copy_out(conn)
            return data
        waited = copy.read()  # nothing buffered
        if not waited:
            return data
        data += waited


class Archiver:
    """Runs batches until nothing is due, the run time is up, or SIGTERM.

    In Move mode without a pause, the due rows are split by time into lanes (spec.batch.parallelism)
    that run side by side, and within a lane two batches overlap on two connections: while one
    batch's rows are encoded, uploaded and committed on the lane's publisher thread, the lane's next
    DELETE runs on its other connection. Every batch is still its own transaction that keeps the
    guarantee on its own; SKIP LOCKED and the lanes' disjoint time ranges keep batches' rows apart.
    Copy mode (each batch continues after the previous one's last row) and a configured pause run one
    batch at a time.
    """

    def __init__(
        self,
        conn: Connection,
        store: ObjectStore,
        settings: ArchiveSettings,
        info: TableInfo,
        cutoff: datetime,
        run_id: str,
        interrupts: Interrupts,
        on_progress: Callable[[int], None] = lambda _: None,
        open_connection: Callable[[], Connection] | None = None,
        reread_spec: Callable[[], Mapping[str, Any]] | None = None,
        on_standby_hold: Callable[[str | None], None] = lambda _: None,
    ) -> None:
        """`reread_spec` returns the resource's spec as it is now: its live fields (settings.LIVE_FIELDS)
        apply from the next batch on. `on_standby_hold`: see StandbyGate."""
        self.conn = conn
        self.store = store
        self.settings = settings
        self.info = info
        self.cutoff = cutoff
        self.run_id = run_id
        self.interrupts = interrupts
        self.on_progress = on_progress
        self.layout = ObjectLayout(store, settings)
        self.batch_rows = settings.batch_rows
        self.watermark = ledger.copy_watermark(conn, settings.relation) if settings.mode == "Copy" else None
        conn.rollback()
        # More connections let batches overlap: only in Move mode without a pause (see the class doc).
        self._open_connection = open_connection if settings.mode == "Move" and not settings.pause else None
        # A batch's objects (one per partition) upload side by side while its transaction is open.
        self._uploads = ThreadPoolExecutor(max_workers=UPLOAD_CONCURRENCY, thread_name_prefix="archive-upload")
        self._totals_lock = threading.Lock()
        self._lanes_lock = threading.Lock()  # guards _running_lanes and their bounds when one takes over
        self._running_lanes: list[Lane] = []
        self._histogram_bounds: list[datetime] = []  # the timestamp column's, from _lanes()
        self.standbys = StandbyGate(settings.max_replication_lag, on_standby_hold)
        self._reread_spec = reread_spec
        self._settings_lock = threading.Lock()  # one lane reads the spec again at a time
        self._settings_read_at = self._started = time.monotonic()
        self._last_settings_notice = ""

    def run(self) -> tuple[RunTotals, str]:
        """Batches until nothing is due, the run time is up, or SIGTERM; returns totals and why it stopped."""
        self._started = self._settings_read_at = time.monotonic()
        try:
            if self._open_connection is None:
                return self._run_one_at_a_time()
            return self._run_lanes(self._lanes(), self._open_connection)
        finally:
            self._uploads.shutdown(wait=True)

    def _lanes(self) -> list[Lane]:
        if self.settings.parallelism <= 1:
            return [Lane()]
        ts = sql.Identifier(self.info.timestamp_column.name)
        row = self.conn.execute(
            sql.SQL("SELECT min({ts}), max({ts}) FROM {table} WHERE {condition}").format(
                ts=ts,
                table=table_name(self.settings),
                condition=eligible_condition(self.settings, self.info, self.cutoff),
            )
        ).fetchone()
        self.conn.rollback()
        oldest, newest = row if row else (None, None)
        self._histogram_bounds = sorted(b for b in (_as_utc(v) for v in self._histogram()) if b is not None)
        lanes = split_into_lanes(oldest, newest, self.settings.parallelism, self._histogram_bounds)
        log.info(
            "lanes",
            extra={"lanes": [[_jsonable(lane.start), _jsonable(lane.end)] for lane in lanes]},
        )
        return lanes

    def _histogram(self) -> list[object]:
        """The timestamp column's histogram bounds from the last ANALYZE; none when never analyzed."""
        column = self.info.timestamp_column
        row = self.conn.execute(
            sql.SQL(
                "SELECT histogram_bounds::text::{}[] FROM pg_stats WHERE schemaname = {} AND tablename = {} "
                "AND attname = {} ORDER BY inherited DESC LIMIT 1"
            ).format(
                sql.SQL(column.pg_type),
                sql.Literal(self.settings.schema),
                sql.Literal(self.settings.table),
                sql.Literal(column.name),
            )
        ).fetchone()
        self.conn.rollback()
        return list(row[0]) if row and row[0] else []  # type: ignore[call-overload]

    def _run_one_at_a_time(self) -> tuple[RunTotals, str]:
        totals = RunTotals()
        lane = Lane()
        while True:
            self._refresh_settings()
            if not self.standbys.wait(self.conn, self._stopping):
                self.interrupts.check()  # SIGTERM while waiting: record Interrupted
                return totals, "maxRunTime"
            with self.interrupts.deferred():
                captured = self.capture(self.conn, lane)
                result = self.publish(captured) if captured is not None else BatchResult()
            totals.add(result)
            self.on_progress(totals.rows)
            self.interrupts.check()  # SIGTERM during the batch: it finished (or rolled back); stop here
            if result.rows == 0:
                return totals, "done"
            if time.monotonic() >= self._deadline():
                return totals, "maxRunTime"
            self._pause(self.interrupts.requested.is_set)
            self.interrupts.check()  # SIGTERM during the pause: stop before the next batch

    def _run_lanes(self, lanes: list[Lane], open_connection: Callable[[], Connection]) -> tuple[RunTotals, str]:
        """Every lane on a thread of its own with two connections (the first lane's first one is the run's
        own); the run ends when every lane has. SIGTERM, the run time, or a lane's failure stops every
        lane after its batches in flight have committed or rolled back."""
        totals = RunTotals()
        halt = threading.Event()  # a lane failed: the others stop
        opened: list[Connection] = []
        try:
            for _ in range(2 * len(lanes) - 1):
                opened.append(open_connection())
            pairs = [[self.conn, opened[0]], *([opened[i], opened[i + 1]] for i in range(1, len(opened), 2))]
            self._running_lanes = list(lanes)
            # SIGTERM only sets a flag while the lanes run; each lane stops at its next batch boundary.
            with (
                self.interrupts.deferred(),
                ThreadPoolExecutor(max_workers=len(lanes), thread_name_prefix="archive-lane") as threads,
            ):
                running = [
                    threads.submit(self._run_lane, lane, pair, totals, halt)
                    for lane, pair in zip(lanes, pairs, strict=True)
                ]
                wait(running)
            failures = [f.exception() for f in running if f.exception() is not None]
            if failures:
                # The first failure is the cause; the others are lanes stopped by it (or the same cause).
                raise failures[0]  # type: ignore[misc]
            self.interrupts.check()  # SIGTERM: every lane's batches ended cleanly; record Interrupted
            stopped = [f.result() for f in running]
            return totals, "maxRunTime" if "maxRunTime" in stopped else "done"
        finally:
            for conn in opened:
                with contextlib.suppress(psycopg.Error):
                    conn.close()

    def _run_lane(self, lane: Lane, connections: list[Connection], totals: RunTotals, halt: threading.Event) -> str:
        idle = list(connections)
        pending: Future[BatchResult] | None = None  # the batch being published on the lane's publisher
        unpublished: CapturedBatch | None = None  # captured here, not yet handed to the publisher
        publisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="archive-publish")

        def collect() -> None:
            nonlocal pending
            finished, pending = pending, None
            if finished is not None:
                result = finished.result()  # a failed batch rolled back on the publisher; this raises it
                with self._totals_lock:
                    totals.add(result)
                    self.on_progress(totals.rows)

        try:
            while True:
                conn = idle.pop()
                self._refresh_settings()
                if not self.standbys.wait(conn, lambda: halt.is_set() or self._stopping()):
                    idle.append(conn)
                    collect()  # the batch in flight finishes (or rolls back) before the lane stops
                    return "maxRunTime"
                unpublished = self.capture(conn, lane)
                collect()
                stopping = halt.is_set() or self._stopping()
                if unpublished is None:
                    idle.append(conn)
                    taken = None if stopping else self._take_over(lane)
                    if taken is None:
                        return "done"
                    lane = taken
                    continue
                captured, unpublished = unpublished, None
                pending = publisher.submit(self._publish_and_release, captured, idle)
                if stopping:
                    collect()  # the batch in flight finishes (or rolls back) before the lane stops
                    return "maxRunTime"
                # A pause set while the run goes on (spec re-read): each lane pauses between its batches.
                self._pause(lambda: halt.is_set() or self._stopping())
        except BaseException:
            halt.set()
            raise
        finally:
            if unpublished is not None:
                _rollback(unpublished.conn)
            if pending is not None:  # leaving on an error: the batch in flight still ends cleanly
                with contextlib.suppress(Exception):
                    pending.result()
            publisher.shutdown(wait=True)

    def _take_over(self, finished: Lane) -> Lane | None:
        """A lane with nothing left takes the later half of what the lane with the most time left has.

        Lanes are split at the start by the whole table's statistics, so a filter, or rows that bunch up
        in one lane's range, can leave one lane most of the work; without this the run would go at one
        lane's speed once the others are done. Taking over is safe whatever the timing: a batch of the
        other lane already in flight keeps its rows locked (SKIP LOCKED passes them) and deletes them.
        """
        with self._lanes_lock:
            self._running_lanes = [lane for lane in self._running_lanes if lane is not finished]  # not by value
            best: tuple[timedelta, Lane, datetime, datetime] | None = None
            for lane in self._running_lanes:
                resumed = _as_utc(lane.resume_from)
                if resumed is None or lane.last_batch_span is None:
                    continue  # no batch yet: nothing to judge its pace by
                end = lane.end or self.cutoff
                left = end - resumed
                if left > BATCHES_LEFT_TO_SPLIT * lane.last_batch_span and (best is None or left > best[0]):
                    best = (left, lane, resumed, end)
            if best is None:
                return None
            _, lane, resumed, end = best
            # The rule that split the run into lanes, on what is left: half of the rows by the statistics
            # when they say enough about that range, else half of the time.
            middle = split_into_lanes(resumed, end, 2, self._histogram_bounds)[0].end
            assert middle is not None  # end > resumed: two lanes
            taken = Lane(start=middle, end=lane.end)
            lane.end = middle
            self._running_lanes.append(taken)
        log.info(
            "lane split",
            extra={"kept": [_jsonable(resumed), _jsonable(middle)], "taken": [_jsonable(middle), _jsonable(taken.end)]},
        )
        return taken

    def _publish_and_release(self, captured: CapturedBatch, idle: list[Connection]) -> BatchResult:
        try:
            return self.publish(captured)
        finally:
            idle.append(captured.conn)

    def _deadline(self) -> float:
        return self._started + self.settings.max_run_time.total_seconds()

    def _stopping(self) -> bool:
        """SIGTERM arrived or the run time is up."""
        return self.interrupts.requested.is_set() or time.monotonic() >= self._deadline()

    def _refresh_settings(self) -> None:
        """Between batches, at most every SETTINGS_REREAD_SECONDS: read the resource again and apply its
        live fields (batch size, pause, replication lag, run time, timeouts), so that a run of hours can be
        slowed down or cut short with `kubectl patch`. Other changes wait for the next run. A spec that no
        longer parses, or an API server that does not answer, leaves the settings as they are."""
        if self._reread_spec is None or time.monotonic() - self._settings_read_at < SETTINGS_REREAD_SECONDS:
            return
        if not self._settings_lock.acquire(blocking=False):
            return  # another lane is at it
        try:
            self._settings_read_at = time.monotonic()
            try:
                changed = parse_archive_spec(self._reread_spec())
            except InvalidSpec as exc:
                self._notice("the spec was changed into an invalid one; this run keeps its settings", str(exc))
                return
            except CellarError as exc:
                self._notice("could not read the spec again; this run keeps its settings", str(exc))
                return
            updated, applied, later = live_changes(self.settings, changed)
            if applied:
                if (
                    updated.batch_rows != self.settings.batch_rows
                    or updated.batch_max_bytes != self.settings.batch_max_bytes
                ):
                    self.batch_rows = updated.batch_rows  # _adapt_batch_size shrinks it again for wide rows
                self.standbys.limit = updated.max_replication_lag
                self.settings = updated
                log.info("settings changed; the next batches use them", extra={"changed": applied})
            if later:
                self._notice("the spec changed; these fields take effect at the next run", ", ".join(later))
        finally:
            self._settings_lock.release()

    def _notice(self, message: str, detail: str) -> None:
        """A warning about the spec, logged once until it changes (the spec is read every few seconds)."""
        if detail != self._last_settings_notice:
            self._last_settings_notice = detail
            log.warning(message, extra={"detail": detail})

    def _pause(self, stopping: Callable[[], bool]) -> None:
        """spec.batch.pause between batches, in short sleeps, ended early once `stopping()` is true."""
        end = time.monotonic() + self.settings.pause.total_seconds()
        while not stopping() and time.monotonic() < end:
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))

    def capture(self, conn: Connection, lane: Lane) -> CapturedBatch | None:
        """Open a transaction and delete (Copy mode: read) the lane's next batch; None when none are due.

        When nothing is due after the lane's `resume_from`, one more statement looks from the lane's
        start: it takes the rows that applications held locked when the lane passed them.
        """
        while True:
            captured = self._capture_once(conn, lane)
            if captured is not None:
                return captured
            if lane.until is not None:  # nothing due before the partition boundary (a gap): look past it
                lane.until = None
                continue
            if lane.resume_from is None:
                return None
            lane.resume_from = None

    def _capture_once(self, conn: Connection, lane: Lane) -> CapturedBatch | None:
        statement = copy_out(batch_query(self.settings, self.info, self.cutoff, self.batch_rows, self.watermark, lane))
        began = time.monotonic()
        try:
            sql_settings(conn, self.settings, self.info)
            with conn.cursor() as cursor, cursor.copy(statement) as copy:
                data = read_copy(conn, copy)
            table = sort_batch(csv_to_table(data, self.info.columns), self.info)
            if table.num_rows == 0:
                conn.rollback()
                return None
            self._adapt_batch_size(len(data))
            if self.settings.mode == "Move":
                stamps = table.column(self.info.timestamp_column.name)
                lane.resume_from = stamps[-1].as_py()
                first, last = _as_utc(stamps[0].as_py()), _as_utc(lane.resume_from)
                lane.last_batch_span = last - first if first is not None and last is not None else None
                lane.until = aligned_batch_end(first, last, table.num_rows, self.batch_rows, self.settings.partitioning)
            return CapturedBatch(conn, str(uuid.uuid4()), began, table)
        except BaseException:
            _rollback(conn)
            raise

    def publish(self, captured: CapturedBatch) -> BatchResult:
        """Encode, upload and verify the batch's objects, record them in the ledger, COMMIT."""
        conn, batch_id = captured.conn, captured.batch_id
        try:
            result = BatchResult(rows=captured.table.num_rows)
            # Which columns repeat is judged once per batch, not once per object (a day of a Daily batch).
            dictionary = repeating_columns(captured.table) if self.settings.format == "Parquet" else []
            entries = self._publish_batch(batch_id, self._pieces(captured.table), dictionary)
            result.bytes = sum(e.bytes for e in entries)
            result.objects = len(entries)
            ledger.record(
                conn,
                entries,
                relation=self.settings.relation,
                cutoff=self.cutoff,
                mode=self.settings.mode,
                run_id=self.run_id,
            )
            failpoint("archive.before-commit")
        except BaseException:
            _rollback(conn)
            raise
        try:
            conn.commit()
        except psycopg.OperationalError as exc:
            # The outcome of a COMMIT whose connection died is unknown here; the ledger knows.
            raise CommitInDoubt(batch_id, str(exc)) from exc
        result.transaction_seconds = time.monotonic() - captured.began
        if self.settings.mode == "Copy":
            self.watermark = json.loads(entries[-1].last_row or "null")
        log.info(
            "batch committed",
            extra={
                "batch_id": batch_id,
                "rows": result.rows,
                "bytes": result.bytes,
                "objects": result.objects,
                "transaction_seconds": round(result.transaction_seconds, 4),
            },
        )
        return result

    def _pieces(self, table: pa.Table) -> list[tuple[str | None, pa.Table]]:
        pieces: list[tuple[str | None, pa.Table]] = []
        for partition, part in partitions(table, self.settings, self.info):
            pieces.extend((partition, piece) for piece in split_by_size(part, self.settings.batch_max_bytes))
        return pieces

    def _adapt_batch_size(self, raw_bytes: int) -> None:
        # Keep a batch's raw rows near the byte limit: a table of wide rows gets fewer rows per batch.
        if raw_bytes > self.settings.batch_max_bytes and self.batch_rows > 1:
            self.batch_rows = max(1, int(self.batch_rows * self.settings.batch_max_bytes / raw_bytes))

    def _publish_batch(
        self, batch_id: str, pieces: list[tuple[str | None, pa.Table]], dictionary: list[str]
    ) -> list[ledger.LedgerEntry]:
        """Encode and upload the pieces side by side (each verified), then write the batch's manifest."""
        manifest_key = self.layout.manifest_key(batch_id)
        # pyarrow and hashlib release the GIL, so encoding on the upload threads uses every core.
        published = [
            self._uploads.submit(self._encode_and_upload, batch_id, number, partition, part, manifest_key, dictionary)
            for number, (partition, part) in enumerate(pieces)
        ]
        objects = [future.result() for future in published]  # the first failure fails the batch (rollback)
        manifest = {
            "formatVersion": MANIFEST_FORMAT_VERSION,
            "batchId": batch_id,
            "relation": {"schema": self.settings.schema, "table": self.settings.table},
            "format": self.settings.format,
            "compression": "zstd" if self.settings.format == "Parquet" else "gzip",
            "timestampColumn": self.info.timestamp_column.name,
            "primaryKey": list(self.info.primary_key),
            "cutoff": self.cutoff.isoformat(),
            "runId": self.run_id,
            "mode": self.settings.mode,
            "rows": sum(entry.rows for entry, _ in objects),
            "columns": [column_description(c) for c in self.info.columns],
            "serverVersion": self.info.server_version,
            "objects": [description for _, description in objects],
            "createdAt": datetime.now(UTC).isoformat(),
        }
        self.store.put_bytes(manifest_key, json.dumps(manifest, indent=2).encode())
        return [entry for entry, _ in objects]

    def _encode_and_upload(
        self,
        batch_id: str,
        number: int,
        partition: str | None,
        table: pa.Table,
        manifest_key: str,
        dictionary: list[str],
    ) -> tuple[ledger.LedgerEntry, dict[str, Any]]:
        """One object: encode the rows (sorted by timestamp and key), upload and verify it."""
        key = self.layout.data_key(partition, object_name(batch_id, number))
        body = encode(table, self.settings.format, dictionary)
        digest = hashlib.sha256(body).hexdigest()
        failpoint("archive.upload")
        upload_verified(self.store, key, body, digest)
        ts_name = self.info.timestamp_column.name
        low, high = key_range(table, ts_name)
        min_key, max_key = key_range(table, self.info.primary_key[0])
        last = table.slice(table.num_rows - 1, 1).to_pylist()[0]
        last_row = json.dumps(
            {"ts": _jsonable(last[ts_name]), "key": [_jsonable(last[k]) for k in self.info.primary_key]}
        )
        description = {
            "objectKey": key,
            "partition": partition,
            "rows": table.num_rows,
            "bytes": len(body),
            "sha256": digest,
            "minTimestamp": low,
            "maxTimestamp": high,
            "minKey": min_key,
            "maxKey": max_key,
        }
        entry = ledger.LedgerEntry(
            object_key=key,
            batch_id=batch_id,
            manifest_key=manifest_key,
            rows=table.num_rows,
            bytes=len(body),
            sha256=digest,
            min_ts=_timestamp(low),
            max_ts=_timestamp(high),
            min_key=min_key,
            max_key=max_key,
            last_row=last_row,
        )
        return entry, description


class CommitInDoubt(RetryableError):
    reason = Reason.CONNECTION_FAILED

    def __init__(self, batch_id: str, detail: str) -> None:
        super().__init__(
            f"the connection died during COMMIT of batch {batch_id} ({detail}); the next run reads the "
            "ledger to learn whether it committed and cleans up accordingly"
        )
        self.batch_id = batch_id


def _finish_copy_out(conn: Connection) -> None:
    """After get_copy_data reported the end of a COPY TO: read its result; raise the server's error."""
    results = []
    while (result := conn.pgconn.get_result()) is not None:
        results.append(result)
    if not results:
        raise psycopg.OperationalError("the COPY ended without a result")
    if results[0].status != psycopg.pq.ExecStatus.COMMAND_OK:
        raise psycopg.errors.error_from_result(results[0], encoding=conn.info.encoding)


def _rollback(conn: Connection) -> None:
    with contextlib.suppress(psycopg.Error):  # a dead connection: the server rolled back on its own
        conn.rollback()


def _timestamp(text: str | None) -> datetime | None:
    if text is None:
        return None
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def upload_verified(store: ObjectStore, key: str, body: bytes, sha256_hex: str) -> None:
    """PUT with a SHA-256 checksum and verify what the store says it stored.

    A store that checks x-amz-checksum-sha256 rejects a corrupted body (BadDigest) and returns the
    checksum it computed: a match is its own statement of what it holds, so no HEAD is needed. A store
    that returns no checksum (requestChecksum: WhenRequired, or no support) is asked with HEAD for the
    size and the ETag, which for a single PUT is the MD5 of the body.
    """
    checksum = base64.b64encode(bytes.fromhex(sha256_hex)).decode()
    arguments: dict[str, Any] = {"Bucket": store.bucket, "Key": key, "Body": body, **store.write_arguments()}
    if not store.spec.checksum_when_required:
        arguments["ChecksumSHA256"] = checksum
    try:
        put = store.client.put_object(**arguments)
        if put.get("ChecksumSHA256") == checksum:
            return
        head = store.client.head_object(Bucket=store.bucket, Key=key, ChecksumMode="ENABLED")
    except (ClientError, BotoCoreError) as exc:
        raise translate_storage_error(exc, "cannot upload", store.bucket, key) from None
    stored_checksum = head.get("ChecksumSHA256")
    etag = str(head.get("ETag", "")).strip('"')
    md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
    if (
        head["ContentLength"] != len(body)
        or (stored_checksum and stored_checksum.split("-")[0] != checksum)
        or (not stored_checksum and "-" not in etag and etag != md5)
    ):
        raise VerificationFailed(
            f"s3://{store.bucket}/{key}: the stored object does not match what was uploaded "
            f"(size {head['ContentLength']} of {len(body)}, checksum {stored_checksum or etag})"
        )


def read_verified(
    store: ObjectStore, manifest: dict[str, Any], described: dict[str, Any], columns: list[Column]
) -> pa.Table:
    """Download one object of a batch, check its SHA-256 and row count against the manifest, decode it."""
    body = store.get_bytes(described["objectKey"])
    digest = hashlib.sha256(body).hexdigest()
    if digest != described["sha256"]:
        raise VerificationFailed(
            f"{described['objectKey']}: SHA-256 {digest} does not match the manifest's {described['sha256']}"
        )
    table = decode(body, manifest["format"], columns)
    if table.num_rows != described["rows"]:
        raise VerificationFailed(
            f"{described['objectKey']}: {table.num_rows} rows, the manifest says {described['rows']}"
        )
    return table
