"""The archive run, top to bottom: settings, checks, lock, leftovers, batches, status."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import psycopg

from common.conditions import format_time
from common.errors import CellarError
from common.kube import TABLE_ARCHIVE
from common.progress import ProgressReporter
from common.reasons import Reason
from common.redact import redact
from common.run_status import RunStatus
from common.runtime import RunContext
from jobs.archive import ledger
from jobs.archive.archiver import Archiver, RunHooks, Stopped
from jobs.archive.batch_records import RunTotals
from jobs.archive.batches import Destination, RunScope
from jobs.archive.cleanup import clean_leftovers
from jobs.archive.iceberg import PARTITIONINGS_OF, IcebergTable, NothingDue
from jobs.archive.iceberg_batches import resolve_unrecorded
from jobs.archive.layout import (
    DueMeasure,
    LayoutChoice,
    ParquetLayout,
    choose_granularity,
    existing_parquet_layout,
    keep_parquet_layout,
    measure_due,
)
from jobs.archive.ledger_schema import ensure_ledger
from jobs.archive.lock_waits import CELLAR_TABLES, holders_of, lock_timeout
from jobs.archive.maintain import Maintained, MaintenanceScope, maintain_after_run, take_archive_lock
from jobs.archive.objects import ObjectLayout
from jobs.archive.opening import APPLICATION, OpenedTable, open_table
from jobs.archive.parquet_schema import check_source_schema
from jobs.archive.partitions import due_partitions
from jobs.archive.settings import DEFAULT_TUNING, ArchiveSettings, Tuning
from jobs.archive.standbys import check_lag_visible
from jobs.archive.statements import count_due, dry_run_report, oldest_row_time, with_array_dimensions
from jobs.archive.status import ARCHIVE_RUNS, ArchiveRun, ArchiveTotals, IcebergTableState, SkippedRun
from jobs.archive.table import (
    Connection,
    TableInfo,
    check_privileges,
    unindexed_timestamp_warning,
)

log = logging.getLogger(__name__)
SET_IN_ICEBERG_SPEC = "set in spec.iceberg.partitionBy"
NO_TABLE_YET = (
    "no rows of {relation} are older than {cutoff}; the Iceberg table is created (its partitionBy: Auto chosen) by "
    "the first run that has rows due"
)


def layout_advice(
    partitioning: str, rows: int, days: int, months: int, batch_rows: int, tuning: Tuning = DEFAULT_TUNING
) -> str | None:
    """Advice for a dry run when Daily partitions cut every batch into many small files, or None.

    A batch writes one file per day it holds (at most tuning.max_partitions_per_batch): where a day holds a
    quarter of a batch or less, that is four files or more per batch, each an encode, an upload and a
    write in the store, and query engines read many small files slower than a few large ones. `days` and
    `months`: how many of each hold due rows.
    """
    if partitioning != "Daily" or rows <= 0 or days <= 0 or months <= 0:
        return None
    per_day = rows / days
    if per_day * 4 > batch_rows:
        return None
    daily_files = min(math.ceil(batch_rows / per_day), days, tuning.max_partitions_per_batch)
    monthly_files = min(math.ceil(batch_rows / (rows / months)), months)
    monthly = "one or two" if monthly_files <= 1 else f"about {monthly_files}"
    return (
        f"a day holds about {round(per_day)} rows, so a batch of {batch_rows} rows writes about {daily_files} "
        f"files of one day each; with partitioning: Monthly it would write {monthly} "
        "(fewer uploads, and files that query engines read faster)"
    )


def auto_layout_note(settings: ArchiveSettings, report: dict[str, Any]) -> str:
    """What partitioning (partitionBy): Auto would choose from the rows a dry run measured, for its message."""
    iceberg = settings.iceberg
    field = "partitioning" if iceberg is None else "iceberg.partitionBy"
    if (settings.partitioning if iceberg is None else iceberg.partition_by) != "Auto" or not report["rows"]:
        return ""
    choice = choose_granularity(DueMeasure(report["rows"], report["bytes"], report["days"], report["months"]))
    return (
        f" Layout: {field}: Auto chooses {choice.partitioning if iceberg is None else choice.transform} for a new "
        f"archive ({choice.why}); an archive that exists keeps its own."
    )


@dataclass
class RunEnd:
    """How a run's batches went, for its summary, message and status."""

    started: datetime
    clock: float  # time.monotonic() when the batches' work began
    totals: RunTotals = field(default_factory=RunTotals)
    stopped: Stopped = Stopped.DONE
    duration: float = 0.0
    cleaned: int = 0  # leftovers of crashed runs removed (Parquet)
    resolved: int = 0  # Iceberg snapshots of crashed runs recorded (their rows deleted)
    standby_note: str = ""
    layout: LayoutChoice | None = None  # partitioning / partitionBy: Auto: the granularity and why
    maintenance: Maintained | str | None = None  # format: Iceberg: the maintenance at the run's end, or its failure
    table_state: IcebergTableState | None = None  # format: Iceberg: the table as the run left it

    def finished(self, archiver: Archiver, iceberg: IcebergTable | None) -> None:
        """The batches are over: the duration, and the run summary in the log."""
        self.duration = time.monotonic() - self.clock
        self.standby_note = archiver.standbys.waited_note()
        totals = self.totals
        log.info(
            "archive run summary",
            extra={
                "rows": totals.rows,
                "batches": totals.batches,
                "objects": totals.objects,
                "bytes": totals.bytes,
                "seconds": round(self.duration, 3),
                "longest_transaction_seconds": round(totals.longest_transaction_seconds, 4),
                "standby_wait_seconds": round(archiver.standbys.held_seconds, 1),
                "lock_timeouts": archiver.lock_waits.total,
                **({"iceberg_commit_retries": iceberg.commit_retries} if iceberg is not None else {}),
                **({"iceberg_schema_changes": iceberg.schema_changes} if iceberg and iceberg.schema_changes else {}),
                **({"layout": self.layout.partitioning, "layout_why": self.layout.why} if self.layout else {}),
            },
        )

    @property
    def reason(self) -> Reason:
        if self.totals.rows:
            return Reason.COMPLETED
        # Rows were due, but a standby held every batch until maxRunTime.
        return Reason.STANDBY_BEHIND if self.stopped is Stopped.MAX_RUN_TIME else Reason.NOTHING_TO_ARCHIVE

    def message(self, relation: str) -> str:
        totals = self.totals
        return (
            f"{totals.rows} rows in {totals.batches} batches ({totals.bytes} bytes) archived from "
            f"{relation} in {self.duration:.1f}s"
            + (f", {totals.partitions} of them whole partitions (detached, read once)" if totals.partitions else "")
            + self.standby_note
            + ("; stopped at maxRunTime, the rest goes next run" if self.stopped is Stopped.MAX_RUN_TIME else "")
            + (f"; {self.cleaned} leftovers of crashed runs removed" if self.cleaned else "")
            + (
                f"; {self.resolved} Iceberg snapshots of crashed runs recorded, their rows deleted"
                if self.resolved
                else ""
            )
            + self._maintenance_note()
        )

    def maintenance_fields(self, settings: ArchiveSettings) -> dict[str, Any]:
        """`lastMaintenance`, where the run maintained its Iceberg table."""
        if isinstance(self.maintenance, Maintained) and settings.iceberg is not None:
            return self.maintenance.record(settings.iceberg.identifier).as_fields()
        return {}

    def _maintenance_note(self) -> str:
        if isinstance(self.maintenance, Maintained):
            c, d = self.maintenance.compacted, self.maintenance.cleaned
            return (
                f"; maintenance: {c.files_rewritten} small files rewritten into {c.files_written}, "
                f"{d.snapshots_expired} snapshots expired, {d.files_deleted} unreferenced files deleted"
            )
        return f"; {self.maintenance}" if self.maintenance else ""


class ArchiveJob:
    name = "archive"
    kind = TABLE_ARCHIVE
    application_name = APPLICATION
    description = (
        "Move a table's old rows to Parquet files or an Iceberg table in object storage, as its TableArchive says."
    )
    open_connection: Callable[[], Connection] | None = None  # set by run(): the same database, once more

    def __init__(self, tuning: Tuning = DEFAULT_TUNING) -> None:
        self.tuning = tuning

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, ctx: RunContext, args: argparse.Namespace) -> str:
        opened = open_table(ctx, self.tuning)
        self.open_connection = opened.open_connection
        with opened.conn, opened.owning:
            try:
                return self._archive(ctx, opened)
            except psycopg.errors.LockNotAvailable as error:  # a statement outside the batches (they retry)
                relation, waited = opened.settings.relation, opened.settings.lock_timeout.total_seconds()
                raise lock_timeout(
                    f"a statement waited longer than spec.lockTimeout ({waited:g}s) for a lock on {relation} or "
                    "cellar's ledger",
                    holders_of(opened.conn, [relation, *CELLAR_TABLES]),
                ) from error

    def _archive(self, ctx: RunContext, opened: OpenedTable) -> str:
        settings, conn, info = opened.settings, opened.conn, opened.info
        cutoff = datetime.now(UTC) - settings.older_than
        info = with_array_dimensions(conn, settings, info, cutoff)  # refuses before any batch
        scan_warning = unindexed_timestamp_warning(conn, info, settings, self.tuning.unindexed_table_warning_bytes)
        if scan_warning:
            log.warning("no index on the timestamp column", extra={"detail": scan_warning})
            ctx.event(Reason.INDEX_MISSING, scan_warning, action="Archive", warning=True)
        if ctx.dry_run or settings.dry_run:
            return self._dry_run(ctx, conn, settings, info, cutoff, scan_warning)
        check_privileges(conn, info, settings)
        check_lag_visible(conn, settings.max_replication_lag)
        status = RunStatus.of(ctx, ARCHIVE_RUNS)
        if not take_archive_lock(conn, info, settings.max_run_time):
            message = f"another run holds the archive lock of {settings.relation}; this run skipped"
            skipped = SkippedRun(format_time(datetime.now(UTC)), ctx.run_id, Reason.LOCK_HELD, message)
            status.skipped(skipped, Reason.LOCK_HELD, message)
            return message
        ensure_ledger(conn)
        # Before anything is deleted: a catalog that cannot be reached, or a table of another schema, stops here.
        opened, iceberg, layout = self._destination(opened, info, cutoff)
        settings = opened.settings
        end = RunEnd(started=datetime.now(UTC), clock=time.monotonic(), layout=layout)
        running = f"archiving rows of {settings.relation} older than {format_time(cutoff)}"
        status.started(
            running,
            f"archiving {settings.relation} rows older than {format_time(cutoff)}",
            fields={"cutoff": format_time(cutoff)},
        )
        if settings.iceberg is not None and iceberg is None:  # partitionBy: Auto with nothing due to choose from
            message = NO_TABLE_YET.format(relation=settings.relation, cutoff=format_time(cutoff))
            self._finish(ctx, opened, info, end, message)
            return message
        if iceberg is not None:
            end.resolved = resolve_unrecorded(conn, iceberg, settings, info, cutoff, ctx.run_id)
        else:
            end.cleaned = len(clean_leftovers(conn, opened.store, settings, info, opened.identities))
        progress = ProgressReporter("rows", None, status.progressed)
        archiver = Archiver(
            RunScope(conn, opened.store, info, cutoff, ctx.run_id),
            settings,
            ctx.interrupts,
            self._hooks(ctx, opened, status, running, progress),
            self.tuning,
            Destination(opened.recipients, iceberg),
        )
        with self._counting_due(settings, info, cutoff, progress):
            end.totals, end.stopped = archiver.run()
        end.finished(archiver, iceberg)
        if iceberg is not None and iceberg.iceberg.maintenance.enabled and end.stopped is Stopped.DONE:
            # Not past maxRunTime: the next run (or `maintain`) does it then.
            end.maintenance = maintain_after_run(ctx, MaintenanceScope(iceberg, opened.store, conn, ctx.run_id))
        if iceberg is not None:
            end.table_state = IcebergTableState(*iceberg.state())
        message = end.message(settings.relation)
        self._finish(ctx, opened, info, end, message)
        return message

    def _hooks(
        self, ctx: RunContext, opened: OpenedTable, status: RunStatus, running: str, progress: ProgressReporter
    ) -> RunHooks:
        """What the run's batches call back into: progress, fresh connections, the live spec, standby holds."""
        return RunHooks(
            on_progress=progress.update,
            open_connection=self.open_connection,
            reread_spec=lambda: ctx.kube.get(ctx.ref).get("spec") or {},
            on_standby_hold=self._standby_status(status, running, self.tuning.standby_status_interval),
            open_reader=opened.open_reader,
        )

    def _destination(
        self, opened: OpenedTable, info: TableInfo, cutoff: datetime
    ) -> tuple[OpenedTable, IcebergTable | None, LayoutChoice | None]:
        """Where the rows go, its granularity resolved: a Parquet archive's from its layout record (chosen and
        written on the first run, partitioning: Auto), an Iceberg table opened, made or checked (partitionBy:
        Auto chosen when it is created). None for the table: partitionBy: Auto, no table, and nothing due."""
        settings = opened.settings

        def choose() -> LayoutChoice | None:
            measure = measure_due(opened.conn, settings, info, cutoff)
            return choose_granularity(measure) if measure.rows else None

        if opened.open_iceberg is not None:
            try:
                iceberg = opened.open_iceberg(info, choose)
            except NothingDue:
                return opened, None, None
            transform = iceberg.iceberg.partition_by
            return opened, iceberg, iceberg.layout or LayoutChoice(PARTITIONINGS_OF[transform], SET_IN_ICEBERG_SPEC)
        objects = ObjectLayout(opened.store, settings)
        check_source_schema(opened.store, objects, info)  # a column's type changed: refused before any row moves
        if settings.partitioning != "Auto":
            return opened, None, LayoutChoice(settings.partitioning, "set in spec.partitioning")
        where = ParquetLayout(opened.store, objects.data_prefix, settings.relation)
        layout = existing_parquet_layout(where) or choose()
        if layout is None:  # nothing due: nothing written, nothing chosen (Monthly only if rows turn up meanwhile)
            return replace(opened, settings=replace(settings, partitioning="Monthly")), None, None
        layout = keep_parquet_layout(where, layout)
        return replace(opened, settings=replace(settings, partitioning=layout.partitioning)), None, layout

    @staticmethod
    def _standby_status(status: RunStatus, running: str, interval: float) -> Callable[[str | None], None]:
        """Progressing says when batches wait for a standby, and Running again once they resume; at most
        one wait every `interval` seconds is written, so a lag that hovers at the limit does not write
        status at every batch. Informative: a failed write is logged, the run goes on."""
        last_written = -interval
        waiting_shown = False

        def show(held: str | None) -> None:
            nonlocal last_written, waiting_shown
            try:
                if held and time.monotonic() - last_written >= interval:
                    status.under_way(Reason.WAITING_FOR_STANDBY, held)
                    last_written, waiting_shown = time.monotonic(), True
                elif held is None and waiting_shown:
                    status.under_way(Reason.RUNNING, running)
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
        leaves progress without a total; a run that ends first cancels it. From
        tuning.estimate_from_rows rows due the total is the planner's estimate (statements.count_due).
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
                due, estimated = count_due(conn, settings, info, cutoff, self.tuning.estimate_from_rows)
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

    @staticmethod
    def _finish(ctx: RunContext, opened: OpenedTable, info: TableInfo, end: RunEnd, message: str) -> None:
        conn, settings, totals = opened.conn, opened.settings, end.totals
        all_time = ledger.totals(conn, settings.relation)
        conn.rollback()
        last_run = ArchiveRun(
            ctx.run_id,
            format_time(end.started),
            duration_seconds=round(end.duration, 3),
            rows=totals.rows,
            bytes=totals.bytes,
            batches=totals.batches,
            longest_transaction_seconds=round(totals.longest_transaction_seconds, 3),
            layout=end.layout.describe() if end.layout else None,
            files=totals.objects,
        )
        RunStatus.of(ctx, ARCHIVE_RUNS).succeeded(
            end.reason,
            message,
            last_run.ended(format_time(datetime.now(UTC)), end.reason, message),
            fields={
                **ArchiveTotals(all_time.rows, all_time.bytes, all_time.batches).as_fields(),
                **end.maintenance_fields(settings),
                **(end.table_state.as_fields() if end.table_state else {}),
                "oldestRowTime": oldest_row_time(conn, settings, info),
            },
        )

    def _dry_run(
        self,
        ctx: RunContext,
        conn: Connection,
        settings: ArchiveSettings,
        info: TableInfo,
        cutoff: datetime,
        scan_warning: str | None = None,
    ) -> str:
        report = dry_run_report(conn, settings, info, cutoff, self.tuning)
        whole = [p.name for p in due_partitions(conn, settings, info, cutoff)]
        log.info(
            "dry run", extra={"would_move": {k: v for k, v in report.items() if k != "plan"}, "plan": report["plan"]}
        )
        advice = layout_advice(
            settings.partitioning, report["rows"], report["days"], report["months"], settings.batch_rows, self.tuning
        )
        message = (
            f"dry run: {report['rows']} rows ({report['bytes']} bytes, {report['days']} days, "
            f"{report['oldest']} to {report['newest']}) of {settings.relation} are older than "
            f"{format_time(cutoff)}; nothing was changed."
            + (f" Warning: {scan_warning}" if scan_warning else "")
            + (f" Partitions archived whole (detached, read once, dropped): {', '.join(whole)}." if whole else "")
            + (f" Layout: {advice}." if advice else "")
            + auto_layout_note(settings, report)
            + f" Plan of one batch:\n{report['plan']}"
        )
        if settings.dry_run and not ctx.dry_run:  # spec.dryRun reports in status; --dry-run writes nothing
            RunStatus.of(ctx, ARCHIVE_RUNS).reported(
                Reason.DRY_RUN_COMPLETED,
                message,
                {"cutoff": format_time(cutoff), "oldestRowTime": oldest_row_time(conn, settings, info)},
            )
        return message

    def record_failure(self, ctx: RunContext, error: CellarError) -> None:
        RunStatus.of(ctx, ARCHIVE_RUNS).failed(error)
