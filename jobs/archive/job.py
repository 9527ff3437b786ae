"""The archive run, top to bottom: settings, checks, lock, leftovers, batches, status."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from common.conditions import Condition, format_time
from common.config import resolve_database_settings, resolve_storage_credentials
from common.db import connect
from common.errors import CellarError, UsageError
from common.kube import TABLE_ARCHIVE
from common.progress import ProgressReporter
from common.reasons import Reason
from common.redact import redact
from common.runtime import RunContext
from common.storage import ObjectStore, build_client
from jobs.archive import ledger
from jobs.archive.archiver import (
    MAX_PARTITIONS_PER_BATCH,
    UPLOAD_CONCURRENCY,
    Archiver,
    Connection,
    RunTotals,
    batch_query,
    eligible_condition,
    table_name,
)
from jobs.archive.cleanup import clean_leftovers
from jobs.archive.settings import ArchiveSettings, parse_archive_spec
from jobs.archive.standbys import StandbyGate, check_lag_visible
from jobs.archive.status import ArchiveRun, ArchiveTotals, SkippedRun, UnarchiveRecord
from jobs.archive.table import (
    TableInfo,
    check_cascades,
    check_privileges,
    describe_table,
    has_timestamp_statistics,
    unindexed_timestamp_warning,
)
from jobs.archive.unarchive import unarchive

log = logging.getLogger(__name__)
APPLICATION = "cellar-archive"
STANDBY_STATUS_INTERVAL = 30.0
# From this many rows due (by the planner's estimate), the progress total is that estimate, not a count.
ESTIMATE_FROM_ROWS = 1_000_000


def lock_id(info: TableInfo) -> int:
    """One advisory lock per table: cellar's namespace in the high bits, the table's oid in the low."""
    return (zlib.crc32(b"cellar.archive") << 32 | info.oid) - (1 << 63)


def try_lock(conn: Connection, info: TableInfo) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_id(info),)).fetchone()
    conn.commit()
    return bool(row and row[0])


def dry_run_report(conn: Connection, settings: ArchiveSettings, info: TableInfo, cutoff: datetime) -> dict[str, Any]:
    """Rows, bytes and days that would move, and the plan of one batch; changes nothing."""
    holds = conn.execute("SELECT to_regclass('cellar.archive_holds') IS NOT NULL").fetchone()
    condition = eligible_condition(settings, info, cutoff, holds=bool(holds and holds[0]))
    ts = sql.Identifier(info.timestamp_column.name)
    row = conn.execute(
        sql.SQL(
            "SELECT count(*), coalesce(sum(pg_column_size(t.*)), 0), count(DISTINCT {}::date), min({}), max({}), "
            "count(DISTINCT date_trunc('month', {})) FROM {} t WHERE {}"
        ).format(ts, ts, ts, ts, table_name(settings), condition)
    ).fetchone()
    assert row is not None
    # The plan of the statement a run's first batch executes (EXPLAIN without ANALYZE runs nothing).
    query = batch_query(settings, info, cutoff, settings.batch_rows, None, holds=bool(holds and holds[0]))
    plan_rows = conn.execute(sql.SQL("EXPLAIN {}").format(query)).fetchall()
    conn.rollback()
    return {
        "rows": int(str(row[0])),
        "bytes": int(str(row[1])),
        "days": int(str(row[2])),
        "oldest": row[3],
        "newest": row[4],
        "months": int(str(row[5])),
        "plan": "\n".join(str(r[0]) for r in plan_rows),
    }


def layout_advice(partitioning: str, rows: int, days: int, months: int, batch_rows: int) -> str | None:
    """Advice for a dry run when Daily partitions cut every batch into many small files, or None.

    A batch writes one file per day it holds (at most MAX_PARTITIONS_PER_BATCH): where a day holds a
    quarter of a batch or less, that is four files or more per batch, each an encode, an upload and a
    write in the store, and query engines read many small files slower than a few large ones. `days` and
    `months`: how many of each hold due rows.
    """
    if partitioning != "Daily" or rows <= 0 or days <= 0 or months <= 0:
        return None
    per_day = rows / days
    if per_day * 4 > batch_rows:
        return None
    daily_files = min(math.ceil(batch_rows / per_day), days, MAX_PARTITIONS_PER_BATCH)
    monthly_files = min(math.ceil(batch_rows / (rows / months)), months)
    monthly = "one or two" if monthly_files <= 1 else f"about {monthly_files}"
    return (
        f"a day holds about {round(per_day)} rows, so a batch of {batch_rows} rows writes about {daily_files} "
        f"files of one day each; with partitioning: Monthly it would write {monthly} "
        "(fewer uploads, and files that query engines read faster)"
    )


@dataclass(frozen=True)
class OpenedTable:
    """What archive and unarchive check and open before any work: settings, a connection, the store
    (bucket checked), the table (checked against the spec), and how to open one more connection."""

    settings: ArchiveSettings
    conn: Connection
    store: ObjectStore
    info: TableInfo
    open_connection: Callable[[], Connection]


def open_table(ctx: RunContext) -> OpenedTable:
    settings = parse_archive_spec(ctx.spec)
    database = resolve_database_settings(ctx.kube, ctx.ref.namespace, settings.database)
    credentials = resolve_storage_credentials(ctx.kube, ctx.ref.namespace, settings.storage)
    # Requests at once: a batch's objects (UPLOAD_CONCURRENCY) and each lane's manifest.
    concurrency = UPLOAD_CONCURRENCY + settings.parallelism
    store = ObjectStore(build_client(settings.storage, credentials, concurrency=concurrency), settings.storage)
    store.check_access()
    conn = connect(database, application_name=APPLICATION)
    try:
        info = describe_table(conn, settings)
        check_cascades(conn, info, settings)
        conn.rollback()
    except BaseException:
        conn.close()
        raise
    return OpenedTable(settings, conn, store, info, lambda: connect(database, application_name=APPLICATION))


class ArchiveJob:
    name = "archive"
    kind = TABLE_ARCHIVE
    description = "Move a table's old rows to Parquet in S3-compatible storage, as its TableArchive says."
    open_connection: Callable[[], Connection] | None = None  # set by run(): the same database, once more

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, ctx: RunContext, args: argparse.Namespace) -> str:
        opened = open_table(ctx)
        settings, conn, store, info = opened.settings, opened.conn, opened.store, opened.info
        self.open_connection = opened.open_connection
        with conn:
            cutoff = datetime.now(UTC) - settings.older_than
            scan_warning = unindexed_timestamp_warning(conn, info, settings)
            if scan_warning:
                log.warning("no index on the timestamp column", extra={"detail": scan_warning})
                ctx.event(Reason.INDEX_MISSING, scan_warning, action="Archive", warning=True)
            if ctx.dry_run or settings.dry_run:
                return self._dry_run(ctx, conn, settings, info, cutoff, scan_warning)
            check_privileges(conn, info, settings)
            check_lag_visible(conn, settings.max_replication_lag)
            if not try_lock(conn, info):
                message = f"another run holds the archive lock of {settings.relation}; this run skipped"
                ctx.update_status(
                    fields={
                        "lastSkipped": SkippedRun(
                            format_time(datetime.now(UTC)), ctx.run_id, Reason.LOCK_HELD, message
                        ).to_status()
                    }
                )
                ctx.event(Reason.LOCK_HELD, message, action="Archive")
                return message
            ledger.ensure_ledger(conn)
            started = datetime.now(UTC)
            clock = time.monotonic()
            running = f"archiving rows of {settings.relation} older than {format_time(cutoff)}"
            ctx.update_status(
                [Condition("Progressing", "True", Reason.RUNNING, running)], fields={"cutoff": format_time(cutoff)}
            )
            ctx.event(
                Reason.STARTED, f"archiving {settings.relation} rows older than {format_time(cutoff)}", action="Archive"
            )
            cleaned = clean_leftovers(conn, store, settings, info)
            progress = ProgressReporter("rows", None, lambda figures: ctx.update_status(fields={"progress": figures}))
            archiver = Archiver(
                conn,
                store,
                settings,
                info,
                cutoff,
                ctx.run_id,
                ctx.interrupts,
                progress.update,
                open_connection=self.open_connection,
                reread_spec=lambda: ctx.kube.get(ctx.ref).get("spec") or {},
                on_standby_hold=self._standby_status(ctx, running),
            )
            with self._counting_due(settings, info, cutoff, progress):
                totals, stopped = archiver.run()
            duration = time.monotonic() - clock
            log.info(
                "archive run summary",
                extra={
                    "rows": totals.rows,
                    "batches": totals.batches,
                    "objects": totals.objects,
                    "bytes": totals.bytes,
                    "seconds": round(duration, 3),
                    "longest_transaction_seconds": round(totals.longest_transaction_seconds, 4),
                    "standby_wait_seconds": round(archiver.standbys.held_seconds, 1),
                },
            )
            reason = Reason.COMPLETED if totals.rows else Reason.NOTHING_TO_ARCHIVE
            if not totals.rows and stopped == "maxRunTime":  # rows were due, but a standby held every batch
                reason = Reason.STANDBY_BEHIND
            message = (
                f"{totals.rows} rows in {totals.batches} batches ({totals.bytes} bytes) archived from "
                f"{settings.relation} in {duration:.1f}s"
                + archiver.standbys.waited_note()
                + ("; stopped at maxRunTime, the rest goes next run" if stopped == "maxRunTime" else "")
                + (f"; {len(cleaned)} leftovers of crashed runs removed" if cleaned else "")
            )
            self._finish(ctx, conn, settings, info, reason, message, started, duration, totals)
            return message

    @staticmethod
    def _standby_status(ctx: RunContext, running: str) -> Callable[[str | None], None]:
        """Progressing says when batches wait for a standby, and Running again once they resume; at most
        one wait every STANDBY_STATUS_INTERVAL seconds is written, so a lag that hovers at the limit
        does not write status at every batch. Informative: a failed write is logged, the run goes on."""
        last_written = -STANDBY_STATUS_INTERVAL
        waiting_shown = False

        def show(held: str | None) -> None:
            nonlocal last_written, waiting_shown
            try:
                if held and time.monotonic() - last_written >= STANDBY_STATUS_INTERVAL:
                    ctx.update_status([Condition("Progressing", "True", Reason.WAITING_FOR_STANDBY, held)])
                    last_written, waiting_shown = time.monotonic(), True
                elif held is None and waiting_shown:
                    ctx.update_status([Condition("Progressing", "True", Reason.RUNNING, running)])
                    waiting_shown = False
            except CellarError as exc:
                log.warning("could not write the standby wait to status", extra={"error": str(exc)})

        return show

    @contextlib.contextmanager
    def _counting_due(
        self, settings: ArchiveSettings, info: TableInfo, cutoff: datetime, progress: ProgressReporter
    ) -> Iterator[None]:
        """Count the rows due (the progress total) on a connection of its own while the batches run.

        The batches need nothing from the count, and on a large table it takes a while (an index scan
        of every due row): before them, it delayed the first batch by that long. A count that fails
        leaves progress without a total; a run that ends first cancels it. From ESTIMATE_FROM_ROWS
        rows due the total is the planner's estimate (see _count_due).
        """
        if self.open_connection is None:  # not set by run(): no second connection to count on
            yield
            return
        try:
            conn = self.open_connection()
        except CellarError as exc:  # a full max_connections, say: the batches may still have theirs
            log.warning(
                "could not open a connection to count the rows due; progress shows no total", extra={"error": str(exc)}
            )
            yield
            return
        started = time.monotonic()

        def count() -> None:
            try:
                due, estimated = self._count_due(conn, settings, info, cutoff)
            except psycopg.Error as exc:
                if not stopping.is_set():
                    log.warning(
                        "could not count the rows due; progress shows no total", extra={"error": redact(str(exc))}
                    )
                return
            progress.set_total(due)
            log.info(
                "rows due",
                extra={"rows": due, "estimated": estimated, "seconds": round(time.monotonic() - started, 3)},
            )

        stopping = threading.Event()
        counter = threading.Thread(target=count, name="archive-count", daemon=True)
        counter.start()
        try:
            yield
        finally:
            stopping.set()
            if counter.is_alive():
                conn.cancel_safe()
            counter.join()
            conn.close()

    def _count_due(
        self, conn: Connection, settings: ArchiveSettings, info: TableInfo, cutoff: datetime
    ) -> tuple[int, bool]:
        """The progress total, and whether it is the planner's estimate rather than a count.

        Counting reads every due row's index entry: on the first run over years of rows, millions of them,
        on the primary, beside the batches. The
        planner's estimate, from the table's statistics, is free and close enough for a rate and an ETA,
        so it is the total from ESTIMATE_FROM_ROWS rows on. Below, when rows of the table are held (the
        planner cannot see which), or when the timestamp column has no statistics yet (the planner would
        guess a third of the table), the rows are counted. Without held rows the count needs no per-row
        look-up in the holds table (half the time of the count on the benchmark's table).
        """
        held_row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM cellar.archive_holds WHERE relation = %s)", (settings.relation,)
        ).fetchone()
        held = bool(held_row and held_row[0])
        due = sql.SQL("FROM {} WHERE {}").format(
            table_name(settings), eligible_condition(settings, info, cutoff, holds=held)
        )
        if not held and has_timestamp_statistics(conn, info):
            plan: Any = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 {}").format(due)).fetchone()
            estimate = int(plan[0][0]["Plan"]["Plan Rows"]) if plan else 0
            if estimate >= ESTIMATE_FROM_ROWS:
                conn.rollback()
                return estimate, True
        row = conn.execute(sql.SQL("SELECT count(*) {}").format(due)).fetchone()
        conn.rollback()
        return (int(str(row[0])) if row else 0), False

    def _oldest(self, conn: Connection, settings: ArchiveSettings, info: TableInfo) -> str | None:
        row = conn.execute(
            sql.SQL("SELECT min({})::timestamptz FROM {}").format(
                sql.Identifier(info.timestamp_column.name), table_name(settings)
            )
        ).fetchone()
        conn.rollback()
        return format_time(row[0]) if row and row[0] else None  # type: ignore[arg-type]

    def _finish(
        self,
        ctx: RunContext,
        conn: Connection,
        settings: ArchiveSettings,
        info: TableInfo,
        reason: Reason,
        message: str,
        started: datetime,
        duration: float,
        totals: RunTotals,
    ) -> None:
        all_time = ledger.totals(conn, settings.relation)
        conn.rollback()
        ctx.update_status(
            [
                Condition("Progressing", "False", reason, message),
                Condition("ArchiveSucceeded", "True", reason, message),
                Condition("Ready", "True", reason, message),
            ],
            fields={
                "lastRun": ArchiveRun(
                    ctx.run_id,
                    format_time(started),
                    completion_time=format_time(datetime.now(UTC)),
                    duration_seconds=round(duration, 3),
                    reason=reason,
                    message=message,
                    rows=totals.rows,
                    bytes=totals.bytes,
                    batches=totals.batches,
                    longest_transaction_seconds=round(totals.longest_transaction_seconds, 3),
                ).to_status(),
                "totals": ArchiveTotals(all_time.rows, all_time.bytes, all_time.batches).to_status(),
                "oldestRowTime": self._oldest(conn, settings, info),
                "progress": None,
            },
        )
        ctx.event(reason, message, action="Archive")

    def _dry_run(
        self,
        ctx: RunContext,
        conn: Connection,
        settings: ArchiveSettings,
        info: TableInfo,
        cutoff: datetime,
        scan_warning: str | None = None,
    ) -> str:
        report = dry_run_report(conn, settings, info, cutoff)
        log.info(
            "dry run", extra={"would_move": {k: v for k, v in report.items() if k != "plan"}, "plan": report["plan"]}
        )
        advice = layout_advice(
            settings.partitioning, report["rows"], report["days"], report["months"], settings.batch_rows
        )
        message = (
            f"dry run: {report['rows']} rows ({report['bytes']} bytes, {report['days']} days, "
            f"{report['oldest']} to {report['newest']}) of {settings.relation} are older than "
            f"{format_time(cutoff)}; nothing was changed."
            + (f" Warning: {scan_warning}" if scan_warning else "")
            + (f" Layout: {advice}." if advice else "")
            + f" Plan of one batch:\n{report['plan']}"
        )
        if settings.dry_run and not ctx.dry_run:  # spec.dryRun reports in status; --dry-run writes nothing
            ctx.update_status(
                [
                    Condition("ArchiveSucceeded", "True", Reason.DRY_RUN_COMPLETED, message),
                    Condition("Ready", "True", Reason.DRY_RUN_COMPLETED, message),
                ],
                fields={"cutoff": format_time(cutoff), "oldestRowTime": self._oldest(conn, settings, info)},
            )
            ctx.event(Reason.DRY_RUN_COMPLETED, message, action="Archive")
        return message

    def record_failure(self, ctx: RunContext, error: CellarError) -> None:
        now = datetime.now(UTC)
        ctx.update_status(
            [
                Condition("Progressing", "False", error.reason, str(error)),
                Condition("ArchiveSucceeded", "False", error.reason, str(error)),
                Condition("Ready", "False", error.reason, str(error)),
            ],
            fields={
                "lastRun": ArchiveRun(
                    ctx.run_id,
                    format_time(ctx.started),
                    completion_time=format_time(now),
                    reason=error.reason,
                    message=str(error),
                ).to_status(),
                "progress": None,
            },
        )
        ctx.event(error.reason, str(error), action="Archive", warning=True)


def _date(text: str, flag: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not a date or time (ISO 8601, for example 2024-01-31)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class UnarchiveJob:
    name = "unarchive"
    kind = TABLE_ARCHIVE
    description = (
        "Load archived rows of a TableArchive back (start <= timestamp < end), verifying every object; idempotent."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--from", dest="start", required=True, help="first timestamp to bring back (ISO 8601)")
        parser.add_argument("--to", dest="end", required=True, help="bring back rows older than this (ISO 8601)")
        parser.add_argument(
            "--into",
            choices=["side", "source"],
            default="side",
            help="side: a table <table>_unarchived beside the source (default); source: the table "
            "itself (those rows are then not archived again)",
        )
        parser.add_argument("--side-table", help="name of the side table (default <table>_unarchived)")
        parser.add_argument(
            "--allow-rearchive",
            action="store_true",
            help="with --into source: let the next run archive the restored rows again",
        )

    def run(self, ctx: RunContext, args: argparse.Namespace) -> str:
        start, end = _date(args.start, "--from"), _date(args.end, "--to")
        if end <= start:
            raise UsageError("--to must be after --from")
        opened = open_table(ctx)
        settings, conn, store, info = opened.settings, opened.conn, opened.store, opened.info
        with conn:
            if ctx.dry_run:
                return f"dry run: would bring back {settings.relation} rows from {args.start} to {args.end}"
            check_lag_visible(conn, settings.max_replication_lag)
            ledger.ensure_ledger(conn)
            standbys = StandbyGate(settings.max_replication_lag)
            result = unarchive(
                conn,
                store,
                settings,
                info,
                start,
                end,
                into=args.into,
                side_table=args.side_table,
                hold=not args.allow_rearchive,
                standbys=standbys,
            )
        message = (
            f"{result.rows_inserted} rows brought back into "
            f"{settings.relation if args.into == 'source' else (args.side_table or settings.table + '_unarchived')}"
            f" from {result.objects} verified objects ({result.rows_in_range} in range, "
            f"{result.rows_in_range - result.rows_inserted} already there)" + standbys.waited_note()
        )
        ctx.update_status(
            fields={
                "lastUnarchive": UnarchiveRecord(
                    format_time(datetime.now(UTC)),
                    args.start,
                    args.end,
                    args.into,
                    result.objects,
                    result.rows_inserted,
                    message,
                ).to_status()
            }
        )
        ctx.event(Reason.UNARCHIVED, message, action="Unarchive")
        return message

    def record_failure(self, ctx: RunContext, error: CellarError) -> None:
        ctx.event(error.reason, f"unarchive failed: {error}", action="Unarchive", warning=True)
