"""The guide's steps that move a Parquet archive into an Iceberg table once ("Maintaining the table"): unarchive
into a side table, archive the side table into the Iceberg table of the source, switch the source's TableArchive to
format Iceberg. Every row once, value for value, as DuckDB and PyIceberg read the table; the Parquet prefix may then
go."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.integration.archive_helpers import archived_objects, dsn, ids_in_table, patch_spec, setup_archive
from tests.integration.environments import ArchiveEnv
from tests.integration.iceberg_helpers import (
    duckdb_over_minio,
    iceberg_catalog,
    metadata_location,
    setup_iceberg_archive,
)
from tests.integration.test_iceberg import ROWS, make_orders

ICEBERG = {"namespace": "public", "table": "orders", "partitionBy": "month"}


def rows_as_text(env: ArchiveEnv, table: str, where: str = "true") -> list[Any]:
    with psycopg.connect(dsn(env.database)) as conn:
        return conn.execute(f"SELECT t::text FROM {table} t WHERE {where} ORDER BY id").fetchall()


def test_a_parquet_archive_moves_into_an_iceberg_table_by_the_guides_steps(
    archive_env: ArchiveEnv, s3_admin: Any
) -> None:
    env = archive_env
    make_orders(env)
    originals = rows_as_text(env, "orders", f"id <= {ROWS}")
    setup_archive(env, batch={"rows": 500})
    assert env.run() == 0
    assert archived_objects(s3_admin, env.bucket), "the Parquet archive holds the old rows"
    assert len(ids_in_table(env.database)) == 10  # only the recent rows stay

    # Step 2: the archived rows into a side table, verified against their manifests.
    assert env.run("unarchive", "--from", "2024-01-01", "--to", "2026-01-01", "--side-table", "orders_back") == 0
    assert rows_as_text(env, "orders_back") == originals

    # Step 3: the side table archived into the source's Iceberg table (its namespace and name given).
    setup_iceberg_archive(env, table="orders_back", name="orders-back", batch={"rows": 500}, iceberg=ICEBERG)
    assert env.run(name="orders-back") == 0
    assert rows_as_text(env, "orders_back") == [], "every row of the side table moved"

    # Step 1 of the guide, done last here: the source's own TableArchive switched to Iceberg appends to that table.
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orders SELECT 5000 + g, timestamptz '2025-06-01 00:00:00+00' + g * interval '1 hour', 2.5, 1, "
            "'later ' || g FROM generate_series(1, 40) g"
        )
    later = rows_as_text(env, "orders", "id > 5000 AND id < 1000000")
    patch_spec(env.admin_api, env.namespace, {"format": "Iceberg", "iceberg": ICEBERG})
    assert env.run() == 0
    assert len(ids_in_table(env.database)) == 10

    # Step 4: once the engines count the rows, the Parquet prefix may go; the table does not need it.
    for key in list(archived_objects(s3_admin, env.bucket)):
        s3_admin.delete_object(Bucket=env.bucket, Key=key)
    duck = duckdb_over_minio(env)
    metadata = metadata_location(env)
    counted = duck.execute(f"SELECT count(*), count(DISTINCT id), min(id), max(id) FROM iceberg_scan('{metadata}')")
    assert counted.fetchone() == (ROWS + 40, ROWS + 40, 1, 5040), "every row once, none lost or doubled"
    table = iceberg_catalog(env).load_table(("public", "orders")).scan().to_arrow().sort_by("id")
    assert table.num_rows == ROWS + 40
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:  # value for value, as PostgreSQL prints them
        conn.execute("CREATE TABLE orders_check (LIKE orders)")
        with conn.cursor().copy("COPY orders_check (id, created_at, amount, qty, note) FROM STDIN") as copy:
            for row in table.select(["id", "created_at", "amount", "qty", "note"]).to_pylist():
                copy.write_row(tuple(row.values()))
    assert rows_as_text(env, "orders_check") == originals + later
