"""A batch into an Iceberg table, read and written in pieces while its transaction is open.

Each batch is one snapshot, and each snapshot costs the same whatever its rows: a manifest, a manifest list and a
metadata file written, and the catalog's commit. So an Iceberg batch is larger than a Parquet one (settings.py:
100,000 rows by default), and to hold no more memory for it, its rows are not held whole: the batch's one DELETE
... RETURNING streams them, and every `piece_rows` rows (or `piece_bytes` of them) become a piece that is parsed,
sorted and written as the table's data files on a thread of its own while the next piece arrives. The last piece
is still being written when the lane hands the batch to its publisher and takes its next batch; the publisher
waits for it, then commits the files as one snapshot (iceberg_batches.publish_to_iceberg), in the same order as
for a batch held whole. A failure or a kill before that COMMIT rolls the rows back and leaves the written files
in no snapshot: orphans, which maintenance deletes.

Pieces pay only when the rows arrive in time order (a table's rows mostly lie on disk in the order they were
written): rows out of order would have each piece write files of the same partitions again. A piece that reaches
back before a partition an earlier piece passed marks its batch interleaved, and the run's later batches are one
piece each (batches.BatchWorker._one_piece_a_batch).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg

from common.failpoints import failpoint
from jobs.archive.batch_records import RowsSummary, WrittenRows
from jobs.archive.copy_reads import PieceLimits, read_copy_pieces
from jobs.archive.encoding import csv_to_table
from jobs.archive.iceberg import IcebergTable
from jobs.archive.lanes import as_utc, period_start
from jobs.archive.objects import sort_batch
from jobs.archive.table import Connection

BETWEEN_PIECES = "archive.iceberg-between-pieces"


class PieceWriter:
    """Writes the pieces of the batches of one run (the lanes share it), each lane's pieces one at a time on its
    own thread, beside the lane's reading of the next."""

    def __init__(self, table: IcebergTable, lanes: int) -> None:
        self.table = table
        # Two a lane: a batch's last piece may still be written while the lane's next batch writes its first.
        self._threads = ThreadPoolExecutor(max_workers=2 * max(1, lanes), thread_name_prefix="archive-iceberg-write")

    def capture(
        self, conn: Connection, copy: psycopg.Copy, limits: PieceLimits, batch_id: str, partitioning: str
    ) -> tuple[WrittenRows, int]:
        """Read the COPY's rows in pieces and write each as data files; what was written (its last piece possibly
        still being written: the lane goes on to its next batch meanwhile), and the rows' raw bytes. A lane holds
        at most two pieces at once besides a last piece being written: the one being written and the one
        arriving."""
        info = self.table.info
        data_files: list[Any] = []
        summary, raw_bytes, pieces, interleaved = RowsSummary(), 0, 0, False
        writing: Future[list[Any]] | None = None
        try:
            for piece in read_copy_pieces(conn, copy, limits):
                raw_bytes += len(piece)
                pieces += 1
                rows = sort_batch(csv_to_table(piece, info.columns), info)
                del piece
                rows_summary = RowsSummary.of(rows, info.timestamp_column.name, info.primary_key[0])
                interleaved = interleaved or _interleaved(summary, rows_summary, partitioning)
                summary = summary.merged(rows_summary)
                if writing is not None:
                    data_files += writing.result()
                    failpoint(BETWEEN_PIECES)
                writing = self._threads.submit(self.table.write_data_files, rows, batch_id)
                del rows
        except BaseException:
            if writing is not None:  # the piece in flight ends (its files are orphans) before the rollback
                writing.exception()
            raise
        return WrittenRows(data_files, writing, summary, pieces, interleaved), raw_bytes

    def close(self) -> None:
        self._threads.shutdown(wait=True)


def _interleaved(before: RowsSummary, piece: RowsSummary, partitioning: str) -> bool:
    """Whether `piece` holds rows of a partition older than the newest one the pieces `before` it reached: rows
    that arrive in time order (a table's rows as they lie on disk, mostly) split at most the partition at the edge
    between two pieces; rows out of order (a partitioned table's come by key) would have each piece write files of
    the same partitions again."""
    newest, oldest = as_utc(before.max_ts), as_utc(piece.min_ts)
    if not before.rows or newest is None or oldest is None or partitioning == "None":
        return False
    return period_start(oldest, partitioning) < period_start(newest, partitioning)
