"""The source's columns change between runs: a column added, one dropped, an integer widened to bigint are followed
(Parquet: newer files carry them, DuckDB merges by name; Iceberg: the table's schema evolves), a type that cannot be
followed (text to integer) is refused with SchemaMismatch before any row moves, and rows archived before a change
come back equal into the changed table, an added column taking its default. Read back by DuckDB and PyIceberg."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.integration.archive_helpers import dsn, ids_in_table, list_all, setup_archive
from tests.integration.environments import ArchiveEnv
from tests.integration.iceberg_helpers import (
    duckdb_over_minio,
    iceberg_catalog,
    metadata_location,
    setup_iceberg_archive,
)

pytestmark = pytest.mark.integration

FIRST = 300  # rows archived before the change (ids 1..300), in January 2025
LATER = 200  # rows archived after it (ids 1001..1200), in March 2025


def make_orders(env: ArchiveEnv) -> list[tuple[Any, ...]]:
    """orders(id, created_at, qty integer, note text): FIRST old rows; their (id, created_at, qty) as they were."""
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, qty integer NOT NULL, "
            "note text)"
        )
        conn.execute(
            "INSERT INTO orders SELECT g, timestamptz '2025-01-01 00:00+00' + g * interval '1 hour', g * 7, "
            "'note ' || g FROM generate_series(1, %s) g",
            (FIRST,),
        )
        return conn.execute("SELECT id, created_at::text, qty::bigint FROM orders ORDER BY id").fetchall()


def change_the_source(env: ArchiveEnv) -> None:
    """A column added (with a default), one dropped, qty widened to bigint; then LATER old rows that use them."""
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("ALTER TABLE orders ADD COLUMN region text NOT NULL DEFAULT 'eu'")
        conn.execute("ALTER TABLE orders DROP COLUMN note")
        conn.execute("ALTER TABLE orders ALTER COLUMN qty TYPE bigint")
        conn.execute(
            "INSERT INTO orders (id, created_at, qty, region) SELECT 1000 + g, timestamptz '2025-03-01 00:00+00' + "
            "g * interval '1 hour', 5000000000 + g, 'us' FROM generate_series(1, %s) g",
            (LATER,),
        )


def refuse_text_to_integer(env: ArchiveEnv, data_prefix: str) -> None:
    """region text -> integer: SchemaMismatch naming the column, and nothing moved (rows, objects)."""
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("ALTER TABLE orders ALTER COLUMN region DROP DEFAULT")
        conn.execute("ALTER TABLE orders ALTER COLUMN region TYPE integer USING 7")
        conn.execute("INSERT INTO orders VALUES (5000, timestamptz '2025-04-01 00:00+00', 1, 7)")
    objects = {o["Key"] for o in list_all(env.s3, env.bucket, data_prefix)}
    assert env.run() == 3
    failed = env.conditions("TableArchive", "orders")["ArchiveSucceeded"]
    assert failed["reason"] == "SchemaMismatch"
    assert "region (" in failed["message"]
    assert "Nothing was moved" in failed["message"]
    assert 5000 in ids_in_table(env.database)
    assert {o["Key"] for o in list_all(env.s3, env.bucket, data_prefix)} == objects


def back_equal(env: ArchiveEnv, before: list[tuple[Any, ...]]) -> None:
    """Unarchive January into the changed source: the rows as they were, region at its default."""
    assert env.run("unarchive", "--from", "2025-01-01", "--to", "2025-02-01", "--into", "source") == 0
    with psycopg.connect(dsn(env.database)) as conn:
        back = conn.execute(
            "SELECT id, created_at::text, qty, region FROM orders WHERE id <= %s ORDER BY id", (FIRST,)
        ).fetchall()
    assert back == [(*row, "eu") for row in before]


def test_parquet_archive_follows_added_dropped_and_widened_columns(archive_env: ArchiveEnv) -> None:
    env = archive_env
    before = make_orders(env)
    setup_archive(env, partitioning="Monthly", batch={"rows": 100})
    assert env.run() == 0
    change_the_source(env)
    assert env.run() == 0
    assert ids_in_table(env.database) == set()

    duck = duckdb_over_minio(env)
    files = f"s3://{env.bucket}/test/public.orders/*/*.parquet"
    found = duck.execute(
        "SELECT count(*), count(note), count(region), sum(qty), typeof(any_value(qty)) "
        f"FROM read_parquet('{files}', union_by_name = true)"
    ).fetchone()
    later_qty = sum(5000000000 + g for g in range(1, LATER + 1))
    assert found == (FIRST + LATER, FIRST, LATER, sum(r[2] for r in before) + later_qty, "BIGINT")
    back_equal(env, before)
    refuse_text_to_integer(env, "test/public.orders/")


def test_iceberg_table_schema_follows_added_dropped_and_widened_columns(archive_env: ArchiveEnv) -> None:
    env = archive_env
    before = make_orders(env)
    setup_iceberg_archive(env, batch={"rows": 100}, iceberg={"partitionBy": "month"})
    assert env.run() == 0
    change_the_source(env)
    assert env.run() == 0
    assert ids_in_table(env.database) == set()

    table = iceberg_catalog(env).load_table(("public", "orders"))
    fields = {f.name: f for f in table.schema().fields}
    assert str(fields["qty"].field_type) == "long"
    assert not fields["region"].required  # added: the rows archived before have none
    assert not fields["note"].required  # dropped from the source: kept, null in newer rows
    rows = table.scan().to_arrow()
    assert rows.num_rows == FIRST + LATER
    assert rows.column("note").null_count == LATER
    assert rows.column("region").null_count == FIRST
    duck = duckdb_over_minio(env)
    found = duck.execute(
        f"SELECT count(*), count(note), count(region), sum(qty) FROM iceberg_scan('{metadata_location(env)}')"
    ).fetchone()
    later_qty = sum(5000000000 + g for g in range(1, LATER + 1))
    assert found == (FIRST + LATER, FIRST, LATER, sum(r[2] for r in before) + later_qty)
    back_equal(env, before)
    snapshots = len(iceberg_catalog(env).load_table(("public", "orders")).metadata.snapshots)
    refuse_text_to_integer(env, "test/public.orders/iceberg/data/")
    assert len(iceberg_catalog(env).load_table(("public", "orders")).metadata.snapshots) == snapshots
