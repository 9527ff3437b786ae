"""A TableArchive's status payloads (see common.status)."""

from __future__ import annotations

from dataclasses import dataclass

from common.conditions import ConditionType
from common.reasons import Reason
from common.run_status import RunShape
from common.status import RunRecord, StatusRecord


@dataclass(frozen=True)
class ArchiveRun(RunRecord):
    """`lastRun`: the last archive run and what it moved."""

    written_to = (("tablearchives.yaml", "lastRun"),)

    rows: int | None = None
    bytes: int | None = None
    batches: int | None = None
    longest_transaction_seconds: float | None = None
    layout: str | None = None  # the archive's partition granularity, and why (partitioning / partitionBy: Auto)
    files: int | None = None  # Parquet objects, or the Iceberg table's data files, the run wrote


@dataclass(frozen=True)
class ArchiveTotals(StatusRecord):
    """`totals`: everything archived from the table so far, rebuilt from the ledger."""

    written_to = (("tablearchives.yaml", "totals"),)

    rows: int
    bytes: int
    batches: int


@dataclass(frozen=True)
class IcebergTableState(StatusRecord):
    """`icebergTable`: the Iceberg table as the last run (and its maintenance) left it, from its current snapshot."""

    written_to = (("tablearchives.yaml", "icebergTable"),)

    snapshots: int  # snapshots the table keeps (what time travel can reach)
    data_files: int
    bytes: int  # the data files' size
    current_snapshot_id: str  # a string: Iceberg's 64-bit ids lose digits as JSON numbers in some readers


@dataclass(frozen=True)
class SkippedRun(StatusRecord):
    """`lastSkipped`: a run that stepped aside (another held the table's lock)."""

    written_to = (("tablearchives.yaml", "lastSkipped"),)

    time: str
    run_id: str
    reason: Reason
    message: str


@dataclass(frozen=True)
class UnarchiveRecord(StatusRecord):
    """`lastUnarchive`: the last load back."""

    written_to = (("tablearchives.yaml", "lastUnarchive"),)

    time: str
    from_: str
    to: str
    into: str
    objects: int
    rows: int
    message: str


# A TableArchive's runs: Progressing while one runs, ArchiveSucceeded and Ready when it ends, `lastRun`.
ARCHIVE_RUNS = RunShape(
    "Archive", ConditionType.ARCHIVE_SUCCEEDED, progressing=True, ready=True, progress=True, first_record=ArchiveRun
)
# Rows loaded back: `lastUnarchive` when it is done, Events; no condition (the archive runs' are the resource's).
UNARCHIVE_RUNS = RunShape("Unarchive", None, failure_note="unarchive failed: {error}")


@dataclass(frozen=True)
class MaintenanceRecord(StatusRecord):
    """`lastMaintenance`: the last maintenance of an Iceberg archive's table."""

    written_to = (("tablearchives.yaml", "lastMaintenance"),)

    time: str
    files_rewritten: int
    files_written: int
    snapshots_expired: int
    files_deleted: int
    message: str


# Maintenance of an Iceberg table: `lastMaintenance` and Events; no condition (the archive runs' are the resource's).
MAINTAIN_RUNS = RunShape("Maintain", None, failure_note="maintenance failed: {error}")
