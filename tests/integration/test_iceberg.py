"""format: Iceberg: batches appended to an Iceberg table in PyIceberg's SQL catalog (in the archived database), each
snapshot carrying its batch id and recorded in the ledger in the transaction that deletes its rows; read by DuckDB's
iceberg extension and by PyIceberg, now and at an earlier snapshot, agreeing with PostgreSQL; a kill between the
catalog's commit and PostgreSQL's resolved by the next run; bad input refused before anything is deleted."""

from __future__ import annotations

import signal
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import pyarrow as pa
import pytest
from kubernetes.client.exceptions import ApiException

from tests.harness.faults import FaultProxy
from tests.integration.archive_helpers import dsn, ids_in_table, json_log_lines
from tests.integration.environments import ArchiveEnv
from tests.integration.iceberg_helpers import (
    duckdb_over_minio,
    figures_in_duckdb,
    iceberg_catalog,
    metadata_location,
    setup_iceberg_archive,
)
from tests.integration.processes import start_job

ROWS = 3000


def make_orders(env: ArchiveEnv, rows: int = ROWS, recent: int = 10) -> None:
    """orders(id, created_at, amount numeric(12,2), note): `rows` over about 100 days a year ago, `recent` new ones."""
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, amount numeric(12,2), "
            "qty smallint, note text)"
        )
        conn.execute(
            "INSERT INTO orders SELECT g, timestamptz '2025-01-01 00:00:00+00' + g * interval '47 minutes', "
            "round((g * 1.37)::numeric, 2), mod(g, 300)::smallint, 'order ' || g FROM generate_series(1, %s) g",
            (rows,),
        )
        conn.execute(
            "INSERT INTO orders SELECT 1000000 + g, now(), 1, 1, 'new' FROM generate_series(1, %s) g", (recent,)
        )


def figures_in_postgres(env: ArchiveEnv, where: str) -> tuple[Any, ...]:
    with psycopg.connect(dsn(env.database)) as conn:
        found = conn.execute(
            f"SELECT count(*), count(DISTINCT id), sum(amount), min(amount), max(amount) FROM orders WHERE {where}"
        ).fetchone()
    assert found is not None
    return tuple(found)


def test_archive_into_iceberg_read_by_duckdb_and_pyiceberg_now_and_at_an_earlier_snapshot(
    archive_env: ArchiveEnv,
) -> None:
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
    first = metadata_location(env)
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("UPDATE orders SET created_at = created_at - interval '2000 days' WHERE id <= 3000")
    assert env.run() == 0
    assert ids_in_table(env.database) == set(range(1_000_001, 1_000_011))  # the recent rows stay

    duck = duckdb_over_minio(env)
    now = metadata_location(env)
    assert figures_in_duckdb(duck, now) == expected
    assert figures_in_duckdb(duck, first) == early  # time travel: the table as the first run left it

    table = iceberg_catalog(env).load_table(("public", "orders"))
    rows = table.scan().to_arrow()
    assert rows.num_rows == ROWS
    assert len(set(rows.column("id").to_pylist())) == ROWS
    amounts = rows.column("amount").to_pylist()
    assert (sum(amounts), min(amounts), max(amounts)) == expected[2:]
    # A batch's snapshots, and the compactions of the maintenance that ends each run (their summary says so).
    assert all(s.summary.get("cellar.batch-id") or s.summary.get("cellar.maintenance-run") for s in table.snapshots())
    snapshots = [s for s in table.metadata.snapshots if s.summary.get("cellar.batch-id")]
    early_snapshot = max(
        (s for s in snapshots if s.summary["cellar.run-id"] == snapshots[0].summary["cellar.run-id"]),
        key=lambda s: s.sequence_number,
    )
    assert table.scan(snapshot_id=early_snapshot.snapshot_id).to_arrow().num_rows == early[0]
    assert str(table.spec().fields[0].transform) == "month"

    with psycopg.connect(dsn(env.database)) as conn:
        ledger = conn.execute(
            "SELECT count(DISTINCT batch_id), sum(rows) FROM cellar.archive_ledger WHERE relation = 'public.orders'"
        ).fetchone()
    assert ledger == (len(snapshots), ROWS)  # one ledger row per snapshot, every row once
    status = env.status("TableArchive", "orders")
    assert status["totals"]["rows"] == ROWS
    # What the status (and the metrics read from it) says of the table, as DuckDB sees the table now.
    metadata_query = f"FROM iceberg_metadata('{now}') WHERE status != 'DELETED' AND manifest_content = 'DATA'"
    files = duck.execute(f"SELECT count(*) {metadata_query}").fetchone()
    kept = duck.execute(f"SELECT count(*) FROM iceberg_snapshots('{now}')").fetchone()
    assert files is not None
    assert kept is not None
    assert status["icebergTable"]["dataFiles"] == files[0] > 0
    assert status["icebergTable"]["snapshots"] == kept[0] == len(table.metadata.snapshots)
    assert status["icebergTable"]["currentSnapshotId"] == str(table.metadata.current_snapshot_id)
    assert status["lastRun"]["files"] >= 1


def test_a_kill_between_the_catalog_commit_and_the_postgresql_commit_loses_and_doubles_nothing(
    archive_env: ArchiveEnv,
) -> None:
    env = archive_env
    make_orders(env, rows=1000)
    setup_iceberg_archive(env, batch={"rows": 100, "parallelism": 1})
    job = start_job(
        "jobs.archive", env.kubeconfig, env.namespace, "orders", failpoint="archive.iceberg-between-commits"
    )
    job.wait_for_line("FAILPOINT archive.iceberg-between-commits")
    job.send_signal(signal.SIGKILL)
    job.wait()
    # The catalog holds the batch's snapshot; PostgreSQL rolled its rows back: they are in both, for now.
    table = iceberg_catalog(env).load_table(("public", "orders"))
    in_iceberg = table.scan().to_arrow().column("id").to_pylist()
    assert len(in_iceberg) == 100
    assert set(in_iceberg) <= ids_in_table(env.database)
    with psycopg.connect(dsn(env.database)) as conn:
        assert conn.execute("SELECT count(*) FROM cellar.archive_ledger").fetchone() == (0,)

    assert env.run() == 0
    archived = iceberg_catalog(env).load_table(("public", "orders")).scan().to_arrow().column("id").to_pylist()
    assert sorted(archived) == list(range(1, 1001)), "every old row once: the killed batch's rows not appended again"
    assert ids_in_table(env.database) == set(range(1_000_001, 1_000_011))
    duck = duckdb_over_minio(env)
    assert figures_in_duckdb(duck, metadata_location(env))[:2] == (1000, 1000)
    message = env.conditions("TableArchive", "orders")["ArchiveSucceeded"]["message"]
    assert "1 Iceberg snapshots of crashed runs recorded" in message


@pytest.mark.parametrize(
    ("iceberg", "field"),
    [
        ({"partitionBy": "hour"}, "spec.iceberg.partitionBy"),
        ({"catalog": {"type": "Glue"}}, "spec.iceberg.catalog.type"),
    ],
)
def test_bad_iceberg_settings_are_refused_at_apply_naming_the_field(
    archive_env: ArchiveEnv, iceberg: dict[str, Any], field: str
) -> None:
    env = archive_env
    with pytest.raises(ApiException) as refused:
        setup_iceberg_archive(env, iceberg=iceberg)
    assert refused.value.status == 422
    assert field in str(refused.value.body)


def test_a_table_of_another_schema_or_a_catalog_unreachable_or_refusing_deletes_nothing(
    archive_env: ArchiveEnv,
) -> None:
    env = archive_env
    make_orders(env, rows=50)
    catalog = iceberg_catalog(env)
    catalog.create_namespace_if_not_exists("public")
    catalog.create_table(
        ("public", "orders"),
        schema=pa.schema([("id", pa.int64()), ("created_at", pa.string())]),
        location=f"s3://{env.bucket}/elsewhere/orders",
    )
    setup_iceberg_archive(env)
    assert env.run() == 3
    failed = env.conditions("TableArchive", "orders")["ArchiveSucceeded"]
    assert failed["reason"] == "IcebergTableMismatch"
    assert "spec.iceberg.table" in failed["message"]
    assert len(ids_in_table(env.database)) == 60

    env.create_secret("cellar-iceberg-catalog", {**env.database, "port": "1"})  # nothing listens there
    setup_iceberg_archive(
        env,
        table="orders",
        name="unreachable",
        storage={**env.storage_spec, "prefix": "other"},
        iceberg={"catalog": {"database": {"secretRef": {"name": "cellar-iceberg-catalog"}, "sslMode": "disable"}}},
    )
    assert env.run(name="unreachable") == 1
    failed = env.conditions("TableArchive", "unreachable")["ArchiveSucceeded"]
    assert failed["reason"] == "CatalogUnavailable"
    assert "spec.iceberg.catalog.database" in failed["message"]
    assert env.database["password"] not in failed["message"]
    assert len(ids_in_table(env.database)) == 60

    env.create_secret("cellar-iceberg-catalog", {**env.database, "password": "not-the-password"})
    assert env.run(name="unreachable") == 3
    failed = env.conditions("TableArchive", "unreachable")["ArchiveSucceeded"]
    assert failed["reason"] == "CatalogAccessDenied"
    assert "spec.iceberg.catalog.database" in failed["message"]
    assert "not-the-password" not in failed["message"]
    assert len(ids_in_table(env.database)) == 60


def test_unarchive_from_iceberg_pushes_the_range_down_and_brings_back_equal_rows(
    archive_env: ArchiveEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    env = archive_env
    make_orders(env)
    with psycopg.connect(dsn(env.database)) as conn:
        february = conn.execute(
            "SELECT t::text FROM orders t WHERE created_at >= '2025-02-01' AND created_at < '2025-03-01' ORDER BY id"
        ).fetchall()
    setup_iceberg_archive(env, batch={"rows": 500}, iceberg={"partitionBy": "month"})
    assert env.run() == 0
    json_log_lines(capsys)
    assert env.run("unarchive", "--from", "2025-02-01", "--to", "2025-03-01") == 0
    planned = next(line for line in json_log_lines(capsys) if line["msg"] == "Iceberg scan planned")
    # Monthly partitions: only February's files are read, of files for January to April.
    assert 0 < planned["data_files"] < planned["data_files_in_table"]
    with psycopg.connect(dsn(env.database)) as conn:
        back = conn.execute("SELECT t::text FROM orders_unarchived t ORDER BY id").fetchall()
    assert back == february  # value by value, as PostgreSQL prints them
    assert env.run("unarchive", "--from", "2025-02-01", "--to", "2025-03-01") == 0  # again: nothing doubled
    with psycopg.connect(dsn(env.database)) as conn:
        assert conn.execute("SELECT count(*) FROM orders_unarchived").fetchone() == (len(february),)

    assert env.run("unarchive", "--from", "2025-01-10", "--to", "2025-01-11", "--into", "source") == 0
    with psycopg.connect(dsn(env.database)) as conn:
        returned = conn.execute("SELECT min(created_at), max(created_at), count(*) FROM orders WHERE id <= 3000")
        low, high, count = returned.fetchone() or (None, None, 0)
    assert count > 0
    assert str(low) >= "2025-01-10"
    assert str(high) < "2025-01-11"
    assert env.run() == 0  # rows brought back into the source are held: not archived again
    assert iceberg_catalog(env).load_table(("public", "orders")).scan().to_arrow().num_rows == ROWS


def test_a_failure_after_the_catalog_commit_stops_the_run_and_the_next_run_deletes_those_rows(
    archive_env: ArchiveEnv,
) -> None:
    env = archive_env
    make_orders(env, rows=1000)
    setup_iceberg_archive(env, batch={"rows": 100, "parallelism": 1})
    # The third batch's snapshot commits, then its transaction fails before COMMIT (an injected error).
    job = start_job(
        "jobs.archive",
        env.kubeconfig,
        env.namespace,
        "orders",
        failpoint="archive.iceberg-between-commits=error-after:2",
    )
    job.communicate()
    assert job.returncode == 1  # retryable
    failed = env.conditions("TableArchive", "orders")["ArchiveSucceeded"]
    assert failed["reason"] == "SnapshotUnrecorded"
    assert "the next run deletes them" in failed["message"]
    archived = iceberg_catalog(env).load_table(("public", "orders")).scan().to_arrow().column("id").to_pylist()
    in_both = set(archived) & ids_in_table(env.database)  # the unrecorded batch's rows, back in the table
    with psycopg.connect(dsn(env.database)) as conn:
        recorded = conn.execute("SELECT count(DISTINCT batch_id), sum(rows) FROM cellar.archive_ledger").fetchone()
    assert recorded is not None
    assert recorded[0] == 2  # the two batches before it; the run took no batch after it
    assert in_both
    assert len(archived) == recorded[1] + len(in_both)

    assert env.run() == 0
    archived = iceberg_catalog(env).load_table(("public", "orders")).scan().to_arrow().column("id").to_pylist()
    assert sorted(archived) == list(range(1, 1001))
    assert ids_in_table(env.database) == set(range(1_000_001, 1_000_011))


def test_each_iceberg_data_file_is_one_put_and_nothing_asks_the_store_its_size(archive_env: ArchiveEnv) -> None:
    """What the object store sees of a run, through a proxy that records every request: each data file the table
    lists is written by exactly one PUT (no multipart upload, no HEAD before or after), and is as long as the
    table says."""
    env = archive_env
    make_orders(env)
    expected = figures_in_postgres(env, "id <= 3000")
    proxy = FaultProxy(env.storage_spec["endpoint"]).start()
    try:
        setup_iceberg_archive(
            env,
            storage={**env.storage_spec, "endpoint": proxy.url},
            batch={"rows": 1000},
            iceberg={"partitionBy": "month", "maintenance": {"enabled": False}},
        )
        assert env.run() == 0
    finally:
        proxy.stop()
    requests = [(seen.request.method, unquote(seen.request.path)) for seen in proxy.seen]  # the SDK escapes "="
    data_files = [task.file for task in iceberg_catalog(env).load_table(("public", "orders")).scan().plan_files()]
    assert len(data_files) >= 4  # several months, several batches
    for data_file in data_files:
        location = urlsplit(data_file.file_path)
        path = f"/{location.netloc}{location.path}"  # the proxy's requests are path-style
        assert [method for method, seen in requests if seen.split("?")[0] == path] == ["PUT"], path
        stored = env.s3.head_object(Bucket=location.netloc, Key=location.path.lstrip("/"))
        assert data_file.file_size_in_bytes == stored["ContentLength"]
    assert not [seen for method, seen in requests if "uploads" in seen or "uploadId" in seen]  # no multipart at all
    assert figures_in_duckdb(duckdb_over_minio(env), metadata_location(env)) == expected
