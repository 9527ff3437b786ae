"""A batch's data files as iceberg_writes.py makes them: the same partitions as PyIceberg's own append finds, and a
table that reads back every row, in a local catalog (SQLite and a directory: PyIceberg's own, no server)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from jobs.archive.iceberg_writes import DataFileWriter, PieceFiles, _partitions, _time_partitions

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


def _table(tmp_path: Path, transform: str, catalog_class: Any = None) -> Any:
    """A table in a local catalog: PyIceberg's SqlCatalog, or `catalog_class` (a subclass of it)."""
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.transforms import parse_transform
    from pyiceberg.types import LongType, NestedField, TimestamptzType

    catalog = (catalog_class or SqlCatalog)(
        "local", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/warehouse"
    )
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


# Instants around the epoch and far from it, on and just beside day, month and year boundaries, and a null.
EDGE_MICROS = [0, -1, 1, -86_400_000_000, -86_400_000_001, 86_399_999_999]
EDGE_MICROS += [-2_208_988_800_000_000, 7_258_118_399_999_999]  # 1900-01-01, the last instant of 2199


@pytest.mark.parametrize("transform", ["day", "month", "year"])
@pytest.mark.parametrize(
    ("arrow_type", "iceberg_type"),
    [
        (pa.timestamp("us", tz="UTC"), "timestamptz"),
        (pa.timestamp("us"), "timestamp"),
        (pa.timestamp("us", tz="+00:00"), "timestamptz"),
        (pa.date32(), "date"),
    ],
)
def test_the_time_partitions_are_pyicebergs(transform: str, arrow_type: pa.DataType, iceberg_type: str) -> None:
    """cellar's year, month and day of a column (Arrow's kernels) equal PyIceberg's transforms, before 1970 too."""
    import random

    from pyiceberg.transforms import parse_transform
    from pyiceberg.types import DateType, TimestampType, TimestamptzType

    generator = random.Random(38)
    micros = EDGE_MICROS + [generator.randint(-4_000_000_000_000_000, 7_000_000_000_000_000) for _ in range(2000)]
    if pa.types.is_date(arrow_type):
        column = pa.array([*(m // 86_400_000_000 for m in micros), None], pa.int32()).cast(pa.date32())
    else:
        column = pa.array([*micros, None], pa.int64()).cast(arrow_type)
    source = {"timestamptz": TimestamptzType(), "timestamp": TimestampType(), "date": DateType()}[iceberg_type]
    parsed = parse_transform(transform)
    ours = _time_partitions(parsed, column)
    assert ours is not None
    assert ours.to_pylist() == parsed.pyarrow_transform(source)(column).to_pylist()
    # PyIceberg's own for any other transform, or a zone other than UTC (which cellar's rows never carry).
    assert _time_partitions(parse_transform("hour"), column) is None
    if not pa.types.is_date(arrow_type):
        assert _time_partitions(parsed, column.cast(pa.timestamp("us", tz="America/Los_Angeles"))) is None


def test_the_files_written_hold_every_row_once_in_its_partition(tmp_path: Path) -> None:
    table = _table(tmp_path, "day")
    rows = _rows(1000, timedelta(hours=5))
    data_files = DataFileWriter(table.metadata).write(table.io, rows)
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


def _every_kind_of_column(count: int) -> pa.Table:
    """Rows of the Arrow types cellar's encoding gives PostgreSQL's (arrow_types.py), nulls among them."""
    from decimal import Decimal

    def some(values: list[Any]) -> list[Any]:
        return [None if n % 7 == 3 else value for n, value in enumerate(values)]

    return pa.table(
        {
            "id": pa.array(range(count), pa.int64()),
            "created_at": pa.array([START + timedelta(hours=5 * n) for n in range(count)], pa.timestamp("us", "UTC")),
            "small": pa.array(some([n % 300 - 150 for n in range(count)]), pa.int16()),
            "ratio": pa.array(some([n / 7 for n in range(count)]), pa.float32()),
            "amount": pa.array(some([Decimal(n) / 100 for n in range(count)]), pa.decimal128(12, 2)),
            "status": pa.array(some([f"status {n % 4}" for n in range(count)]), pa.string()),
            "paid": pa.array(some([n % 2 == 0 for n in range(count)]), pa.bool_()),
            "seen": pa.array(
                some([START.replace(tzinfo=None) + timedelta(minutes=n) for n in range(count)]), pa.timestamp("us")
            ),
            "tags": pa.array(some([[n % 5, None, -n % 9] for n in range(count)]), pa.list_(pa.int16())),
            "point": pa.array(
                some([{"x": n, "label": f"p{n}"} for n in range(count)]),
                pa.struct([pa.field("x", pa.int16()), pa.field("label", pa.string())]),
            ),
            "weird name!": pa.array(some([f"w{n}" for n in range(count)]), pa.string()),
        }
    )


def _as_pyiceberg_tasks(writer: Any, rows: pa.Table) -> Iterator[Any]:
    """The files `writer` writes of `rows` as tasks for PyIceberg's own writer."""
    from pyiceberg.io.pyarrow import pyarrow_to_schema
    from pyiceberg.table import WriteTask

    schema = pyarrow_to_schema(rows.schema, name_mapping=writer.schema.name_mapping, format_version=2)
    for number, task in enumerate(writer._tasks(rows)):
        yield WriteTask(uuid.uuid4(), number, schema, task.rows.to_batches(), partition_key=task.partition_key)


def _parquet_schema(parquet_file: Any) -> str:
    """The file's Parquet schema as text (names, field ids, types, repetition), without its Python object's id."""
    return str(parquet_file.schema).split("\n", 1)[1]


def test_the_files_are_those_pyiceberg_writes_with_the_same_statistics(tmp_path: Path) -> None:
    """Column for column, the data files cellar writes are PyIceberg's own: the same Parquet schema (names, field
    ids, types, repetition), the same rows, the same partitions and column statistics."""
    import pyarrow.parquet as pq
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.io.pyarrow import write_file
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.transforms import DayTransform

    rows = _every_kind_of_column(600)
    catalog = SqlCatalog("local", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/warehouse")
    catalog.create_namespace("archive")
    table = catalog.create_table("archive.everything", rows.schema)
    day = PartitionSpec(PartitionField(2, 1000, DayTransform(), "created_at_day"))
    with table.update_spec() as update:
        update.add_field("created_at", DayTransform(), "created_at_day")
    table = catalog.load_table("archive.everything")
    assert table.metadata.spec().fields[0].transform == day.fields[0].transform

    writer = DataFileWriter(table.metadata)
    ours = sorted(writer.write(table.io, rows), key=lambda data_file: str(data_file.partition))
    theirs = sorted(
        write_file(table.io, table.metadata, _as_pyiceberg_tasks(writer, rows)),
        key=lambda data_file: str(data_file.partition),
    )
    assert len(ours) == len(theirs) > 100
    for mine, pyiceberg in zip(ours, theirs, strict=True):
        assert mine.partition == pyiceberg.partition
        for statistic in ("record_count", "value_counts", "null_value_counts", "nan_value_counts"):
            assert getattr(mine, statistic) == getattr(pyiceberg, statistic), statistic
        assert mine.lower_bounds == pyiceberg.lower_bounds
        assert mine.upper_bounds == pyiceberg.upper_bounds
        assert mine.file_size_in_bytes == Path(mine.file_path.removeprefix("file://")).stat().st_size
        mine_file = pq.ParquetFile(mine.file_path.removeprefix("file://"))
        pyiceberg_file = pq.ParquetFile(pyiceberg.file_path.removeprefix("file://"))
        assert _parquet_schema(mine_file) == _parquet_schema(pyiceberg_file)
        assert mine_file.read().equals(pyiceberg_file.read())


def test_a_partition_larger_than_the_target_file_size_is_split_and_every_row_kept(tmp_path: Path) -> None:
    from pyiceberg.table import TableProperties

    table = _table(tmp_path, "month")
    with table.transaction() as transaction:
        transaction.set_properties({TableProperties.WRITE_TARGET_FILE_SIZE_BYTES: "4096"})
    rows = _rows(3000, timedelta(minutes=10))  # about three weeks: one or two months, 48 KB of buffers
    data_files = DataFileWriter(table.metadata).write(table.io, rows)
    months = {(stamp.year, stamp.month) for stamp in rows.column("created_at").to_pylist()}
    assert len(data_files) > 4 * len(months)  # several files a month
    assert len({data_file.partition for data_file in data_files}) == len(months)
    assert sum(data_file.record_count for data_file in data_files) == rows.num_rows
    with table.transaction() as transaction, transaction.update_snapshot().fast_append() as append:
        for data_file in data_files:
            append.append_data_file(data_file)
    assert sorted(table.scan().to_arrow().column("id").to_pylist()) == list(range(3000))


def _append(table: Any, data_files: list[Any]) -> None:
    with table.transaction() as transaction, transaction.update_snapshot().fast_append() as append:
        for data_file in data_files:
            append.append_data_file(data_file)


def _written_in_pieces(table: Any, rows: pa.Table, piece_rows: int) -> tuple[list[Any], list[int]]:
    """`rows` written as PieceFiles a piece of `piece_rows` at a time: every DataFile, and how many each piece
    finished."""
    files = PieceFiles(DataFileWriter(table.metadata), table.io)
    finished_by_piece = []
    data_files: list[Any] = []
    for start in range(0, rows.num_rows, piece_rows):
        finished = files.write(rows.slice(start, piece_rows))
        finished_by_piece.append(len(finished))
        data_files += finished
    return data_files + files.close(), finished_by_piece


def _warehouse_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "warehouse").rglob("*.parquet"))


def test_pieces_in_time_order_make_a_file_per_partition_not_per_piece(tmp_path: Path) -> None:
    table = _table(tmp_path, "month")
    rows = _rows(3000, timedelta(hours=1))  # 30 Dec to 4 May: six months, 3,000 rows in ten pieces
    data_files, finished_by_piece = _written_in_pieces(table, rows, 300)
    months = {(stamp.year, stamp.month) for stamp in rows.column("created_at").to_pylist()}
    assert len(data_files) == len({data_file.partition for data_file in data_files}) == len(months) == 6
    assert len(_warehouse_files(tmp_path)) == 6
    assert 0 in finished_by_piece  # a piece within one month finished no file: its month went on
    assert sum(data_file.record_count for data_file in data_files) == 3000
    _append(table, data_files)
    read = table.scan().to_arrow().sort_by("id")
    assert read.column("id").to_pylist() == list(range(3000))
    assert read.column("created_at").to_pylist() == rows.column("created_at").to_pylist()
    january = table.scan(
        row_filter="created_at >= '2025-01-01T00:00:00+00:00' AND created_at < '2025-02-01T00:00:00+00:00'"
    )
    assert len(list(january.plan_files())) == 1
    assert january.to_arrow().num_rows == 31 * 24


def test_pieces_files_end_at_the_target_file_size_and_out_of_order_rows_start_new_files(tmp_path: Path) -> None:
    from pyiceberg.table import TableProperties

    table = _table(tmp_path, "year")
    with table.transaction() as transaction:
        transaction.set_properties({TableProperties.WRITE_TARGET_FILE_SIZE_BYTES: "4096"})
    rows = _rows(2000, timedelta(minutes=10))  # 2024 and 2025, 32 KB of buffers
    data_files, _ = _written_in_pieces(table, rows, 250)
    assert len(data_files) > 4
    assert all(data_file.record_count * 16 <= 4096 for data_file in data_files)
    # Rows that go back to a year a piece had left start a file of it again, and no row is lost.
    shuffled = _rows(2000, timedelta(days=1), shuffled=True)
    (tmp_path / "second").mkdir()
    more, _ = _written_in_pieces(_table(tmp_path / "second", "year"), shuffled, 400)
    assert len({data_file.partition for data_file in more}) < len(more)
    assert sum(data_file.record_count for data_file in data_files + more) == 4000
    _append(table, data_files)
    assert sorted(table.scan().to_arrow().column("id").to_pylist()) == list(range(2000))


def test_a_discarded_batch_of_pieces_sends_its_open_file_nowhere(tmp_path: Path) -> None:
    table = _table(tmp_path, "year")
    files = PieceFiles(DataFileWriter(table.metadata), table.io)
    assert files.write(_rows(100, timedelta(minutes=1))) == []  # one year: its file stays open
    files.discard()
    assert _warehouse_files(tmp_path) == []
    assert files.close() == []
