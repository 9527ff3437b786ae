"""partitioning: Auto (Parquet) and partitionBy: Auto (Iceberg), the defaults: the granularity chosen from the rows
due, kept with the archive (its layout record, its table's partition spec), said in the log and the status; files
counted by listing the bucket and read back with DuckDB, not by cellar's own figures."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from tests.integration.archive_helpers import dsn, ids_in_table, json_log_lines, list_all, patch_spec, setup_archive
from tests.integration.environments import ArchiveEnv
from tests.integration.iceberg_helpers import (
    duckdb_over_minio,
    iceberg_catalog,
    metadata_location,
    setup_iceberg_archive,
)

pytestmark = pytest.mark.integration

ROWS = 50_000
DAYS = 1278  # three and a half years


def make_orders(env: ArchiveEnv, rows: int = ROWS, days: int = DAYS) -> None:
    """`rows` orders spread evenly over `days` days, ending 40 days ago (all due at olderThan: 30d)."""
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, amount numeric(12,2), "
            "note text)"
        )
        conn.execute("CREATE INDEX ON orders (created_at)")
        conn.execute(
            "INSERT INTO orders SELECT g, now() - interval '40 days' - (%s * interval '1 day') * g / %s, "
            "round((g * 1.37)::numeric, 2), 'order ' || g FROM generate_series(1, %s) g",
            (days, rows, rows),
        )


def _data_files(env: ArchiveEnv, prefix: str) -> list[str]:
    return [o["Key"] for o in list_all(env.s3, env.bucket, prefix) if o["Key"].endswith(".parquet")]


def _summary(lines: list[dict[str, Any]]) -> dict[str, Any]:
    return next(line for line in lines if line.get("msg") == "archive run summary")


def test_auto_chooses_year_partitions_for_a_thin_table_and_keeps_them(
    archive_env: ArchiveEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    env = archive_env
    make_orders(env)
    setup_archive(env)  # partitioning unset: Auto, the CRD's default
    assert env.run() == 0
    assert ids_in_table(env.database) == set()
    keys = _data_files(env, "test/public.orders/")
    assert 1 <= len(keys) <= 48
    assert {key.split("/dt=")[1].split("/")[0] for key in keys} <= {str(y) for y in range(2020, 2031)}
    duck = duckdb_over_minio(env)
    found = duck.execute(
        f"SELECT count(*), count(DISTINCT id) FROM read_parquet('s3://{env.bucket}/test/public.orders/*/*.parquet', "
        "hive_partitioning = true)"
    ).fetchone()
    assert found == (ROWS, ROWS)

    record = json.loads(
        env.s3.get_object(Bucket=env.bucket, Key="test/_cellar_layouts/public.orders.json")["Body"].read()
    )
    assert record["partitioning"] == "Yearly"
    assert "50000 rows due" in record["why"]
    summary = _summary(json_log_lines(capsys))
    assert summary["layout"] == "Yearly"
    assert "a month holds less than 64.0 MiB" in summary["layout_why"]
    assert env.status("TableArchive", "orders")["lastRun"]["layout"].startswith("Yearly (50000 rows due")

    # A later run keeps the layout the record holds, whatever its rows measure.
    record["partitioning"] = "Monthly"
    env.s3.put_object(
        Bucket=env.bucket, Key="test/_cellar_layouts/public.orders.json", Body=json.dumps(record).encode()
    )
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("INSERT INTO orders VALUES (60001, timestamptz '2024-03-05 10:00+00', 1, 'late')")
    assert env.run() == 0
    assert [k for k in _data_files(env, "test/public.orders/") if "/dt=2024-03/" in k]
    assert env.status("TableArchive", "orders")["lastRun"]["layout"].startswith("Monthly (kept: chosen")


def test_an_archive_written_daily_keeps_daily_when_its_spec_becomes_auto(archive_env: ArchiveEnv) -> None:
    env = archive_env
    make_orders(env, rows=600, days=30)
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("UPDATE orders SET created_at = now() WHERE id > 300")  # a second run takes these
    setup_archive(env, partitioning="Daily")
    assert env.run() == 0
    assert not env.s3.list_objects_v2(Bucket=env.bucket, Prefix="test/_cellar_layouts/").get("KeyCount")
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("UPDATE orders SET created_at = now() - interval '45 days' + id * interval '1 minute'")
    patch_spec(env.admin_api, env.namespace, {"partitioning": "Auto"})
    assert env.run() == 0
    assert ids_in_table(env.database) == set()
    keys = _data_files(env, "test/public.orders/")
    labels = {key.split("/dt=")[1].split("/")[0] for key in keys}
    assert all(len(label) == len("2024-01-01") for label in labels)  # days only, never mixed with years
    record = json.loads(
        env.s3.get_object(Bucket=env.bucket, Key="test/_cellar_layouts/public.orders.json")["Body"].read()
    )
    assert record["partitioning"] == "Daily"
    assert "before Auto" in record["why"]


def test_iceberg_auto_chooses_a_year_transform_and_keeps_the_tables_spec(archive_env: ArchiveEnv) -> None:
    env = archive_env
    make_orders(env)
    setup_iceberg_archive(env)  # partitionBy unset: Auto
    assert env.run() == 0
    table = iceberg_catalog(env).load_table(("public", "orders"))
    assert [str(f.transform) for f in table.spec().fields] == ["year"]
    files = _data_files(env, "test/public.orders/iceberg/data/")
    assert 1 <= len(files) <= 48
    duck = duckdb_over_minio(env)
    found = duck.execute(f"SELECT count(*), count(DISTINCT id) FROM iceberg_scan('{metadata_location(env)}')")
    assert found.fetchone() == (ROWS, ROWS)
    layout = env.status("TableArchive", "orders")["lastRun"]["layout"]
    assert layout.startswith("Yearly (50000 rows due")
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("INSERT INTO orders VALUES (60001, timestamptz '2024-03-05 10:00+00', 1, 'late')")
    assert env.run() == 0
    assert env.status("TableArchive", "orders")["lastRun"]["layout"] == (
        "Yearly (kept: the Iceberg table's partition spec)"
    )


def test_iceberg_auto_with_nothing_due_creates_no_table_yet(archive_env: ArchiveEnv) -> None:
    env = archive_env
    make_orders(env, rows=10, days=1)
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("UPDATE orders SET created_at = now()")
    setup_iceberg_archive(env)
    assert env.run() == 0
    succeeded = env.conditions("TableArchive", "orders")["ArchiveSucceeded"]
    assert succeeded["reason"] == "NothingToArchive"
    assert "created (its partitionBy: Auto chosen) by the first run that has rows due" in succeeded["message"]
    assert not iceberg_catalog(env).table_exists(("public", "orders"))
