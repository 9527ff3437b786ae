"""A batch's data files as iceberg_writes.py makes them: the same partitions as PyIceberg's own append finds, and a
table that reads back every row, in a local catalog (SQLite and a directory: PyIceberg's own, no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from jobs.archive.iceberg_writes import _partitions, write_data_files

START = datetime(2024, 12, 30, 22, tzinfo=UTC)


def _rows(count: int, step: timedelta, *, shuffled: bool = False, nulls: bool = False) -> pa.Table:
    stamps: list[datetime | None] = [START + step * n for n in range(count)]
    if shuffled:
        stamps = stamps[1::2] + stamps[::2]
    if nulls:
        stamps[-3:] = [None, None, None]
    return pa.table(
        {"id": pa.array(range(count), pa.int64()), "created_at": pa.array(stamps, pa.timestamp("us", tz="UTC"))}
    )


def _table(tmp_path: Path, transform: str) -> Any:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.transforms import parse_transform
    from pyiceberg.types import LongType, NestedField, TimestamptzType

    catalog = SqlCatalog("local", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/warehouse")
    catalog.create_namespace("archive")
    schema = Schema(
        NestedField(1, "id", LongType(), required=False),
        NestedField(2, "created_at", TimestamptzType(), required=False),
    )
    spec = PartitionSpec(PartitionField(2, 1000, parse_transform(transform), f"created_at_{transform}"))
    return catalog.create_table("archive.orders", schema, partition_spec=spec)


def _partition_sizes(found: Any) -> dict[Any, int]:
    sizes: dict[Any, int] = {}
    for key, part in found:
        sizes[key.partition] = sizes.get(key.partition, 0) + part.num_rows
    return sizes


@pytest.mark.parametrize("transform", ["hour", "day", "month", "year", "identity"])
@pytest.mark.parametrize(("shuffled", "nulls"), [(False, False), (True, False), (False, True)])
def test_the_partitions_are_those_pyiceberg_finds(tmp_path: Path, transform: str, shuffled: bool, nulls: bool) -> None:
    from pyiceberg.io.pyarrow import _determine_partitions

    metadata = _table(tmp_path, transform).metadata
    rows = _rows(500, timedelta(hours=7), shuffled=shuffled, nulls=nulls)
    ours = list(_partitions(metadata.spec(), metadata.schema(), rows))
    theirs = [
        (p.partition_key, p.arrow_table_partition)
        for p in _determine_partitions(metadata.spec(), metadata.schema(), rows)
    ]
    assert _partition_sizes(ours) == _partition_sizes(theirs)
    assert sum(part.num_rows for _, part in ours) == rows.num_rows
    if not shuffled:  # sorted rows: one slice a partition, as many files as PyIceberg's own append writes
        assert len(ours) == len(theirs)


def test_the_files_written_hold_every_row_once_in_its_partition(tmp_path: Path) -> None:
    table = _table(tmp_path, "day")
    rows = _rows(1000, timedelta(hours=5))
    data_files = write_data_files(table.metadata, table.io, rows)
    with table.transaction() as transaction, transaction.update_snapshot().fast_append() as append:
        for data_file in data_files:
            append.append_data_file(data_file)
    days = {stamp.date() for stamp in rows.column("created_at").to_pylist()}
    assert len(data_files) == len({data_file.partition for data_file in data_files}) == len(days)
    read = table.scan().to_arrow().sort_by("id")
    assert read.column("id").to_pylist() == list(range(1000))
    assert read.column("created_at").to_pylist() == rows.column("created_at").to_pylist()
    january = table.scan(
        row_filter="created_at >= '2025-01-01T00:00:00+00:00' AND created_at < '2025-01-02T00:00:00+00:00'"
    )
    assert january.to_arrow().num_rows == 4  # 04:00, 09:00, 14:00 and 19:00
    assert len(list(january.plan_files())) == 1  # the partition values are right: the day's file alone is read
    assert sum(data_file.record_count for data_file in data_files) == 1000
