"""An Iceberg batch deleted and written in pieces (iceberg_pieces.py): one snapshot per batch, a data file per
partition its rows reach (not per piece: a partition's file goes on from one piece to the next), whatever the order
of the rows on disk; and a run killed between two pieces of a batch leaves every one of its rows in PostgreSQL and
none in the table, counted by DuckDB's iceberg extension."""

from __future__ import annotations

import math
import signal

import psycopg

from jobs.archive.settings import Tuning
from tests.integration.archive_helpers import dsn, ids_in_table
from tests.integration.environments import ArchiveEnv
from tests.integration.iceberg_helpers import iceberg_catalog, setup_iceberg_archive
from tests.integration.processes import run_until_failpoint
from tests.integration.test_archive_crash import make_old_orders
from tests.integration.test_iceberg_partitions import counted_in_duckdb


def batch_snapshots(env: ArchiveEnv) -> list[dict[str, str]]:
    snapshots = iceberg_catalog(env).load_table(("public", "orders")).snapshots()
    return [dict(s.summary.additional_properties) | {"operation": str(s.summary.operation)} for s in snapshots]


def test_a_batch_is_one_snapshot_of_its_pieces_files(archive_env: ArchiveEnv) -> None:
    env = archive_env
    make_old_orders(env.database, 330)
    # A year partition: a batch's three pieces all go on in one year's file, whatever the pieces.
    setup_iceberg_archive(env, batch={"rows": 50}, iceberg={"partitionBy": "year", "maintenance": {"enabled": False}})
    assert env.run(tuning=Tuning(iceberg_piece_rows=20)) == 0
    assert not ids_in_table(env.database)
    assert counted_in_duckdb(env, "orders") == (330, 330)

    batches = [s for s in batch_snapshots(env) if s.get("cellar.batch-id")]
    records = [int(s["added-records"]) for s in batches]
    files = [int(s["added-data-files"]) for s in batches]
    assert sum(records) == 330
    assert max(records) == 50  # a whole batch: one snapshot, not one per piece
    assert files == [int(s["changed-partition-count"]) for s in batches]  # a file per partition, not per piece
    assert sum(files) < sum(math.ceil(r / 20) for r in records)
    with psycopg.connect(dsn(env.database)) as conn:
        ledger = conn.execute("SELECT sum(rows), count(*) FROM cellar.archive_ledger").fetchone()
    assert ledger == (330, len(batches))  # one ledger row per snapshot, with the rows of all its pieces
    last_run = env.status("TableArchive", "orders")["lastRun"]
    assert (last_run["rows"], last_run["batches"], last_run["files"]) == (330, len(batches), sum(files))


def test_a_run_killed_between_two_pieces_moves_nothing_and_the_next_moves_each_row_once(
    archive_env: ArchiveEnv,
) -> None:
    env = archive_env
    due = 30_000  # one lane, one batch of the default 100,000 rows: pieces of 25,000 and 5,000
    make_old_orders(env.database, due)
    setup_iceberg_archive(env, batch={"parallelism": 1})
    job = run_until_failpoint("jobs.archive", env.kubeconfig, env.namespace, "orders", "archive.iceberg-between-pieces")
    job.send_signal(signal.SIGKILL)
    job.wait()
    # The first piece's files are written, in no snapshot: its rows rolled back with the transaction.
    assert len(ids_in_table(env.database)) == due
    assert not [s for s in batch_snapshots(env) if s.get("cellar.batch-id")]

    assert env.run() == 0
    assert not ids_in_table(env.database)
    assert counted_in_duckdb(env, "orders") == (due, due)


def test_rows_stored_out_of_time_order_still_make_a_file_per_partition_and_batch(archive_env: ArchiveEnv) -> None:
    """Rows whose order on disk interleaves ten days: one DELETE for a whole batch would return its days mixed, and
    each piece would write files of the same days again. A statement per piece takes the next rows by time."""
    env = archive_env
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, note text)")
        conn.execute(
            "INSERT INTO orders SELECT g, now() - interval '400 days' + (g % 10) * interval '1 day' "
            "+ g * interval '1 second', 'old' FROM generate_series(1, 300) g"
        )
    setup_iceberg_archive(
        env, batch={"rows": 50, "parallelism": 1}, iceberg={"partitionBy": "day", "maintenance": {"enabled": False}}
    )
    assert env.run(tuning=Tuning(iceberg_piece_rows=20)) == 0
    assert not ids_in_table(env.database)
    assert counted_in_duckdb(env, "orders") == (300, 300)
    batches = [s for s in batch_snapshots(env) if s.get("cellar.batch-id")]
    records = [int(s["added-records"]) for s in batches]
    assert sum(records) == 300
    assert max(records) == 50  # batches of three pieces
    files = [int(s["added-data-files"]) for s in batches]
    assert files == [int(s["changed-partition-count"]) for s in batches]  # no day written twice by one batch
