"""Whole partitions into an Iceberg table, several to a snapshot.

A snapshot costs a manifest, a manifest list, a metadata file and the catalog's commit, whatever it holds; a
partition of a month's rows is often less work than that. So a worker takes due partitions one after another into
one PostgreSQL transaction (each locked, read, its rows written to data files as partitions.py reads them), until
the group holds batch.rows rows, batch.maxBytesMiB of them, or MAX_PARTITIONS_A_SNAPSHOT partitions, or the run
is asked to stop; then one snapshot adds the group's files, one ledger row records it, the partitions are
dropped, and the transaction commits. A kill before that COMMIT leaves every partition of the group detached with
all its rows and, maybe, a snapshot no ledger row records: the next run deletes that snapshot's rows from the
detached partitions by primary key while recording it (iceberg_batches.resolve_unrecorded), then reads what is
left of each, so nothing is appended twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pyarrow as pa

from jobs.archive import ledger
from jobs.archive.batch_records import RowsSummary
from jobs.archive.iceberg import AppendedSnapshot, IcebergTable
from jobs.archive.iceberg_batches import snapshot_entry, summary_of
from jobs.archive.settings import ArchiveSettings
from jobs.archive.table import Connection

# Each partition in the group keeps its locks (the table's, its indexes', its TOAST table's) until the COMMIT;
# PostgreSQL's shared lock table holds max_locks_per_transaction (64 by default) a connection.
MAX_PARTITIONS_A_SNAPSHOT = 12


class PartitionGroup:
    """The partitions one snapshot adds: their rows' data files, written as each partition is read."""

    def __init__(self, table: IcebergTable, settings: ArchiveSettings, batch_id: str) -> None:
        self.table, self.settings, self.batch_id = table, settings, batch_id
        self.summary = RowsSummary()
        self._raw_bytes = 0
        self._data_files: list[Any] = []
        self._files = table.piece_files(batch_id)

    def add(self, rows: pa.Table) -> tuple[int, int]:
        """A read of a partition's rows (in time order) added to the group's data files. The group's files and
        bytes are counted once it is published, not per read: a file may hold rows of several partitions."""
        self._data_files.extend(self.table.write_piece(self._files, rows, self.batch_id))
        self.summary = self.summary.merged(summary_of(self.table, rows))
        self._raw_bytes += rows.nbytes
        return 0, 0

    def full(self, partitions: int) -> bool:
        """Whether a group of `partitions` partitions, with the rows added so far, takes no more."""
        return (
            partitions >= MAX_PARTITIONS_A_SNAPSHOT
            or self.summary.rows >= self.settings.batch_rows
            or self._raw_bytes >= self.settings.batch_max_bytes
        )

    def publish(self, conn: Connection, cutoff: datetime, run_id: str) -> AppendedSnapshot | None:
        """Commit the group's files as one snapshot and record it in the ledger, in `conn`'s transaction; None
        where the partitions held no rows (no snapshot)."""
        self._data_files.extend(self.table.finish_pieces(self._files, self.batch_id))
        if not self._data_files:
            return None
        appended = self.table.commit_files(self._data_files, self.batch_id, run_id)
        entry = snapshot_entry(self.table, self.batch_id, appended, self.summary)
        ledger.record(conn, [entry], relation=self.settings.relation, cutoff=cutoff, mode="Move", run_id=run_id)
        return appended

    def discard(self) -> None:
        """The group failed before its snapshot: drop the file still open (files already sent are orphans that
        maintenance removes)."""
        self._files.discard()
