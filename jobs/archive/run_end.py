"""How an archive run ended: its summary in the log, its message, and the status that records it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from common.conditions import format_time
from common.reasons import Reason
from common.run_status import RunStatus
from common.runtime import RunContext
from jobs.archive import ledger
from jobs.archive.archiver import Archiver, Stopped
from jobs.archive.batch_records import RunTotals
from jobs.archive.iceberg import IcebergTable
from jobs.archive.layout import LayoutChoice
from jobs.archive.maintain import Maintained
from jobs.archive.opening import OpenedTable
from jobs.archive.settings import ArchiveSettings
from jobs.archive.statements import oldest_row_time
from jobs.archive.status import ARCHIVE_RUNS, ArchiveRun, ArchiveTotals, IcebergTableState
from jobs.archive.table import TableInfo

log = logging.getLogger(__name__)


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


def record_run_end(ctx: RunContext, opened: OpenedTable, info: TableInfo, end: RunEnd, message: str) -> None:
    """The run is over: its totals, its last run and the archive's all-time totals in status, Succeeded."""
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
