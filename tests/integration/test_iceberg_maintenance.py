"""`cellar-archive maintain` on an Iceberg archive: many small batches' files rewritten into few, the rows DuckDB
and PyIceberg read unchanged; snapshots past the retention expired, but the newest, those inside the window and one
the ledger still needs kept; a killed run's files deleted once the grace period is over, referenced ones never; a
maintenance run and an archive run of the same table wait for each other."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.archive_helpers import dsn, ids_in_table
from tests.integration.environments import ArchiveEnv
from tests.integration.iceberg_helpers import (
    duckdb_over_minio,
    figures_in_duckdb,
    metadata_location,
    setup_iceberg_archive,
)
from tests.integration.iceberg_maintenance_helpers import (
    figures_in_pyiceberg,
    live_data_files,
    load_orders,
    referenced_keys,
    set_maintenance,
    stored_keys,
)
from tests.integration.processes import start_job
from tests.integration.test_iceberg import figures_in_postgres, make_orders

pytestmark = pytest.mark.integration

BEFORE_COMMIT = "archive.iceberg-compaction-before-commit"
BEFORE_DELETES = "archive.iceberg-cleanup-before-deletes"
WAITING = "waiting for the table's archive lock"


def test_maintain_rewrites_small_files_and_deletes_only_what_nothing_references(archive_env: ArchiveEnv) -> None:
    env = archive_env
    make_orders(env)  # 3,000 rows over four months of 2025
    expected = figures_in_postgres(env, "id <= 3000")
    setup_iceberg_archive(
        env, batch={"rows": 100, "parallelism": 1}, iceberg={"partitionBy": "month", "maintenance": {"enabled": False}}
    )
    assert env.run() == 0
    before = live_data_files(load_orders(env))
    assert len(before) >= 30  # a file per batch and month at least

    # A maintenance run killed after writing its new files, before its commit: those files are orphans.
    killed = start_job("jobs.archive", env.kubeconfig, env.namespace, "orders", "maintain", failpoint=BEFORE_COMMIT)
    killed.wait_for_line(f"FAILPOINT {BEFORE_COMMIT}")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    orphans = stored_keys(env) - referenced_keys(load_orders(env), env.bucket)
    assert orphans, "the killed run wrote files no snapshot references"

    assert env.run("maintain") == 0  # the default grace (1d) and retention (7d)
    table = load_orders(env)
    after = live_data_files(table)
    assert len(after) == 4, "one file per month"
    assert sum(f.record_count for f in after) == 3000
    assert figures_in_pyiceberg(table) == expected
    assert figures_in_duckdb(duckdb_over_minio(env), metadata_location(env)) == expected
    assert orphans <= stored_keys(env), "within the grace period the killed run's files stay"
    assert {str(f.file_path).removeprefix(f"s3://{env.bucket}/") for f in before} <= stored_keys(env)
    maintained = env.status("TableArchive", "orders")["lastMaintenance"]
    assert (maintained["filesRewritten"], maintained["filesWritten"]) == (len(before), 4)
    assert maintained["snapshotsExpired"] == 0

    set_maintenance(env, snapshotRetention="0s", orphanGracePeriod="0s")
    assert env.run("maintain") == 0
    table = load_orders(env)
    assert [s.snapshot_id for s in table.metadata.snapshots] == [table.current_snapshot().snapshot_id]
    stored = stored_keys(env)
    referenced = referenced_keys(table, env.bucket)
    assert referenced <= stored, "no file a snapshot references is missing"
    assert not orphans & stored, "the killed run's files are gone after the grace period"
    data_keys = {k for k in stored if "/data/" in k}
    assert len(data_keys) == 4, "the small files went with the snapshots that referenced them"
    assert figures_in_pyiceberg(table) == expected
    assert figures_in_duckdb(duckdb_over_minio(env), metadata_location(env)) == expected


def _snapshots(env: ArchiveEnv) -> dict[int, Any]:
    """Snapshot id -> summary, of every snapshot the table keeps."""
    return {s.snapshot_id: s.summary for s in load_orders(env).metadata.snapshots}


def test_expiry_keeps_the_window_the_newest_and_a_snapshot_the_ledger_still_needs(archive_env: ArchiveEnv) -> None:
    env = archive_env
    make_orders(env, rows=1000)
    expected = figures_in_postgres(env, "id <= 1000")
    setup_iceberg_archive(
        env, batch={"rows": 100, "parallelism": 1}, iceberg={"partitionBy": "month", "maintenance": {"enabled": False}}
    )
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:  # the first run takes ids up to 500 only
        conn.execute("UPDATE orders SET created_at = created_at + interval '2000 days' WHERE id BETWEEN 501 AND 1000")
    assert env.run() == 0
    recorded = set(_snapshots(env))
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("UPDATE orders SET created_at = created_at - interval '2000 days' WHERE id BETWEEN 501 AND 1000")
    # A run killed between the catalog's commit and PostgreSQL's: its snapshot's batch is not in the ledger.
    between = "archive.iceberg-between-commits"
    job = start_job("jobs.archive", env.kubeconfig, env.namespace, "orders", failpoint=between)
    job.wait_for_line("FAILPOINT archive.iceberg-between-commits")
    job.send_signal(signal.SIGKILL)
    job.wait()
    unrecorded = set(_snapshots(env)) - recorded
    assert len(unrecorded) == 1

    set_maintenance(env, snapshotRetention="0s", orphanGracePeriod="0s")
    assert env.run("maintain") == 0
    kept = _snapshots(env)
    current = load_orders(env).current_snapshot().snapshot_id
    assert set(kept) == unrecorded | {current}, "all expired but the newest and the one the ledger needs"
    assert kept[current].get("cellar.maintenance-run")  # the compaction's snapshot
    assert referenced_keys(load_orders(env), env.bucket) <= stored_keys(env)

    assert env.run() == 0  # resolves the unrecorded batch (its rows deleted, not appended again), archives the rest
    assert ids_in_table(env.database) == set(range(1_000_001, 1_000_011))
    assert figures_in_duckdb(duckdb_over_minio(env), metadata_location(env)) == expected
    assert figures_in_pyiceberg(load_orders(env)) == expected

    # The window: snapshots older than the retention go, those inside it stay (and read back at their time).
    mark = time.time()
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orders SELECT 2000 + g, timestamptz '2025-03-01 00:00:00+00' + g * interval '1 hour', "
            "g, 1, 'later' FROM generate_series(1, 300) g"
        )
    old = set(_snapshots(env))
    while time.time() < mark + 30:  # the new snapshots 30 seconds after the old ones: the window lies between
        time.sleep(0.5)
    assert env.run() == 0
    window = set(_snapshots(env)) - old
    assert len(window) >= 3
    set_maintenance(env, snapshotRetention=f"{int(time.time() - mark) - 5}s")
    assert env.run("maintain") == 0
    kept = _snapshots(env)
    assert window <= set(kept), "every snapshot inside the retention stays"
    assert not old & set(kept), "every snapshot past it (recorded) is expired"
    earliest = min(window, key=lambda s: load_orders(env).snapshot_by_id(s).sequence_number)
    assert figures_in_pyiceberg(load_orders(env), earliest)[0] >= 1000  # time travel inside the window reads
    assert referenced_keys(load_orders(env), env.bucket) <= stored_keys(env)


def test_a_maintenance_run_and_an_archive_run_of_one_table_wait_for_each_other(
    archive_env: ArchiveEnv, tmp_path: Path
) -> None:
    env = archive_env
    make_orders(env, rows=2000)
    setup_iceberg_archive(
        env, batch={"rows": 100, "parallelism": 1}, iceberg={"partitionBy": "month", "maintenance": {"enabled": False}}
    )
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("UPDATE orders SET created_at = created_at + interval '2000 days' WHERE id BETWEEN 1001 AND 2000")
    go = tmp_path / "archive-go"
    archive = start_job(
        "jobs.archive", env.kubeconfig, env.namespace, "orders", failpoint=f"archive.iceberg-append=wait-for:{go}"
    )
    archive.wait_for_line("FAILPOINT archive.iceberg-append")
    maintain = start_job("jobs.archive", env.kubeconfig, env.namespace, "orders", "maintain")
    maintain.wait_for_line(WAITING)  # the archive run holds the table
    go.touch()
    assert archive.wait(timeout=300) == 0
    assert maintain.wait(timeout=300) == 0

    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("UPDATE orders SET created_at = created_at - interval '2000 days' WHERE id BETWEEN 1001 AND 2000")
    go = tmp_path / "maintain-go"
    maintain = start_job(
        "jobs.archive", env.kubeconfig, env.namespace, "orders", "maintain", failpoint=f"{BEFORE_DELETES}=wait-for:{go}"
    )
    maintain.wait_for_line(f"FAILPOINT {BEFORE_DELETES}")
    archive = start_job("jobs.archive", env.kubeconfig, env.namespace, "orders")
    assert "a maintenance run" in archive.wait_for_line(WAITING), "the archive run waits instead of stepping aside"
    go.touch()
    assert maintain.wait(timeout=300) == 0
    assert archive.wait(timeout=300) == 0

    expected_ids = set(range(1, 2001))
    assert ids_in_table(env.database) == set(range(1_000_001, 1_000_011))
    rows = load_orders(env).scan().to_arrow().column("id").to_pylist()
    assert sorted(rows) == sorted(expected_ids), "every row once: none lost, none doubled"
    assert figures_in_duckdb(duckdb_over_minio(env), metadata_location(env))[:2] == (2000, 2000)
