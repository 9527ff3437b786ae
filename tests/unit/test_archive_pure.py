"""The archiver's pure parts: spec parsing, type mapping, CSV -> Arrow, partitions, statement shape."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest

from common.errors import InvalidSpec, PermanentError
from jobs.archive.dry_run import layout_advice
from jobs.archive.encoding import csv_to_table, decode, encode, table_to_copy_csv
from jobs.archive.lanes import Lane, aligned_batch_end, split_into_lanes
from jobs.archive.objects import partitions, sort_batch, split_by_size
from jobs.archive.settings import LiveSettings, Tuning, live_changes, parse_archive_spec
from jobs.archive.table import Column, TableInfo

MAX_PARTITIONS_PER_BATCH = Tuning().max_partitions_per_batch

SPEC: dict[str, Any] = {
    "database": {"secretRef": {"name": "db"}},
    "storage": {
        "bucket": "archive",
        "credentials": {"accessKeyId": {"name": "s", "key": "a"}, "secretAccessKey": {"name": "s", "key": "b"}},
    },
    "table": {"name": "Orders"},
    "timestampColumn": "created_at",
    "olderThan": "400d",
}


def test_defaults() -> None:
    settings = parse_archive_spec(SPEC)
    assert (settings.relation, settings.older_than, settings.batch_rows, settings.format, settings.mode) == (
        "public.Orders",
        timedelta(days=400),
        25000,
        "Parquet",
        "Move",
    )
    assert settings.lock_timeout == timedelta(seconds=5)
    assert settings.parallelism == 2
    assert settings.max_replication_lag is None  # nothing waits for standbys unless asked
    assert not settings.allow_cascade
    limited = parse_archive_spec({**SPEC, "batch": {"maxReplicationLag": "1m30s"}})
    assert limited.max_replication_lag == timedelta(seconds=90)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"olderThan": None}, r"spec\.olderThan: required"),
        ({"olderThan": "a year"}, r"spec\.olderThan: 'a year' is not a duration"),
        ({"filter": "true; DROP TABLE x"}, r"spec\.filter: must be one boolean expression"),
        ({"format": "ORC"}, r"spec\.format: 'ORC' is not one of Parquet, CSVGzip"),
        ({"batch": {"rows": 0}}, r"spec\.batch\.rows: 0 is below the minimum 1"),
        ({"batch": {"parallelism": 9}}, r"spec\.batch\.parallelism: 9 is above the maximum 8"),
        ({"batch": {"maxReplicationLag": "30 s"}}, r"spec\.batch\.maxReplicationLag: '30 s' is not a duration"),
        ({"table": {}}, r"spec\.table\.name: required"),
    ],
)
def test_errors_name_the_field(change: dict[str, Any], message: str) -> None:
    spec = {**SPEC, **change}
    spec = {k: v for k, v in spec.items() if v is not None}
    with pytest.raises(InvalidSpec, match=message):
        parse_archive_spec(spec)


def col(
    name: str, pg_type: str, base: str, *, array: bool = False, precision: int | None = None, scale: int | None = None
) -> Column:
    return Column(name, pg_type, base, array, precision, scale)


COLUMNS = [
    col("id", "bigint", "int8"),
    col("at", "timestamp with time zone", "timestamptz"),
    col("amount", "numeric(8,2)", "numeric", precision=8, scale=2),
    col("exact", "numeric", "numeric"),
    col("note", "text", "text"),
    col("blob", "bytea", "bytea"),
    col("tags", "text[]", "text", array=True),
    col("ok", "boolean", "bool"),
    col("kind", "mood", "mood"),
]


def test_type_mapping() -> None:
    kinds = {c.name: c.arrow_kind for c in COLUMNS}
    assert kinds == {
        "id": "int64",
        "at": "timestamptz",
        "amount": "decimal",
        "exact": "string",
        "note": "string",
        "blob": "binary",
        "tags": "list:string",
        "ok": "bool",
        "kind": "string",
    }


def test_csv_from_copy_becomes_typed_arrow() -> None:
    data = (
        b'1,2024-03-01 10:00:00.123456,12.50,3.14159265358979323846,"a ""q"", b",00ff,"[""x"",null]",t,sad\n'
        b'2,2024-03-02 00:00:00,,,"",,,f,\n'
    )
    table = csv_to_table(data, COLUMNS)
    rows = table.to_pylist()
    assert rows[0]["at"] == datetime(2024, 3, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert str(rows[0]["amount"]) == "12.50"
    assert rows[0]["exact"] == "3.14159265358979323846"
    assert rows[0]["note"] == 'a "q", b'
    assert rows[0]["blob"] == b"\x00\xff"
    assert rows[0]["tags"] == ["x", None]
    assert rows[1]["note"] == ""  # an empty string is not NULL
    assert rows[1]["amount"] is None
    assert table.schema.field("at").type == pa.timestamp("us", tz="UTC")
    assert decode(encode(table, "Parquet"), "Parquet", COLUMNS).equals(table)


def test_nan_in_a_decimal_column_is_a_clear_error() -> None:
    with pytest.raises(PermanentError, match=r"column 'amount' \(numeric\(8,2\)\) holds a value that is not a decimal"):
        csv_to_table(b"1,2024-03-01 10:00:00,NaN,,,,,t,\n", COLUMNS)


def test_copy_csv_for_restore_keeps_nulls_and_empty_strings_apart() -> None:
    table = csv_to_table(b'1,2024-03-01 10:00:00,1.00,1,"",00,,t,\n2,2024-03-01 10:00:00,,,,,,f,\n', COLUMNS)
    text = table_to_copy_csv(table).decode()
    first, second = text.splitlines()
    assert ',"",' in first  # empty string stays quoted
    assert "\\x00" in first
    assert second.startswith("2,2024-03-01 10:00:00.000000Z,,,,,,false,")


def test_partitions_and_size_split() -> None:
    info = TableInfo(oid=1, columns=COLUMNS[:2], primary_key=("id",), timestamp_column=COLUMNS[1])
    table = pa.table(
        {
            "id": [1, 2, 3],
            "at": pa.array(
                [
                    datetime(2024, 1, 1, 23, tzinfo=UTC),
                    datetime(2024, 1, 2, 1, tzinfo=UTC),
                    datetime(2024, 2, 1, tzinfo=UTC),
                ],
                type=pa.timestamp("us", tz="UTC"),
            ),
        }
    )
    daily = partitions(table, parse_archive_spec({**SPEC, "partitioning": "Daily"}), info)
    assert [(p, t.num_rows) for p, t in daily] == [("2024-01-01", 1), ("2024-01-02", 1), ("2024-02-01", 1)]
    monthly = partitions(table, parse_archive_spec({**SPEC, "partitioning": "Monthly"}), info)
    assert [(p, t.num_rows) for p, t in monthly] == [("2024-01", 2), ("2024-02", 1)]
    yearly = partitions(table, parse_archive_spec({**SPEC, "partitioning": "Yearly"}), info)
    assert [(p, t.num_rows) for p, t in yearly] == [("2024", 3)]
    pieces = split_by_size(pa.table({"x": list(range(1000))}), 1000)
    assert sum(p.num_rows for p in pieces) == 1000
    assert all(p.nbytes <= 1000 for p in pieces)


@pytest.mark.parametrize(
    ("ids", "hours"),
    [
        ([1, 2, 3, 4], [1, 2, 3, 4]),  # already in order: kept as it is
        ([4, 3, 2, 1], [4, 3, 2, 1]),  # newest first
        ([7, 2, 9, 5], [3, 1, 3, 1]),  # shared timestamps: the key orders them
        ([2, 1, 3, 4], [1, 1, 2, 2]),  # in time order, but not by key where the time is shared
    ],
)
def test_a_batch_is_sorted_by_time_then_key(ids: list[int], hours: list[int]) -> None:
    info = TableInfo(oid=1, columns=COLUMNS[:2], primary_key=("id",), timestamp_column=COLUMNS[1])
    at = [datetime(2024, 1, 1, h, tzinfo=UTC) for h in hours]
    table = pa.table({"id": ids, "at": pa.array(at, type=pa.timestamp("us", tz="UTC"))}).slice(0)
    rows = sort_batch(table, info).to_pylist()
    assert [(r["at"], r["id"]) for r in rows] == sorted(zip(at, ids, strict=True))
    assert sort_batch(table.slice(0, 1), info).num_rows == 1


NEWEST = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "oldest",
    [datetime(2024, 12, 2, tzinfo=UTC), datetime(2024, 12, 2), date(2024, 12, 2)],
    ids=["timestamptz", "timestamp", "date"],
)
def test_lanes_split_the_time_from_the_oldest_to_the_newest_due_row(oldest: object) -> None:
    lanes = split_into_lanes(oldest, NEWEST, 3)
    bounds = [datetime(2024, 12, 12, tzinfo=UTC), datetime(2024, 12, 22, tzinfo=UTC)]
    # Open-ended at both ends: a row inserted during the run, older than the oldest, still has a lane.
    assert [(lane.start, lane.end) for lane in lanes] == [(None, bounds[0]), (bounds[0], bounds[1]), (bounds[1], None)]


@pytest.mark.parametrize(
    ("oldest", "count"),
    [(None, 3), (NEWEST, 3), (datetime(2024, 1, 1, tzinfo=UTC), 1)],
    ids=["nothing-due", "one-timestamp", "one-lane"],
)
def test_one_open_lane_when_there_is_nothing_to_split(oldest: object, count: int) -> None:
    assert split_into_lanes(oldest, NEWEST, count) == [Lane()]


@pytest.mark.parametrize(
    "first",
    [datetime(2024, 3, 1, 0, 0, tzinfo=UTC), datetime(2024, 3, 1, 0, 0), date(2024, 3, 1)],
    ids=["timestamptz", "timestamp", "date"],
)
def test_the_next_batch_stops_where_the_day_its_rows_reach_begins(first: object) -> None:
    # 1,000 rows over 10 days (100 a day, the first at midnight, one every 14 min 24 s): 450 more reach
    # March 15th, 11:45, so the next batch stops where that day begins and takes March 11th to 14th whole.
    last = datetime(2024, 3, 10, 23, 45, 36, tzinfo=UTC)
    assert aligned_batch_end(first, last, 1000, 450, "Daily") == datetime(2024, 3, 15, tzinfo=UTC)


def test_the_next_batch_stops_at_the_month_it_reaches_with_monthly_partitions() -> None:
    first, last = datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 21, tzinfo=UTC)  # 20 days, 2,001 rows
    assert aligned_batch_end(first, last, 2001, 2000, "Monthly") == datetime(2024, 4, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("first", "last", "rows", "partitioning"),
    [
        (datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 1, 6, tzinfo=UTC), 1000, "Daily"),  # within the day
        (datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 5, tzinfo=UTC), 1000, "None"),
        (datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC), 1000, "Daily"),  # one instant
        (datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 5, tzinfo=UTC), 1, "Daily"),
    ],
    ids=["denser-than-a-day", "no-partitions", "one-timestamp", "one-row"],
)
def test_no_stop_when_no_whole_partition_fits(first: datetime, last: datetime, rows: int, partitioning: str) -> None:
    # The first: 1,000 rows in 6 hours, so the next 1,000 end at noon of the same day; the batch's LIMIT
    # cuts it as before.
    assert aligned_batch_end(first, last, rows, 1000, partitioning) is None


def test_a_changed_spec_applies_its_pace_now_and_the_rest_next_run() -> None:
    current = parse_archive_spec(SPEC)
    changed = parse_archive_spec(
        {**SPEC, "olderThan": "30d", "batch": {"rows": 500, "pause": "1m", "parallelism": 4}, "maxRunTime": "2h"}
    )
    updated, applied, later = live_changes(current, changed)
    assert applied == {"batch.rows": "500", "batch.pause": "60s", "maxRunTime": "7200s"}
    assert later == ["olderThan", "batch.parallelism"]
    assert (updated.batch_rows, updated.pause, updated.max_run_time) == (500, timedelta(minutes=1), timedelta(hours=2))
    assert (updated.older_than, updated.parallelism) == (current.older_than, current.parallelism)
    assert live_changes(current, current)[1:] == ({}, [])


def test_a_dry_run_advises_monthly_partitions_where_a_day_is_a_small_part_of_a_batch() -> None:
    # The benchmark's table: 2,740 rows a day over 48 months, batches of 25,000 rows.
    advice = layout_advice("Daily", rows=4_000_000, days=1460, months=48, batch_rows=25_000)
    assert advice is not None
    assert "about 2740 rows" in advice
    assert "writes about 10 files of one day each" in advice
    assert "Monthly it would write one or two" in advice
    # A sparse table: the batch's window of days bounds the files; months hold 30 rows.
    sparse = layout_advice("Daily", rows=1460, days=1460, months=48, batch_rows=25_000)
    assert sparse is not None
    assert f"about {MAX_PARTITIONS_PER_BATCH} files" in sparse
    assert "Monthly it would write about 48" in sparse
    # Rows on three days: three files, and one month.
    few = layout_advice("Daily", rows=300, days=3, months=1, batch_rows=25_000)
    assert few is not None
    assert "about 3 files" in few
    assert "one or two" in few
    # A day that fills more than a quarter of a batch, or another layout: no advice.
    assert layout_advice("Daily", rows=100_000, days=10, months=1, batch_rows=25_000) is None
    assert layout_advice("Monthly", rows=4_000_000, days=1460, months=48, batch_rows=25_000) is None
    assert layout_advice("Daily", rows=0, days=0, months=0, batch_rows=25_000) is None


def test_live_settings_change_as_one_snapshot_and_the_batch_size_adapts() -> None:
    spec = {**SPEC, "batch": {"rows": 1000, "maxBytesMiB": 1}}
    live = LiveSettings(parse_archive_spec(spec))
    live.shrink_for(4 * 1024 * 1024)  # rows four times wider than the limit: a quarter of the rows
    assert live.batch_rows == 250
    live.shrink_for(512 * 1024)  # under the limit: it does not grow back within a run
    assert live.batch_rows == 250
    paced = parse_archive_spec({**spec, "batch": {"rows": 1000, "maxBytesMiB": 1, "pause": "2s"}})
    live.apply(paced)  # only the pause changed: the adapted size stays
    assert live.snapshot() == (paced, 250)
    resized = parse_archive_spec({**spec, "batch": {"rows": 400, "maxBytesMiB": 1}})
    live.apply(resized)  # a new size starts over from the spec's
    assert live.snapshot() == (resized, 400)


def test_a_batch_written_in_pieces_sums_up_as_if_held_whole() -> None:
    """What the ledger records of a batch read in pieces (iceberg_pieces.py) is what the whole batch gives."""
    from jobs.archive.batch_records import RowsSummary

    whole = pa.table({"ts": [datetime(2024, 1, d, tzinfo=UTC) for d in (3, 1, 9, 2, 7)], "id": [30, 10, 90, 20, 5]})
    pieces = [whole.slice(0, 2), whole.slice(2, 0), whole.slice(2, 3)]
    summary = RowsSummary()
    for piece in pieces:
        summary = summary.merged(RowsSummary.of(piece, "ts", "id"))
    assert summary == RowsSummary.of(whole, "ts", "id")
    assert summary == RowsSummary(5, datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 9, tzinfo=UTC), 5, 90)


def test_pieces_of_wide_rows_get_fewer_rows_in_proportion() -> None:
    from jobs.archive.iceberg_pieces import PieceLimits

    limits = PieceLimits(rows=25_000, bytes=32 * 1024 * 1024)
    assert limits.next_rows(25_000, 25_000, 5_000_000) == 25_000  # narrow rows: unchanged
    assert limits.next_rows(25_000, 25_000, 128 * 1024 * 1024) == 6_250  # four times the limit: a quarter
    assert limits.next_rows(6_250, 100, 64 * 1024 * 1024) == 50  # a short last piece is measured by its own rows
    assert limits.next_rows(10, 1, 10**12) == 1  # never below one row
