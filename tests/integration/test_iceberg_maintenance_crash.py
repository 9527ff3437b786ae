"""Iceberg maintenance under kills: SIGKILLs at random points of compaction, just before a compaction's commit and
between expiry's commit and its deletes, with a grace period and a retention of 0 so every run deletes what it can.
DuckDB's iceberg extension, Spark and PyIceberg count the rows (not cellar): none lost, none doubled; and no file that a
snapshot references is ever missing from the store. Before each run, another writer appends a small file to
each of 30 day partitions, so every run has work to be killed in."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from tests.integration.archive_helpers import ids_in_table
from tests.integration.environments import ArchiveEnv
from tests.integration.iceberg_helpers import (
    duckdb_over_minio,
    figures_in_duckdb,
    figures_in_spark,
    metadata_location,
    setup_iceberg_archive,
    spark_reading,
)
from tests.integration.iceberg_maintenance_helpers import (
    figures_in_pyiceberg,
    live_data_files,
    load_orders,
    referenced_keys,
    stored_keys,
)
from tests.integration.processes import KillStorm, start_job
from tests.integration.test_iceberg import figures_in_postgres, make_orders

pytestmark = pytest.mark.integration

ROWS = 1200  # 47 minutes apart: about 39 days, a partition each
KILLS = 33  # the issue asks for at least 30
BEFORE_COMMIT = "archive.iceberg-compaction-before-commit"
BEFORE_DELETES = "archive.iceberg-cleanup-before-deletes"
WORK = (
    '"partition rewritten"',
    '"compaction committed"',
    '"Iceberg snapshots expired"',
    '"unreferenced Iceberg files deleted"',
    f"FAILPOINT {BEFORE_COMMIT}",
    f"FAILPOINT {BEFORE_DELETES}",
)
SPREAD_DAYS = 30  # each round's new rows: one a day, a small file in each of 30 partitions


def add_small_files(table: Any, first_id: int) -> list[tuple[int, Decimal]]:
    """Work for the next maintenance run: rows appended as another writer would, one a day for SPREAD_DAYS days
    of the archived range (a small file in each of those partitions); their (id, amount)."""
    start = datetime(2025, 1, 2, 12, tzinfo=UTC)
    ids = list(range(first_id, first_id + SPREAD_DAYS))
    amounts = [Decimal(i % 10_000) / 100 for i in ids]
    rows = pa.table(
        {
            "id": ids,
            "created_at": [start + timedelta(days=n) for n in range(SPREAD_DAYS)],
            "amount": amounts,
            "qty": [1] * SPREAD_DAYS,
            "note": [f"writer {i}" for i in ids],
        },
        schema=table.schema().as_arrow(),
    )
    table.append(rows)
    return list(zip(ids, amounts, strict=True))


@pytest.mark.timeout(1500)  # 33 runs of a job, each started anew: about 10 minutes on a loaded machine
def test_a_kill_storm_during_maintenance_loses_doubles_and_breaks_nothing(archive_env: ArchiveEnv, spark: Any) -> None:
    env = archive_env
    make_orders(env, rows=ROWS)
    archived = figures_in_postgres(env, f"id <= {ROWS}")
    maintenance = {"enabled": False, "snapshotRetention": "0s", "orphanGracePeriod": "0s"}
    setup_iceberg_archive(
        env, batch={"rows": 100, "parallelism": 1}, iceberg={"partitionBy": "day", "maintenance": maintenance}
    )
    assert env.run() == 0
    added: list[tuple[int, Decimal]] = []
    storm = KillStorm(work=WORK, seed=20261207)
    at_commit = at_deletes = checks = 0
    started = time.monotonic()
    for attempt in range(KILLS):
        added += add_small_files(load_orders(env), 10_000_000 + attempt * 100)
        point = {0: BEFORE_COMMIT, 1: "", 2: BEFORE_DELETES}[attempt % 3]
        job = start_job("jobs.archive", env.kubeconfig, env.namespace, "orders", "maintain", failpoint=point)
        if point:
            # A run that ends retryably first (on a loaded machine the killed run's session may still hold the
            # table's lock) is started again, as its Job would start it; any other ending fails the count below.
            for _ in range(3):
                if job.reaches(f"FAILPOINT {point}", timeout=300):
                    at_commit += point == BEFORE_COMMIT
                    at_deletes += point == BEFORE_DELETES
                    break
                if job.wait() != 1:
                    break
                print("started again after a retryable end:", (job.lines() or [""])[-1][:500])
                job = start_job("jobs.archive", env.kubeconfig, env.namespace, "orders", "maintain", failpoint=point)
            storm.kill(job)
        else:  # anywhere in compaction, its commit, expiry or the deletes
            storm.kill_mid_work(job, seconds=4)
        if attempt % 3 == 2:
            table = load_orders(env)
            assert referenced_keys(table, env.bucket) <= stored_keys(env), "a file a snapshot references is missing"
            assert figures_in_pyiceberg(table)[:2] == (ROWS + len(added),) * 2, "a row lost or doubled"
            checks += 1
    storm_seconds = time.monotonic() - started
    assert env.run("maintain") == 0  # to completion
    print(
        f"{KILLS} kills in {storm_seconds:.0f}s: {storm}; {at_commit} just before a compaction's commit, "
        f"{at_deletes} between expiry's commit and its deletes"
    )
    assert storm.landings["mid-work"] >= KILLS * 2 // 3, storm
    assert at_commit == at_deletes == KILLS // 3
    assert checks == KILLS // 3

    count, distinct, total, low, high = archived
    amounts = [a for _, a in added]
    expected = (
        count + len(added),
        distinct + len(added),
        total + sum(amounts),
        min(low, *amounts),
        max(high, *amounts),
    )
    table = load_orders(env)
    assert figures_in_pyiceberg(table) == expected, "every row once: none lost, none doubled"
    assert figures_in_duckdb(duckdb_over_minio(env), metadata_location(env)) == expected
    by_spark = figures_in_spark(spark_reading(spark, env))
    assert [Decimal(str(v)) for v in by_spark] == [Decimal(str(v)) for v in expected], "Spark counts the same"
    assert ids_in_table(env.database) == set(range(1_000_001, 1_000_011))
    after = live_data_files(table)
    assert len(after) == len({f.partition for f in after}), "one file per day's partition"
    stored, referenced = stored_keys(env), referenced_keys(table, env.bucket)
    assert referenced <= stored, "no file a snapshot references is missing"
    assert stored == referenced, "with no grace period, the killed runs' files are all gone"
