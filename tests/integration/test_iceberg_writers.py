"""Two archives appending to one Iceberg table at once (two source tables, two Pods): the catalog's commit conflict
is tried again, not fatal, and each archive's rows are in the table once. A failpoint holds one run after it has
read the table's metadata until the other has committed, so its commit is bound to conflict."""

from __future__ import annotations

from pathlib import Path

import psycopg

from tests.integration.archive_helpers import dsn, ids_in_table
from tests.integration.environments import ArchiveEnv
from tests.integration.iceberg_helpers import duckdb_over_minio, metadata_location, setup_iceberg_archive
from tests.integration.processes import start_job

ROWS = 400
CONFLICTS = ("Commit failed due to a concurrent update", "Iceberg commit conflict; trying again")


def test_a_commit_that_loses_the_race_to_another_archive_is_tried_again(
    archive_env: ArchiveEnv, tmp_path: Path
) -> None:
    env = archive_env
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        for offset, name in ((0, "orders_a"), (ROWS, "orders_b")):
            conn.execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, note text)")
            conn.execute(
                f"INSERT INTO {name} SELECT {offset} + g, timestamptz '2025-01-01' + g * interval '1 hour', 'x' "
                "FROM generate_series(1, %s) g",
                (ROWS,),
            )
    shared = {"namespace": "public", "table": "orders_all"}
    for name in ("orders_a", "orders_b"):
        setup_iceberg_archive(
            env, table=name, name=name.replace("_", "-"), batch={"rows": 100, "parallelism": 1}, iceberg=shared
        )

    go = tmp_path / "go"
    first = start_job(
        "jobs.archive", env.kubeconfig, env.namespace, "orders-a", failpoint=f"archive.iceberg-append=wait-for:{go}"
    )
    first.wait_for_line("FAILPOINT archive.iceberg-append")  # it has read the table's metadata, and waits
    assert env.run(name="orders-b") == 0  # meanwhile the other archive commits its snapshots
    go.touch()
    output, errors = first.communicate()
    assert first.returncode == 0, errors[-3000:]
    assert any(conflict in output for conflict in CONFLICTS), "the held commit lost the race, and was tried again"

    counted = (
        duckdb_over_minio(env)
        .execute(
            "SELECT count(*), count(DISTINCT id), min(id), max(id) "
            f"FROM iceberg_scan('{metadata_location(env, table='orders_all')}')"
        )
        .fetchone()
    )
    assert counted == (2 * ROWS, 2 * ROWS, 1, 2 * ROWS)
    assert ids_in_table(env.database, "orders_a") == set()
    assert ids_in_table(env.database, "orders_b") == set()
