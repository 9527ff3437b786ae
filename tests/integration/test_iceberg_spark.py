"""Apache Spark reads cellar's Iceberg archive as a data team would: Iceberg's JdbcCatalog over the PostgreSQL
tables PyIceberg's SqlCatalog keeps, S3FileIO on MinIO. After archive runs in row mode and in whole-partition mode,
Spark agrees with PostgreSQL's original rows on count, sum, min and max, and at an earlier snapshot (VERSION AS OF a
snapshot id, TIMESTAMP AS OF a time between the runs) sees what the first run had moved; DuckDB's iceberg extension
sees the same at that snapshot id."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from tests.integration.archive_helpers import dsn, ids_in_table, patch_spec
from tests.integration.environments import ArchiveEnv
from tests.integration.iceberg_helpers import (
    duckdb_over_minio,
    figures_in_spark,
    iceberg_catalog,
    metadata_location,
    setup_iceberg_archive,
    spark_reading,
)
from tests.integration.test_archive_partitions import make_events
from tests.integration.test_iceberg import figures_in_postgres, make_orders

BATCH = "cellar.batch-id"


def snapshots_by_run(env: ArchiveEnv, table: str) -> list[list[Any]]:
    """The table's batch snapshots, grouped by the run that committed them, in commit order (the compactions of
    the maintenance that ends each run carry no batch)."""
    snapshots = sorted(
        (s for s in iceberg_catalog(env).load_table(("public", table)).metadata.snapshots if s.summary.get(BATCH)),
        key=lambda s: s.sequence_number,
    )
    runs: list[list[Any]] = []
    for snapshot in snapshots:
        if not runs or runs[-1][-1].summary["cellar.run-id"] != snapshot.summary["cellar.run-id"]:
            runs.append([])
        runs[-1].append(snapshot)
    return runs


def between(first: Any, second: Any) -> str:
    """A time after snapshot `first` was committed and before `second` was, as Spark's TIMESTAMP AS OF takes it."""
    middle = (first.timestamp_ms + second.timestamp_ms) // 2
    return datetime.fromtimestamp(middle / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def test_spark_reads_a_row_mode_archive_now_and_at_an_earlier_snapshot(archive_env: ArchiveEnv, spark: Any) -> None:
    env = archive_env
    make_orders(env)
    expected = figures_in_postgres(env, "id <= 3000")
    early = figures_in_postgres(env, "id <= 3000 AND created_at < '2025-02-01'")
    setup_iceberg_archive(env, batch={"rows": 400}, iceberg={"partitionBy": "month"})
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:  # a first run takes January only
        conn.execute(
            "UPDATE orders SET created_at = created_at + interval '2000 days' WHERE created_at >= '2025-02-01'"
        )
    assert env.run() == 0
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("UPDATE orders SET created_at = created_at - interval '2000 days' WHERE id <= 3000")
    assert env.run() == 0
    assert ids_in_table(env.database) == set(range(1_000_001, 1_000_011))
    first_run, second_run = snapshots_by_run(env, "orders")
    last_of_first = first_run[-1].snapshot_id

    session = spark_reading(spark, env)
    assert figures_in_spark(session) == expected
    assert figures_in_spark(session, at=f"VERSION AS OF {last_of_first}") == early
    assert figures_in_spark(session, at=f"TIMESTAMP AS OF '{between(first_run[-1], second_run[0])}'") == early
    # Spark's view of the snapshots is the catalog's: every one cellar committed, each naming its batch.
    history = session.sql("SELECT snapshot_id, summary['cellar.batch-id'] FROM cellar.public.orders.snapshots")
    batches = {row[0]: row[1] for row in history.collect() if row[1]}
    assert set(batches) == {s.snapshot_id for s in first_run + second_run}

    duck = duckdb_over_minio(env)
    at_snapshot = duck.execute(
        "SELECT count(*), count(DISTINCT id), sum(amount), min(amount), max(amount) "
        f"FROM iceberg_scan('{metadata_location(env)}', snapshot_from_id => {last_of_first})"
    ).fetchone()
    assert at_snapshot == early


def test_spark_reads_a_whole_partition_archive_now_and_at_an_earlier_snapshot(
    archive_env: ArchiveEnv, spark: Any
) -> None:
    env = archive_env
    due = make_events(env.database, days=80, per_day=20, default=False)

    def figures(where: str) -> tuple[Any, ...]:
        with psycopg.connect(dsn(env.database)) as conn:
            found = conn.execute(
                f"SELECT count(*), count(DISTINCT id), sum(id), min(id), max(id) FROM events WHERE {where}"
            ).fetchone()
        assert found is not None
        return tuple(found)

    expected = figures("created_at < now() - interval '30 days'")
    early = figures("created_at < now() - interval '60 days'")
    assert expected[0] == len(due)
    assert 0 < early[0] < expected[0]
    setup_iceberg_archive(
        env,
        table="events",
        name="events",
        primaryKey=["id", "created_at"],
        olderThan="60d",
        iceberg={"partitionBy": "day"},
    )
    assert env.run(name="events") == 0
    patch_spec(env.admin_api, env.namespace, {"olderThan": "30d"}, name="events")
    assert env.run(name="events") == 0
    assert not due & ids_in_table(env.database, "events")
    message = env.conditions("TableArchive", "events")["ArchiveSucceeded"]["message"]
    assert "whole partitions" in message
    first_run, second_run = snapshots_by_run(env, "events")
    last_of_first = first_run[-1].snapshot_id

    session = spark_reading(spark, env)
    assert figures_in_spark(session, "public.events", "id") == expected
    assert figures_in_spark(session, "public.events", "id", f"VERSION AS OF {last_of_first}") == early
    at_time = f"TIMESTAMP AS OF '{between(first_run[-1], second_run[0])}'"
    assert figures_in_spark(session, "public.events", "id", at_time) == early
    # Iceberg's day transform, as Spark reads the table's partitions: one per archived day.
    partitions = session.sql("SELECT count(*) FROM cellar.public.events.partitions").collect()[0][0]
    assert partitions == len({(i % 80) for i in due})

    duck = duckdb_over_minio(env)
    at_snapshot = duck.execute(
        "SELECT count(*), count(DISTINCT id), sum(id), min(id), max(id) "
        f"FROM iceberg_scan('{metadata_location(env, table='events')}', snapshot_from_id => {last_of_first})"
    ).fetchone()
    assert at_snapshot == early
