"""Whole partitions read in binary (ADBC's PostgreSQL driver) against the real server: every type comes out as
the COPY CSV path writes it, value for value, and back through unarchive; values Parquet readers cannot hold
(infinity, BC) are refused on both paths with nothing dropped; a column the driver returns otherwise than
cellar stores it sends the run to COPY CSV."""

from __future__ import annotations

import psycopg
import pyarrow as pa
import pytest

from jobs.archive.arrow_reads import open_reader, readable
from jobs.archive.settings import Tuning
from jobs.archive.table import Column
from tests.integration.archive_helpers import archived_objects, dsn, ids_in_table, json_log_lines, setup_archive
from tests.integration.environments import ArchiveEnv, database_settings
from tests.integration.test_archive_types import EVERY_TYPE, rows

CSV_READS = Tuning(arrow_reads=False)


def partitioned_every_type(table: str, *, types: bool) -> str:
    """EVERY_TYPE's table as `table`, range-partitioned on created_at: 2024 (wholly past the cutoff) and the
    rest; `types`: create the types and domains too (once per database)."""
    definitions, _, body = EVERY_TYPE.partition("CREATE TABLE things (")
    columns, _, insert = body.partition(");\n")
    columns = columns.replace("id bigint PRIMARY KEY,", "id bigint,")
    return (
        (definitions if types else "")
        + f"CREATE TABLE {table} ({columns}, PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at);\n"
        + f"CREATE TABLE {table}_2024 PARTITION OF {table} FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');\n"
        + f"CREATE TABLE {table}_rest PARTITION OF {table} FOR VALUES FROM ('2025-01-01') TO (MAXVALUE);\n"
        + insert.replace("INTO things", f"INTO {table}")
    )


def one_table(env: ArchiveEnv, relation: str) -> pa.Table:
    tables = archived_objects(env.s3, env.bucket, relation).values()
    return pa.concat_tables(tables).sort_by("id")


def partition_reads(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """How each partition archived whole since the last call was read (its log line's `read`)."""
    return [line["read"] for line in json_log_lines(capsys) if line["msg"] == "partition archived whole"]


def test_every_type_read_in_binary_is_stored_as_the_csv_path_stores_it(
    archive_env: ArchiveEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    env = archive_env
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute(partitioned_every_type("things", types=True))
        conn.execute(partitioned_every_type("twin", types=False))
    before = rows(env.database, "things")
    assert before[:-1] == rows(env.database, "twin")[:-1]  # the last: now(), the moment each was made
    setup_archive(env, table="things", name="things", primaryKey=["id", "created_at"])
    setup_archive(env, table="twin", name="twin", primaryKey=["id", "created_at"])
    assert env.run(name="things") == 0  # binary, the default
    assert partition_reads(capsys) == ["binary"]
    assert env.run(name="twin", tuning=CSV_READS) == 0
    assert partition_reads(capsys) == ["csv"]
    assert ids_in_table(env.database, "things") == ids_in_table(env.database, "twin") == {5000}

    binary, csv = one_table(env, "public.things"), one_table(env, "public.twin")
    assert binary.num_rows == 51
    assert binary.schema == csv.schema
    for name in binary.column_names:  # column by column, so that a failure names it; repr: NaN equals NaN
        assert repr(binary.column(name).to_pylist()) == repr(csv.column(name).to_pylist()), name

    assert env.run("unarchive", "--from", "2000-01-01", "--to", "2100-01-01", name="things") == 0
    assert rows(env.database, "things_unarchived") == before[:-1]  # as PostgreSQL prints them


@pytest.mark.parametrize("column", ["created_at", "seen"])
@pytest.mark.parametrize("value", ["-infinity", "0044-03-15 00:00:00+00 BC"])
def test_a_value_parquet_readers_cannot_hold_is_refused_on_both_paths(
    archive_env: ArchiveEnv, column: str, value: str
) -> None:
    env = archive_env
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE events (id bigint, created_at timestamptz NOT NULL, seen timestamptz, "
            "PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at)"
        )
        conn.execute("CREATE TABLE events_old PARTITION OF events FOR VALUES FROM (MINVALUE) TO ('2024-01-01')")
        conn.execute("CREATE TABLE events_new PARTITION OF events FOR VALUES FROM ('2024-01-01') TO (MAXVALUE)")
        conn.execute(
            "INSERT INTO events SELECT g, '2023-06-01'::timestamptz + g * interval '1 day', now() "
            "FROM generate_series(1, 9) g"
        )
        stamps = {"created_at": "2023-01-01", "seen": None, column: value}
        conn.execute("INSERT INTO events VALUES (10, %(created_at)s, %(seen)s)", stamps)
    setup_archive(env, table="events", name="events", primaryKey=["id", "created_at"])
    for tuning in (Tuning(), CSV_READS):
        assert env.run(name="events", tuning=tuning) == 3
        failed = env.conditions("TableArchive", "events")["ArchiveSucceeded"]
        assert failed["reason"] == "EncodingFailed", failed
        with psycopg.connect(dsn(env.database)) as conn:
            left = conn.execute("SELECT count(*) FROM events_old").fetchone()  # detached, not dropped
            recorded = conn.execute("SELECT count(*) FROM cellar.archive_ledger").fetchone()
        assert (left, recorded) == ((10,), (0,))
        if column == "created_at":  # found before any read, on either path
            assert "1 rows have a created_at outside the years 1 to 9999" in failed["message"]
        elif tuning.arrow_reads:  # the CSV reader's own words otherwise
            assert "column 'seen' (timestamp with time zone) holds a value outside the years" in failed["message"]


def test_a_column_the_driver_types_otherwise_is_found_before_any_read(archive_env: ArchiveEnv) -> None:
    reader = open_reader(database_settings(archive_env.database), application_name="cellar-test")
    try:
        as_int4 = [Column("n", "integer", "int4", False, None, None)]
        assert readable(reader, "SELECT 1::int4 AS n LIMIT 0", as_int4) is None
        why = readable(reader, "SELECT 1::int8 AS n LIMIT 0", as_int4)
        assert why is not None
        assert "arrived as int64" in why
    finally:
        reader.close()
