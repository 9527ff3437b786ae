"""A batch into an Iceberg table, read and written in pieces while its transaction is open.

Each batch is one snapshot, and each snapshot costs the same whatever its rows: a manifest, a manifest list and a
metadata file written, and the catalog's commit. So an Iceberg batch is larger than a Parquet one (settings.py:
100,000 rows by default), and to hold no more memory for it, its rows are not held whole. The batch's transaction
deletes them a piece at a time (`piece_rows` each), one DELETE ... RETURNING after another, each taking the oldest
rows due from where the one before ended (the newest timestamp it took), as a lane's batches follow each other. A
statement returns its rows in the order it deleted them, which is the order of their pages on disk, not time (rows
archived leave room that later rows fill; a partitioned table's come by key); one statement per piece keeps the
pieces themselves in time order, so a partition splits at most at the edge between two pieces, and its data file
goes on across that edge (iceberg_writes.PieceFiles). A batch of four pieces within one month is one file.

Each piece is parsed, sorted and added to the batch's files on a thread of its own while the next is deleted and
read. The last file is still being finished when the lane hands the batch to its publisher and takes its next
batch; the publisher waits for it, then commits the files as one snapshot (iceberg_batches.publish_to_iceberg), in
the same order as for a batch held whole. A failure or a kill before that COMMIT rolls the rows back and leaves
the files sent so far in no snapshot: orphans, which maintenance deletes.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from common.failpoints import failpoint
from jobs.archive.batch_records import RowsSummary, WrittenRows
from jobs.archive.copy_reads import read_copy
from jobs.archive.encoding import csv_to_table
from jobs.archive.iceberg import IcebergTable
from jobs.archive.iceberg_batches import summary_of
from jobs.archive.iceberg_writes import PieceFiles
from jobs.archive.objects import sort_batch
from jobs.archive.table import Connection

BETWEEN_PIECES = "archive.iceberg-between-pieces"

# The statement that deletes a piece: up to `rows` of the rows due from `resume_from` (a timestamp; None: from
# where the lane stands), returning them as CSV.
PieceStatement = Callable[[object, int], sql.Composed]


@dataclass(frozen=True)
class PieceLimits:
    rows: int  # a piece's rows (tuning.iceberg_piece_rows)
    bytes: int  # pieces whose raw rows exceed this make the next ones smaller

    def next_rows(self, planned: int, taken: int, raw_bytes: int) -> int:
        """The rows of a batch's next piece, where pieces of `planned` rows were asked for and the last one took
        `taken` rows of `raw_bytes`: fewer, in proportion, where those exceeded the byte limit (wide rows)."""
        return max(1, taken * self.bytes // raw_bytes) if raw_bytes > self.bytes else planned


class PieceWriter:
    """Writes the pieces of the batches of one run (the lanes share it), each lane's pieces one at a time on a
    thread of their own, beside the lane's reading of the next."""

    def __init__(self, table: IcebergTable, lanes: int) -> None:
        self.table = table
        # Three a lane: a batch's last piece may still be written (and its last file wait to be finished after
        # it) while the lane's next batch writes its first.
        self._threads = ThreadPoolExecutor(max_workers=3 * max(1, lanes), thread_name_prefix="archive-iceberg-write")

    def capture(
        self, conn: Connection, statement: PieceStatement, batch_rows: int, limits: PieceLimits, batch_id: str
    ) -> tuple[WrittenRows, int]:
        """Delete the batch's rows a piece at a time and write them as data files; what was written (its last file
        possibly still being finished: the lane goes on to its next batch meanwhile), and the rows' raw bytes. A
        lane holds at most two pieces at once besides the batch's open file: the one being written and the one
        arriving."""
        info = self.table.info
        files = self.table.piece_files(batch_id)
        data_files: list[Any] = []
        summary, raw_bytes, pieces, piece_rows = RowsSummary(), 0, 0, limits.rows
        writing: Future[list[Any]] | None = None
        try:
            while summary.rows < batch_rows:
                wanted = min(piece_rows, batch_rows - summary.rows)
                with conn.cursor() as cursor, cursor.copy(statement(summary.max_ts, wanted)) as copy:
                    piece = read_copy(conn, copy)
                if not piece:
                    break
                raw_bytes += len(piece)
                pieces += 1
                rows = sort_batch(csv_to_table(piece, info.columns), info)
                piece_rows = limits.next_rows(piece_rows, rows.num_rows, len(piece))
                del piece
                summary = summary.merged(summary_of(self.table, rows))
                if writing is not None:
                    data_files += writing.result()
                    failpoint(BETWEEN_PIECES)
                writing = self._threads.submit(self.table.write_piece, files, rows, batch_id)
                if rows.num_rows < wanted:  # no more due in the lane (or the rest held locked)
                    break
                del rows
            # The batch's last file is finished after its last piece, on a thread of its own: the lane goes on.
            writing = self._threads.submit(self._finished, files, writing, batch_id)
        except BaseException:
            if writing is not None:  # the piece in flight ends before the rollback; the open file is dropped
                writing.exception()
            files.discard()
            raise
        return WrittenRows(data_files, writing, summary, pieces), raw_bytes

    def _finished(self, files: PieceFiles, last_piece: Future[list[Any]] | None, batch_id: str) -> list[Any]:
        """The files of the batch's last piece, and its last file, finished once that piece is written. (It waits
        for a task submitted before it, so it never holds a thread that task needs: the pool takes tasks in
        order.)"""
        written = last_piece.result() if last_piece is not None else []
        return written + self.table.finish_pieces(files, batch_id)

    def close(self) -> None:
        self._threads.shutdown(wait=True)
