"""What a batch is while it runs and when it has run: the rows one open transaction has deleted (CapturedBatch),
its figures (BatchResult) and a run's (RunTotals). Shared by the batches of rows (batches.py), whole partitions
(partitions.py) and Iceberg appends (iceberg_batches.py)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import psycopg
import pyarrow as pa

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


@dataclass
class CapturedBatch:
    """Rows one open transaction has deleted (not yet committed), in (timestamp, key) order."""

    conn: Connection
    batch_id: str
    began: float
    table: pa.Table


def rollback_quietly(conn: Connection) -> None:
    with contextlib.suppress(psycopg.Error):  # a dead connection: the server rolled back on its own
        conn.rollback()
