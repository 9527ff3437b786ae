"""The archive run, top to bottom: settings, checks, lock, leftovers, batches, status."""

from __future__ import annotations

import argparse
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime

import psycopg

from common.conditions import format_time
from common.errors import CellarError
from common.kube import TABLE_ARCHIVE
from common.progress import ProgressReporter
from common.reasons import Reason
from common.redact import redact
from common.run_status import RunStatus
from common.runtime import RunContext
from jobs.archive.archiver import Archiver, RunHooks, Stopped
from jobs.archive.batches import Destination, RunScope
from jobs.archive.cleanup import clean_leftovers
from jobs.archive.dry_run import report_dry_run
from jobs.archive.iceberg import PARTITIONINGS_OF, IcebergTable, NothingDue
from jobs.archive.iceberg_batches import resolve_unrecorded
from jobs.archive.layout import (
    LayoutChoice,
    ParquetLayout,
    choose_granularity,
    existing_parquet_layout,
    keep_parquet_layout,
    measure_due,
)
from jobs.archive.ledger_schema import ensure_ledger
from jobs.archive.lock_waits import CELLAR_TABLES, holders_of, lock_timeout
from jobs.archive.maintain import MaintenanceScope, maintain_after_run, take_archive_lock
from jobs.archive.objects import ObjectLayout
from jobs.archive.opening import APPLICATION, OpenedTable, open_table
from jobs.archive.parquet_schema import check_source_schema
from jobs.archive.run_end import RunEnd, record_run_end
from jobs.archive.settings import DEFAULT_TUNING, ArchiveSettings, Tuning
from jobs.archive.standbys import check_lag_visible
from jobs.archive.statements import count_due, with_array_dimensions
from jobs.archive.status import ARCHIVE_RUNS, IcebergTableState, SkippedRun
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
            return report_dry_run(ctx, opened, info, cutoff, self.tuning, scan_warning)
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
            record_run_end(ctx, opened, info, end, message)
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
        record_run_end(ctx, opened, info, end, message)
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

    def record_failure(self, ctx: RunContext, error: CellarError) -> None:
        RunStatus.of(ctx, ARCHIVE_RUNS).failed(error)
