"""Whole partitions: a partition of a table range-partitioned on its timestamp column whose whole range lies
before the cutoff is archived by reading it once (no row locks, no deletes), then dropped.

Each partition, keeping the archiver's guarantee (every row in the table, or in a verified object a committed
ledger row describes) at every step:
1. cellar.archive_partitions records that it is being detached (state `detaching`), committed.
2. DETACH PARTITION: CONCURRENTLY (the parent stays open to readers and writers) unless the table has a default
   partition, which forbids it; then a plain DETACH, which holds the parent's ACCESS EXCLUSIVE lock for a
   moment, under lockTimeout. The rows are now in a table of their own, still in the database.
3. One transaction: LOCK that table EXCLUSIVE (a writer that names it waits, so no row arrives after it was
   read), read it with COPY (as many days at a time as fit batch.maxBytesMiB; in binary on a connection of
   its own while the lock is held, see arrow_reads.py, or as CSV in this transaction), publish those rows as
   a batch does (encode, upload and verify, manifest, ledger rows), check that the ledger rows add up to its
   count, DROP it (or keep it, with spec.partitions.keepDetached), mark it `archived`, COMMIT. A crash before
   the COMMIT leaves the table with every row, and objects no ledger row describes, which cleanup removes
   after finding their rows in that table; after the COMMIT the rows are in recorded objects only. Into an Iceberg
   table, several partitions share that transaction and one snapshot (iceberg_partitions.py).
A run first finishes what a crashed one left `detaching`: FINALIZE a concurrent detach the crash cut short,
detach one still attached, then step 3. Rows a writer sends through the parent into a detached range fail, or
land in the default partition, which row batches archive.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
from psycopg import sql
from psycopg.types.json import Jsonb

from common.errors import CellarError, PermanentError
from common.failpoints import failpoint
from common.reasons import Reason
from jobs.archive import ledger
from jobs.archive.arrow_reads import ArrowReader, readable
from jobs.archive.arrow_types import select_list
from jobs.archive.batch_records import BatchResult, rollback_quietly
from jobs.archive.batches import BatchWorker, RunScope
from jobs.archive.copy_reads import read_copy
from jobs.archive.encoding import arrow_to_table, csv_to_table
from jobs.archive.iceberg_partitions import PartitionGroup
from jobs.archive.objects import sort_batch
from jobs.archive.settings import ArchiveSettings
from jobs.archive.statements import copy_out, table_name
from jobs.archive.table import Connection, TableInfo

log = logging.getLogger(__name__)

_UPPER_BOUND = re.compile(r"^FOR VALUES FROM \((.*)\) TO \((.*)\)$")

_CHILDREN = """
SELECT format('%%I.%%I', n.nspname, c.relname), pg_get_expr(c.relpartbound, c.oid)
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.inhparent = %s AND NOT i.inhdetachpending
"""

_RANGE_ON_TIMESTAMP = """
SELECT pt.partdefid <> 0 FROM pg_partitioned_table pt
JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
WHERE pt.partrelid = %s AND pt.partstrat = 'r' AND pt.partnatts = 1 AND a.attname = %s
"""


# A partition's oldest and newest timestamp, its rows, and how many of them Parquet readers cannot hold (those
# psycopg cannot load either: before year 1, after 9999, infinity).
_BOUNDS = sql.SQL(
    "SELECT min(t) FILTER (WHERE held), max(t) FILTER (WHERE held), count(*), count(*) FILTER (WHERE NOT held) "
    "FROM (SELECT {0}::timestamptz AS t, {0}::timestamptz >= '0001-01-01 00:00:00+00' "
    "AND {0}::timestamptz < '10000-01-01 00:00:00+00' AS held FROM {1}) AS timestamps"
)


@dataclass(frozen=True)
class WholePartition:
    name: str  # schema-qualified and quoted, as format('%I.%I') writes it
    upper: str  # the bound's literal, as pg_get_expr writes it


def applies(conn: Connection, info: TableInfo) -> bool | None:
    """Whether the table can have partitions archived whole: None when it is not range-partitioned on the
    timestamp column; else whether it has a default partition."""
    row = conn.execute(_RANGE_ON_TIMESTAMP, (info.oid, info.timestamp_column.name)).fetchone()
    conn.rollback()
    return None if row is None else bool(row[0])


def due_partitions(
    conn: Connection, settings: ArchiveSettings, info: TableInfo, cutoff: datetime
) -> list[WholePartition]:
    """The parent's partitions whose whole range lies before the cutoff, oldest first. None in Copy mode,
    with a filter (rows it leaves out must stay), or while unarchived rows of the table are held."""
    if settings.mode != "Move" or settings.filter_sql or not settings.whole_partitions:
        return []
    if applies(conn, info) is None:
        return []
    ledger_exists = conn.execute("SELECT to_regclass('cellar.archive_holds') IS NOT NULL").fetchone()
    if ledger_exists and ledger_exists[0]:  # none before the first run
        held = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM cellar.archive_holds WHERE relation = %s)", (settings.relation,)
        ).fetchone()
        if held and held[0]:
            conn.rollback()
            return []
    found = []
    for name, bound in conn.execute(_CHILDREN, (info.oid,)).fetchall():
        matched = _UPPER_BOUND.match(str(bound))
        if matched is None or "MAXVALUE" in matched.group(2):
            continue  # the default partition, or one open above: never whole
        upper = matched.group(2)
        before = conn.execute(
            sql.SQL("SELECT ({}::{})::timestamptz <= {}").format(
                sql.SQL(upper), sql.SQL(info.timestamp_column.pg_type), sql.Literal(cutoff)
            )
        ).fetchone()
        if before and before[0]:
            found.append(WholePartition(str(name), upper))
    conn.rollback()
    return sorted(found, key=lambda p: p.upper)


def definition(conn: Connection, name: str) -> dict[str, Any]:
    """What creates partition `name` again as it is now: its bound, its own partitioning and its children's
    (recursively). Recorded before the partition is detached; unarchive into the source reads it."""
    row = conn.execute(
        "SELECT c.oid, pg_get_expr(c.relpartbound, c.oid), "
        "CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END FROM pg_class c WHERE c.oid = to_regclass(%s)",
        (name,),
    ).fetchone()
    if row is None:
        return {"name": name}
    children = conn.execute(_CHILDREN, (row[0],)).fetchall() if row[2] else []
    return {
        "name": name,
        "bound": str(row[1]),
        "partitionBy": row[2],
        "children": [definition(conn, str(child)) for child, _ in children],
    }


@dataclass
class PartitionResult:
    name: str
    rows: int
    objects: int
    bytes: int
    seconds: float


class PartitionArchiver:
    def __init__(
        self,
        scope: RunScope,
        open_connection: Callable[[], Connection],
        worker: BatchWorker,
        settings: ArchiveSettings,
        keep_detached: bool,
        open_reader: Callable[[], ArrowReader] | None = None,
    ) -> None:
        """`open_reader`: connections that read partitions in binary straight into Arrow (arrow_reads.py);
        without it, or when it cannot read the table's columns as cellar stores them, COPY CSV."""
        self.conn, self.open_connection, self.worker = scope.conn, open_connection, worker
        self.settings, self.info, self.cutoff, self.run_id = settings, scope.info, scope.cutoff, scope.run_id
        self.keep_detached = keep_detached
        self.open_reader = open_reader

    def run(self, should_stop: Callable[[], bool]) -> list[PartitionResult]:
        """Finish what a crashed run left, then archive every due partition whole; stops between partitions.

        Every partition is detached first, then they are read `batch.parallelism` at a time, each worker on a
        connection of its own: a concurrent detach waits for every older transaction, so detaching while
        another partition's long transaction runs would wait for it."""
        names = ledger.pending_partitions(self.conn, self.settings.relation)
        for partition in due_partitions(self.conn, self.settings, self.info, self.cutoff):
            self.conn.execute(
                "INSERT INTO cellar.archive_partitions (relation, partition, state, run_id, definition) VALUES "
                "(%s, %s, 'detaching', %s, %s) ON CONFLICT (relation, partition) DO UPDATE SET state = 'detaching', "
                "run_id = excluded.run_id, updated_at = now(), definition = excluded.definition",
                (self.settings.relation, partition.name, self.run_id, Jsonb(definition(self.conn, partition.name))),
            )
            self.conn.commit()
            if partition.name not in names:  # a crash between its record and its DETACH left it pending too
                names.append(partition.name)
        detached = []
        for name in names:
            if should_stop():
                break
            self._detach(name)
            detached.append(name)
        if not detached:
            return []
        queue, guard = list(detached), threading.Lock()

        def take() -> str | None:
            with guard:
                return None if not queue or should_stop() else queue.pop(0)

        def work(conn: Connection, reader: ArrowReader | None) -> list[PartitionResult]:
            results: list[PartitionResult] = []
            while (name := take()) is not None:
                if self.worker.iceberg is not None:
                    results.extend(self._archive_into_iceberg(conn, name, take, reader))
                else:
                    results.append(self._archive(conn, name, reader))
            return results

        extra = [self.open_connection() for _ in range(min(self.settings.parallelism, len(detached)) - 1)]
        readers: list[ArrowReader] = []
        try:
            readers = self._open_readers(1 + len(extra))
            workers = [self.conn, *extra]
            with ThreadPoolExecutor(max_workers=len(workers), thread_name_prefix="archive-partition") as pool:
                futures = [pool.submit(work, conn, readers[i] if readers else None) for i, conn in enumerate(workers)]
                wait(futures)
            failures = [f.exception() for f in futures if f.exception() is not None]
            if failures:
                raise failures[0]  # type: ignore[misc]
            return [result for f in futures for result in f.result()]
        finally:
            for conn in extra:
                conn.close()
            for reader in readers:
                reader.close()

    def _open_readers(self, count: int) -> list[ArrowReader]:
        """One Arrow reader per worker, or none (COPY CSV) when they cannot be opened or would return a column
        otherwise than cellar stores it."""
        if self.open_reader is None:
            return []
        readers: list[ArrowReader] = []
        try:
            for _ in range(count):
                readers.append(self.open_reader())
        except CellarError as exc:
            why: str | None = str(exc)
        else:
            probe = sql.SQL("SELECT {} FROM {} LIMIT 0").format(
                select_list(self.info.columns), table_name(self.settings)
            )
            why = readable(readers[0], probe.as_string(self.conn), self.info.columns)
        if why is None:
            return readers
        for reader in readers:
            reader.close()
        log.warning("whole partitions are read through COPY CSV, not in binary", extra={"error": why})
        return []

    def _detach(self, name: str) -> None:
        """Detach `name` from the parent if it still hangs there (or FINALIZE a detach a crash interrupted)."""
        row = self.conn.execute(
            "SELECT i.inhdetachpending FROM pg_inherits i WHERE i.inhrelid = to_regclass(%s) AND i.inhparent = %s",
            (name, self.info.oid),
        ).fetchone()
        self.conn.rollback()
        if row is None:
            return  # detached already
        parent, child = table_name(self.settings), sql.SQL(name)
        with self.open_connection() as admin:
            admin.autocommit = True  # DETACH CONCURRENTLY cannot run in a transaction block
            lock_timeout = sql.Literal(f"{int(self.settings.lock_timeout.total_seconds() * 1000)}ms")
            admin.execute(sql.SQL("SET lock_timeout = {}").format(lock_timeout))
            if row[0]:
                admin.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {} FINALIZE").format(parent, child))
            elif applies(admin, self.info):  # a default partition forbids CONCURRENTLY
                admin.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent, child))
            else:
                admin.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY").format(parent, child))
        log.info("partition detached", extra={"partition": name})
        failpoint("archive.partition-detached")

    def _days_per_read(self, conn: Connection, name: str, oldest: object, newest: object) -> int:
        """How many days one COPY reads: about batch.maxBytesMiB of the partition's heap (its leaves' when it
        is sub-partitioned) shared by the workers, so that a month of a modest table is one read and one
        manifest, not thirty, and memory stays near a row batch's."""
        if not isinstance(oldest, datetime) or not isinstance(newest, datetime):
            return 1
        row = self.conn.execute(
            "SELECT coalesce(sum(pg_relation_size(relid)), 0) FROM pg_partition_tree(to_regclass(%s)) WHERE isleaf",
            (name,),
        ).fetchone()
        heap = int(str(row[0])) if row else 0
        days = (newest - oldest).days + 1
        per_day = max(heap // days, 1)
        budget = self.settings.batch_max_bytes // self.settings.parallelism  # the workers' reads share it
        return max(1, min(days, budget // per_day))

    def _archive(self, conn: Connection, name: str, reader: ArrowReader | None) -> PartitionResult:
        """A partition into objects: each read published and recorded, the partition dropped, in one transaction."""
        began = time.monotonic()
        try:
            result = self._read_whole(conn, name, reader, lambda rows: self._publish(conn, rows))
            self._drop_and_mark(conn, result)
            failpoint("archive.partition-before-commit")
        except BaseException:
            rollback_quietly(conn)
            raise
        conn.commit()
        result.seconds = time.monotonic() - began
        self._log_archived(result, reader, objects=result.objects, bytes=result.bytes)
        return result

    def _archive_into_iceberg(
        self, conn: Connection, first: str, take: Callable[[], str | None], reader: ArrowReader | None
    ) -> list[PartitionResult]:
        """`first` and the partitions `take` gives after it, while the group has room, into one snapshot, all in
        one transaction (iceberg_partitions.py)."""
        assert self.worker.iceberg is not None
        began = time.monotonic()
        group = PartitionGroup(self.worker.iceberg, self.settings, str(uuid.uuid4()))
        results: list[PartitionResult] = []
        try:
            name: str | None = first
            while name is not None:
                results.append(self._read_whole(conn, name, reader, group.add))
                name = None if group.full(len(results)) else take()
            appended = group.publish(conn, self.cutoff, self.run_id)
            for result in results:
                self._drop_and_mark(conn, result)
            failpoint("archive.partition-before-commit")
        except BaseException:
            group.discard()
            rollback_quietly(conn)
            raise
        conn.commit()
        seconds = time.monotonic() - began
        if appended is not None:  # the group's files and bytes, counted once (a file may span partitions)
            results[-1].objects, results[-1].bytes = appended.data_files, appended.bytes
        for result in results:
            result.seconds = seconds
            self._log_archived(result, reader, snapshot_id=appended.snapshot_id if appended else None)
        return results

    def _publish(self, conn: Connection, rows: pa.Table) -> tuple[int, int]:
        entries, files = self.worker.publish_rows(str(uuid.uuid4()), rows)
        ledger.record(
            conn, entries, relation=self.settings.relation, cutoff=self.cutoff, mode="Move", run_id=self.run_id
        )
        return files, sum(e.bytes for e in entries)

    def _read_whole(
        self, conn: Connection, name: str, reader: ArrowReader | None, consume: Callable[[pa.Table], tuple[int, int]]
    ) -> PartitionResult:
        """Lock the detached partition, hand each read of its rows to `consume` (which returns the files and bytes it
        wrote), and check that the reads hold every row it has."""
        bounds = self._locked_bounds(conn, name)
        result = PartitionResult(name, 0, 0, 0, 0.0)
        for rows in self._reads(conn, name, reader, bounds):
            files, size = consume(rows)
            result.rows += rows.num_rows
            result.objects += files
            result.bytes += size
        if result.rows != int(str(bounds[2])):
            raise PermanentError(
                f"partition {name}: {result.rows} rows read, {bounds[2]} in it; nothing was dropped",
                reason=Reason.VERIFICATION_FAILED,
            )
        return result

    def _drop_and_mark(self, conn: Connection, result: PartitionResult) -> None:
        if not self.keep_detached:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.SQL(result.name)))
        conn.execute(
            "UPDATE cellar.archive_partitions SET state = %s, rows = %s, updated_at = now() "
            "WHERE relation = %s AND partition = %s",
            ("kept" if self.keep_detached else "archived", result.rows, self.settings.relation, result.name),
        )

    def _log_archived(self, result: PartitionResult, reader: ArrowReader | None, **details: object) -> None:
        log.info(
            "partition archived whole",
            extra={
                "partition": result.name,
                "rows": result.rows,
                **details,
                "seconds": round(result.seconds, 3),
                "dropped": not self.keep_detached,
                "read": "binary" if reader is not None else "csv",
            },
        )

    def _locked_bounds(self, conn: Connection, name: str) -> tuple[object, ...]:
        """Lock the detached partition (EXCLUSIVE, under lockTimeout) and read its oldest and newest timestamp, its
        row count, and how many rows no Parquet reader can hold (refused: nothing is dropped)."""
        conn.execute(
            sql.SQL("SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = 0").format(
                sql.Literal(f"{int(self.settings.lock_timeout.total_seconds() * 1000)}ms")
            )
        )
        conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(sql.SQL(name)))
        bounds = conn.execute(_BOUNDS.format(sql.Identifier(self.info.timestamp_column.name), sql.SQL(name))).fetchone()
        assert bounds is not None  # an aggregate
        if bounds[3]:
            raise PermanentError(
                f"partition {name}: {bounds[3]} rows have a {self.info.timestamp_column.name} outside the years "
                "1 to 9999 (infinity, or a date BC), which Parquet readers cannot hold; nothing was dropped. "
                "Change those rows, or archive this table with a spec.filter that leaves them out",
                reason=Reason.ENCODING_FAILED,
            )
        return tuple(bounds)

    def _reads(
        self, conn: Connection, name: str, reader: ArrowReader | None, bounds: tuple[object, ...]
    ) -> Iterator[pa.Table]:
        """The locked partition's rows a few days at a time (in binary where `reader` is given), each read sorted."""
        child, ts = sql.SQL(name), sql.Identifier(self.info.timestamp_column.name)
        oldest, newest = bounds[0], bounds[1]
        day = _utc_day(oldest) if isinstance(oldest, datetime) else None
        span = self._days_per_read(conn, name, oldest, newest)
        while day is not None and isinstance(newest, datetime) and day <= newest:
            following = day + timedelta(days=span)
            query = sql.SQL("SELECT {} FROM {} WHERE {}::timestamptz >= {} AND {}::timestamptz < {}").format(
                select_list(self.info.columns), child, ts, sql.Literal(day), ts, sql.Literal(following)
            )
            if reader is not None:  # after the LOCK: the read sees every row the COMMIT drops
                table = arrow_to_table(reader.fetch(query.as_string(conn)), self.info.columns)
            else:
                with conn.cursor() as cursor, cursor.copy(copy_out(query)) as copy:
                    table = csv_to_table(read_copy(conn, copy), self.info.columns)
            if table.num_rows:
                yield sort_batch(table, self.info)
            day = following


def as_batch_result(result: PartitionResult) -> BatchResult:
    outcome = BatchResult(rows=result.rows)
    outcome.bytes, outcome.objects, outcome.transaction_seconds = result.bytes, result.objects, result.seconds
    return outcome


def _utc_day(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)
