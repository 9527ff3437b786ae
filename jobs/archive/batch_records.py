"""What a batch is while it runs and when it has run: the rows one open transaction has deleted (CapturedBatch),
its figures (BatchResult) and a run's (RunTotals). Shared by the batches of rows (batches.py), whole partitions
(partitions.py) and Iceberg appends (iceberg_batches.py)."""

from __future__ import annotations

import contextlib
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from jobs.archive.table import Connection


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
    partitions: int = 0  # of the batches: partitions archived whole (partitions.py)

    def add(self, result: BatchResult) -> None:
        self.rows += result.rows
        self.bytes += result.bytes
        self.objects += result.objects
        self.batches += 1 if result.rows else 0
        self.longest_transaction_seconds = max(self.longest_transaction_seconds, result.transaction_seconds)


@dataclass(frozen=True)
class RowsSummary:
    """What the ledger records of a batch's rows besides their objects: how many, and their oldest and newest
    timestamps and smallest and largest (first) key."""

    rows: int = 0
    min_ts: object = None
    max_ts: object = None
    min_key: object = None
    max_key: object = None

    @classmethod
    def of(cls, table: pa.Table, timestamp_column: str, key_column: str) -> RowsSummary:
        if not table.num_rows:
            return cls()
        stamps, keys = pc.min_max(table.column(timestamp_column)), pc.min_max(table.column(key_column))
        return cls(
            table.num_rows, stamps["min"].as_py(), stamps["max"].as_py(), keys["min"].as_py(), keys["max"].as_py()
        )

    def merged(self, other: RowsSummary) -> RowsSummary:
        if not other.rows:
            return self
        if not self.rows:
            return other
        return RowsSummary(
            self.rows + other.rows,
            _lesser(self.min_ts, other.min_ts),
            _greater(self.max_ts, other.max_ts),
            _lesser(self.min_key, other.min_key),
            _greater(self.max_key, other.max_key),
        )


def _lesser(a: Any, b: Any) -> Any:
    return b if a is None or (b is not None and b < a) else a


def _greater(a: Any, b: Any) -> Any:
    return b if a is None or (b is not None and b > a) else a


class WrittenRows:
    """A batch's rows written as data files of its Iceberg table, in no snapshot yet (a batch read and written in
    pieces, iceberg_pieces.py); the rows themselves are no longer held. The last file may still be being finished
    when the batch is handed to its publisher: data_files() waits for it."""

    def __init__(self, written: list[Any], last: Future[list[Any]] | None, summary: RowsSummary, pieces: int) -> None:
        self._written = written
        self._last = last
        self.summary = summary
        self.pieces = pieces

    def data_files(self) -> list[Any]:
        """Every data file of the batch, once the last is finished (raises the failure of its writing)."""
        if self._last is not None:
            last, self._last = self._last, None
            self._written = self._written + last.result()
        return self._written


@dataclass
class CapturedBatch:
    """Rows one open transaction has deleted (not yet committed): in (timestamp, key) order, or (`written`)
    already written as an Iceberg table's data files."""

    conn: Connection
    batch_id: str
    began: float
    table: pa.Table | None
    written: WrittenRows | None = None

    @property
    def rows(self) -> pa.Table:
        """The rows, where they are held (every batch but one written in pieces)."""
        if self.table is None:
            raise AssertionError(f"batch {self.batch_id}'s rows were written in pieces, not held")
        return self.table


def rollback_quietly(conn: Connection) -> None:
    with contextlib.suppress(psycopg.Error):  # a dead connection: the server rolled back on its own
        conn.rollback()
