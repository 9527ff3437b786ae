"""The archive job against the real servers, run with its restricted ServiceAccount."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from threading import Thread
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pytest

from jobs.archive.settings import Tuning
from tests.integration.archive_helpers import (
    archived_objects,
    dsn,
    ids_in_table,
    json_log_lines,
    list_all,
    manifests,
    patch_spec,
    setup_archive,
)
from tests.integration.backup_helpers import conditions, get_status
from tests.integration.environments import ArchiveEnv
from tests.integration.processes import run_until_failpoint

TYPES_TABLE = r"""
CREATE TYPE status AS ENUM ('new', 'paid', 'shipped');
CREATE TABLE orders (
    id bigint PRIMARY KEY, created_at timestamptz NOT NULL,
    small smallint, normal integer, num numeric, money numeric(12, 4), r real, d double precision,
    t text, v varchar(30), flag boolean, day date, local_ts timestamp, ref uuid, j json, jb jsonb, raw bytea,
    ints integer[], words text[], amounts numeric[], state status
);
INSERT INTO orders
SELECT g, timestamptz '2024-03-01 10:00:00.123456+00' + g * interval '7 hours 13 minutes',
       (g % 300)::smallint, g * 1000, (g::numeric / 7) ^ 2, round(g / 3.0, 4), g / 3.0, g / 7.0,
       'text ' || g || E' with "quotes", commas,\nnewlines and ünïcödé', left(md5(g::text), 30), g % 2 = 0,
       date '2020-01-01' + g, timestamp '2021-06-01 12:00:00.000001' + g * interval '1 second',
       md5(g::text)::uuid, json_build_object('g', g, 'list', json_build_array(1, 'two', null)),
       jsonb_build_object('g', g, 'nested', jsonb_build_object('deep', true)),
       decode(md5(g::text), 'hex') || '\x00'::bytea,
       ARRAY[g, NULL, -g], ARRAY['a', NULL, 'b,c', 'd"e'], ARRAY[1.5, NULL, g / 3.0],
       (ARRAY['new', 'paid', 'shipped'])[1 + g % 3]::status
FROM generate_series(1, 300) g;
INSERT INTO orders (id, created_at) VALUES (1000, '2024-01-01 00:00:00+00');  -- a row of NULLs
INSERT INTO orders (id, created_at, t, r, d) VALUES (1001, '2024-01-02 00:00:00+00', '', 'NaN', '-Infinity');
INSERT INTO orders (id, created_at, t)
  SELECT 5000 + g, now() - g * interval '1 day', 'recent' FROM generate_series(1, 5) g;
"""


def _rows_as_text(conn_dsn: str, table: str) -> list[str]:
    with psycopg.connect(conn_dsn) as conn:
        return [r[0] for r in conn.execute(f"SELECT x::text FROM {table} x ORDER BY id")]


def _orders(database: dict[str, Any], *statements: str) -> psycopg.Connection[Any]:
    """A table orders (id, created_at, note), filled by `statements`; an open autocommit connection to it."""
    conn = psycopg.connect(dsn(database), autocommit=True)
    conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, note text)")
    for statement in statements:
        conn.execute(statement)
    return conn


def test_round_trip_keeps_every_type_and_is_queryable_with_pyarrow_and_duckdb(archive_env: ArchiveEnv) -> None:
    bucket, s3_admin, admin_api = archive_env.bucket, archive_env.s3, archive_env.admin_api
    database, namespace = archive_env.database, archive_env.namespace
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute(TYPES_TABLE)
    before = _rows_as_text(dsn(database), "orders")
    setup_archive(archive_env, batch={"rows": 100})
    assert archive_env.run() == 0

    assert ids_in_table(database) == {5001, 5002, 5003, 5004, 5005}  # only the recent rows stay
    status = get_status(admin_api, namespace, "tablearchives", "orders")
    assert conditions(status)["ArchiveSucceeded"]["reason"] == "Completed"
    assert conditions(status)["Ready"]["status"] == "True"
    assert status["lastRun"]["rows"] == 302
    assert 0 < status["lastRun"]["longestTransactionSeconds"] < status["lastRun"]["durationSeconds"]
    assert status["totals"]["rows"] == 302
    assert status["oldestRowTime"] is not None

    objects = archived_objects(s3_admin, bucket)
    assert all("/dt=20" in key and key.endswith(".parquet") for key in objects)
    schema = next(iter(objects.values())).schema
    assert schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("local_ts").type == pa.timestamp("us")
    assert schema.field("money").type == pa.decimal128(12, 4)
    assert schema.field("num").type == pa.string()  # unconstrained numeric: exact text
    assert schema.field("ints").type == pa.list_(pa.int32())
    assert schema.field("raw").type == pa.binary()
    assert sum(t.num_rows for t in objects.values()) == 302
    described = manifests(s3_admin, bucket)
    assert {c["name"]: c["type"] for c in described[0]["columns"]}["money"] == "numeric(12,4)"
    assert sum(m["rows"] for m in described) == 302
    assert {o["objectKey"] for m in described for o in m["objects"]} == set(objects)
    assert all(len(o["sha256"]) == 64 and o["rows"] for m in described for o in m["objects"])

    # DuckDB reads the very bytes cellar wrote (copied as they are), partitions included.
    duck = duckdb.connect()
    local = Path(archive_env.kubeconfig).parent / "lake"
    for key in objects:
        target = local / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(s3_admin.get_object(Bucket=bucket, Key=key)["Body"].read())
    files = f"{local}/test/public.orders/*/*.parquet"
    count, total, first = duck.execute(
        f"SELECT count(*), sum(money), min(created_at)::text FROM read_parquet('{files}', hive_partitioning = true)"
    ).fetchone()
    assert count == 302
    assert str(total) == str(
        sum(t.column("money").to_pylist()[i] or 0 for t in objects.values() for i in range(t.num_rows))
    )
    assert str(first).startswith("2024-01-01 00:00:00")

    # Bring everything back into a side table: every value equal.
    assert archive_env.run("unarchive", "--from", "2000-01-01", "--to", "2100-01-01") == 0
    restored = _rows_as_text(dsn(database), "orders_unarchived")
    assert restored == [row for row in before if not row.startswith(("(5001,", "(5002,", "(5003,", "(5004,", "(5005,"))]
    # Idempotent: again inserts nothing.
    assert archive_env.run("unarchive", "--from", "2000-01-01", "--to", "2100-01-01") == 0
    assert get_status(admin_api, namespace, "tablearchives", "orders")["lastUnarchive"]["rows"] == 0
    assert _rows_as_text(dsn(database), "orders_unarchived") == restored


SIMPLE_TABLE = """
CREATE TABLE orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, note text);
INSERT INTO orders SELECT g, now() - interval '400 days' + g * interval '1 minute', 'old ' || g
FROM generate_series(1, {old}) g;
INSERT INTO orders SELECT 1000000 + g, now(), 'new' FROM generate_series(1, 10) g;
"""


def _simple(archive_env: ArchiveEnv, old: int = 2000, **spec: Any) -> dict[str, Any]:
    database = archive_env.database
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute(SIMPLE_TABLE.format(old=old))
    return setup_archive(archive_env, **spec)


def test_unarchive_into_the_source_is_not_archived_again(archive_env: ArchiveEnv) -> None:
    admin_api = archive_env.admin_api
    _simple(archive_env, old=500)
    database, namespace = archive_env.database, archive_env.namespace
    assert archive_env.run() == 0
    assert len(ids_in_table(database)) == 10
    assert archive_env.run("unarchive", "--from", "2000-01-01", "--to", "2100-01-01", "--into", "source") == 0
    assert len(ids_in_table(database)) == 510
    assert archive_env.run() == 0
    assert len(ids_in_table(database)) == 510
    assert conditions(get_status(admin_api, namespace, "tablearchives", "orders"))["ArchiveSucceeded"]["reason"] == (
        "NothingToArchive"
    )


def test_rows_locked_by_the_application_are_skipped_then_archived_later(archive_env: ArchiveEnv) -> None:
    _simple(archive_env, old=300, batch={"rows": 50})
    database = archive_env.database
    with psycopg.connect(dsn(database)) as application:
        application.execute("SELECT * FROM orders WHERE id BETWEEN 1 AND 20 FOR UPDATE")  # an open transaction
        assert archive_env.run() == 0
        assert ids_in_table(database) == set(range(1, 21)) | {1000000 + g for g in range(1, 11)}
    assert archive_env.run() == 0
    assert ids_in_table(database) == {1000000 + g for g in range(1, 11)}


def test_two_runs_at_once_one_archives_one_skips(archive_env: ArchiveEnv) -> None:
    admin_api = archive_env.admin_api
    import signal

    _simple(archive_env, old=300)
    namespace, kubeconfig = archive_env.namespace, archive_env.kubeconfig
    first = run_until_failpoint("jobs.archive", kubeconfig, namespace, "orders", "archive.before-commit")
    try:
        assert archive_env.run() == 0  # the second run skips: exit 0
        status = get_status(admin_api, namespace, "tablearchives", "orders")
        assert status["lastSkipped"]["reason"] == "LockHeld"
        assert conditions(status)["Progressing"]["status"] == "True"  # the first run's, untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert len(ids_in_table(archive_env.database)) == 310  # the killed batch rolled back


def test_dry_run_changes_nothing_and_shows_the_plan(archive_env: ArchiveEnv) -> None:
    admin_api, bucket, s3_admin = archive_env.admin_api, archive_env.bucket, archive_env.s3
    _simple(archive_env, old=200, dryRun=True)
    database = archive_env.database
    assert archive_env.run() == 0
    assert len(ids_in_table(database)) == 210
    assert s3_admin.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    with psycopg.connect(dsn(database)) as conn:
        assert conn.execute("SELECT to_regnamespace('cellar')").fetchone() == (None,)
    succeeded = conditions(get_status(admin_api, archive_env.namespace, "tablearchives", "orders"))["ArchiveSucceeded"]
    assert succeeded["reason"] == "DryRunCompleted"
    assert "dry run: 200 rows" in succeeded["message"]
    # 200 small rows: partitioning: Auto (the default) would choose year partitions, and says why.
    assert "Layout: partitioning: Auto chooses Yearly for a new archive (200 rows due" in succeeded["message"]
    assert "a month holds less than 64.0 MiB" in succeeded["message"]
    assert "LockRows" in succeeded["message"]
    assert "Delete on orders" in succeeded["message"]  # the plan of the batch's own statement


def test_the_dry_runs_layout_advice_follows_the_jobs_tuning(archive_env: ArchiveEnv) -> None:
    # One row a day for 300 days: a batch of the default 25,000 rows would take every day, but the tuning lets a
    # batch take at most 8 days.
    _orders(
        archive_env.database,
        "INSERT INTO orders SELECT g, now() - interval '400 days' + g * interval '1 day', 'old' "
        "FROM generate_series(1, 300) g",
    ).close()
    setup_archive(archive_env, dryRun=True, partitioning="Daily")
    assert archive_env.run(tuning=Tuning(max_partitions_per_batch=8)) == 0
    status = get_status(archive_env.admin_api, archive_env.namespace, "tablearchives", "orders")
    message = conditions(status)["ArchiveSucceeded"]["message"]
    assert "a batch of 25000 rows writes about 8 files of one day each" in message
    assert "'8 days'::interval" in message  # the plan is of the batch the run would make, with its tuning


def test_a_table_without_an_index_on_its_timestamp_gets_a_warning_naming_the_index_to_create(
    archive_env: ArchiveEnv,
) -> None:
    admin_api = archive_env.admin_api
    tuning = Tuning(unindexed_table_warning_bytes=0)  # the test's tables are small
    orders = _simple(archive_env, old=200, dryRun=True)
    database, namespace = archive_env.database, archive_env.namespace

    def dry_run_message(name: str) -> str:
        assert archive_env.run(name=name, tuning=tuning) == 0
        return str(conditions(get_status(admin_api, namespace, "tablearchives", name))["ArchiveSucceeded"]["message"])

    warned = dry_run_message("orders")
    assert "has no index that starts with 'created_at'" in warned
    assert 'CREATE INDEX CONCURRENTLY ON "public"."orders" ("created_at")' in warned
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute("CREATE INDEX ON orders (created_at)")
        # A partitioned table whose partitions each have the index, though the parent has none.
        conn.execute(
            "CREATE TABLE events (id bigint, created_at timestamptz NOT NULL, PRIMARY KEY (id, created_at)) "
            "PARTITION BY RANGE (created_at)"
        )
        for name, bounds in (
            ("events_old", "(MINVALUE) TO ('2020-01-01')"),
            ("events_new", "('2020-01-01') TO (MAXVALUE)"),
        ):
            conn.execute(f"CREATE TABLE {name} PARTITION OF events FOR VALUES FROM {bounds}")
            conn.execute(f"CREATE INDEX ON {name} (created_at)")
    assert "no index" not in dry_run_message("orders")
    events = {**orders["spec"], "table": {"schema": "public", "name": "events"}}
    archive_env.create_resource("TableArchive", {"metadata": {"name": "events"}, "spec": events})
    assert "no index" not in dry_run_message("events")


def test_a_table_referenced_with_on_delete_cascade_is_refused(archive_env: ArchiveEnv) -> None:
    admin_api = archive_env.admin_api
    _simple(archive_env, old=50)
    database = archive_env.database
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE order_lines (id int PRIMARY KEY, order_id bigint REFERENCES orders(id) ON DELETE CASCADE)"
        )
        conn.execute("INSERT INTO order_lines VALUES (1, 1)")
    assert archive_env.run() == 3
    ready = conditions(get_status(admin_api, archive_env.namespace, "tablearchives", "orders"))["Ready"]
    assert ready["reason"] == "ForeignKeyBlocked"
    assert "public.order_lines (order_lines_order_id_fkey)" in ready["message"]
    assert len(ids_in_table(database)) == 60


def test_a_malicious_table_name_is_quoted_not_executed(archive_env: ArchiveEnv) -> None:
    bucket, s3_admin = archive_env.bucket, archive_env.s3
    database = archive_env.database
    evil = 'orders"; DROP TABLE victims; --'
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute("CREATE TABLE victims (id int)")
        conn.execute(
            psycopg.sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, created_at timestamptz)").format(
                psycopg.sql.Identifier(evil)
            )
        )
        conn.execute(
            psycopg.sql.SQL("INSERT INTO {} SELECT g, now() - interval '1 year' FROM generate_series(1, 10) g").format(
                psycopg.sql.Identifier(evil)
            )
        )
    setup_archive(archive_env, table=evil)
    assert archive_env.run() == 0
    with psycopg.connect(dsn(database)) as conn:
        assert conn.execute("SELECT to_regclass('victims') IS NOT NULL").fetchone() == (True,)
        remaining = conn.execute(
            psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(evil))
        ).fetchone()
    assert remaining == (0,)
    assert sum(t.num_rows for t in archived_objects(s3_admin, bucket, f"public.{evil}").values()) == 10


def test_copy_mode_keeps_rows_and_archives_each_once(archive_env: ArchiveEnv) -> None:
    bucket, s3_admin = archive_env.bucket, archive_env.s3
    _simple(archive_env, old=250, mode="Copy", batch={"rows": 100})
    database = archive_env.database
    assert archive_env.run() == 0
    assert archive_env.run() == 0  # nothing new: nothing archived twice
    assert len(ids_in_table(database)) == 260
    ids = [i for t in archived_objects(s3_admin, bucket).values() for i in t.column("id").to_pylist()]
    assert sorted(ids) == list(range(1, 251))


def test_csv_gzip_format(archive_env: ArchiveEnv) -> None:
    bucket, s3_admin = archive_env.bucket, archive_env.s3
    import gzip

    # WhenRequired: no checksum header, so the upload is verified by HEAD (size and MD5 ETag) instead.
    archive_env.storage_spec = {**archive_env.storage_spec, "requestChecksum": "WhenRequired"}
    _simple(archive_env, old=30, format="CSVGzip", partitioning="Monthly")
    assert archive_env.run() == 0
    listing = s3_admin.list_objects_v2(Bucket=bucket, Prefix="test/public.orders/")["Contents"]
    assert all(o["Key"].endswith(".csv.gz") and "/dt=" in o["Key"] for o in listing)
    text = b"".join(
        gzip.decompress(s3_admin.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()) for o in listing
    ).decode()
    assert text.count("old ") == 30
    assert (
        archive_env.run(
            "unarchive",
            "--from",
            "2000-01-01",
            "--to",
            "2100-01-01",
        )
        == 0
    )
    assert len(ids_in_table(archive_env.database, "orders_unarchived")) == 30


def test_a_sparse_table_is_archived_in_batches_of_at_most_64_partitions(archive_env: ArchiveEnv) -> None:
    bucket, s3_admin = archive_env.bucket, archive_env.s3
    database = archive_env.database
    _orders(
        database,
        "INSERT INTO orders SELECT g, now() - interval '40 days' - g * interval '2 days', 'sparse' "
        "FROM generate_series(1, 3000) g",  # one row every other day, 16 years
    ).close()
    setup_archive(archive_env, partitioning="Daily")
    assert archive_env.run() == 0
    assert ids_in_table(database) == set()
    batches = manifests(s3_admin, bucket)
    assert sum(m["rows"] for m in batches) == 3000
    assert max(len(m["objects"]) for m in batches) <= 64
    assert len(batches) >= 3000 // 64  # 3000 rows over 6000 days: many windows, not one batch


COMPOSITE_KEY_TABLE = {
    # A partitioned table (its key must include the partition column): a ctid is not unique across
    # partitions, so batches delete by key, a nested loop over the key's index.
    "partitioned": """
        CREATE TABLE orders (tenant int, id bigint, created_at timestamptz NOT NULL, note text,
                             PRIMARY KEY (tenant, id, created_at)) PARTITION BY RANGE (created_at);
        CREATE TABLE orders_old PARTITION OF orders FOR VALUES FROM (MINVALUE) TO ('2025-01-01');
        CREATE TABLE orders_rest PARTITION OF orders DEFAULT;
    """,
    # An ordinary table with a two-column key: batches delete the rows they locked by ctid.
    "plain": "CREATE TABLE orders (tenant int, id bigint, created_at timestamptz NOT NULL, note text, "
    "PRIMARY KEY (tenant, id))",
}


@pytest.mark.parametrize("kind", sorted(COMPOSITE_KEY_TABLE))
def test_a_composite_key_table_is_archived_once_per_row(archive_env: ArchiveEnv, kind: str) -> None:
    bucket, s3_admin = archive_env.bucket, archive_env.s3
    database = archive_env.database
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute(COMPOSITE_KEY_TABLE[kind])
        # Two tenants share ids; the old rows span both partitions of the partitioned table.
        conn.execute(
            "INSERT INTO orders SELECT t, g, timestamptz '2024-12-20 00:00:00+00' + g * interval '1 hour', 'old' "
            "FROM generate_series(1, 400) g, generate_series(1, 2) t"
        )
        conn.execute("INSERT INTO orders SELECT 1, 100000 + g, now(), 'new' FROM generate_series(1, 10) g")
    # Row batches over the partitioned table too (its old partitions would otherwise go whole: partitions.py).
    setup_archive(archive_env, batch={"rows": 70}, partitions={"archiveWhole": False})
    assert archive_env.run() == 0
    assert ids_in_table(database) == {100000 + g for g in range(1, 11)}
    archived = [
        (tenant, key)
        for table in archived_objects(s3_admin, bucket).values()
        for tenant, key in zip(table.column("tenant").to_pylist(), table.column("id").to_pylist(), strict=True)
    ]
    assert sorted(archived) == [(t, g) for t in (1, 2) for g in range(1, 401)]  # each row once
    batches = manifests(s3_admin, bucket)
    assert {tuple(m["primaryKey"]) for m in batches} == {
        ("tenant", "id", "created_at") if kind == "partitioned" else ("tenant", "id")
    }
    assert len(batches) >= 800 // 70
    for table in archived_objects(s3_admin, bucket).values():  # each file in (timestamp, key) order
        rows = list(zip(table.column("created_at").to_pylist(), table.column("tenant").to_pylist(), strict=True))
        assert rows == sorted(rows)


@pytest.mark.parametrize("column_type", ["date", "timestamp", "timestamptz"])
def test_a_date_or_timestamp_column_is_archived_across_many_batches(archive_env: ArchiveEnv, column_type: str) -> None:
    bucket, s3_admin = archive_env.bucket, archive_env.s3
    database = archive_env.database
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE orders (id bigint PRIMARY KEY, created_at {column_type} NOT NULL, note text)")
        conn.execute(
            f"INSERT INTO orders SELECT g, (now() - interval '400 days' + (g / 3) * interval '1 day')::{column_type}, "
            "'old' FROM generate_series(1, 600) g"
        )  # three rows a day: batches end in the middle of a day
        conn.execute(f"INSERT INTO orders SELECT 10000 + g, now()::{column_type}, 'new' FROM generate_series(1, 5) g")
        conn.execute("ANALYZE orders")  # the lanes read the column's histogram, as an array of its type
    setup_archive(archive_env, batch={"rows": 40})
    assert archive_env.run() == 0
    assert ids_in_table(database) == {10000 + g for g in range(1, 6)}
    archived = [i for t in archived_objects(s3_admin, bucket).values() for i in t.column("id").to_pylist()]
    assert sorted(archived) == list(range(1, 601))
    assert len(manifests(s3_admin, bucket)) >= 600 // 40


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


@pytest.mark.parametrize("held", [False, True], ids=["nothing-held", "a-row-held"])
def test_a_batch_reads_about_its_own_rows(database: dict[str, Any], held: bool) -> None:
    # 20,000 rows are due; a batch of 500 must read about 500 of them from the timestamp index, not sort
    # every due row to pick its 500 (the plan the holds test got as an anti-join, batch after batch).
    from jobs.archive.lanes import Lane
    from jobs.archive.ledger_schema import ensure_ledger
    from jobs.archive.settings import parse_archive_spec
    from jobs.archive.statements import BatchPlan, batch_query, sql_settings
    from jobs.archive.table import describe_table

    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute(SIMPLE_TABLE.format(old=20000))
        conn.execute("CREATE INDEX orders_created_at ON orders (created_at)")
        conn.execute("ANALYZE orders")
        ensure_ledger(conn)
        if held:  # brought back by unarchive: never archived again
            conn.execute("INSERT INTO cellar.archive_holds (relation, key) VALUES ('public.orders', '(7)')")
    unused = {"name": "unused", "key": "unused"}
    settings = parse_archive_spec(
        {
            "database": {"secretRef": {"name": "unused"}},
            "storage": {"bucket": "unused", "credentials": {"accessKeyId": unused, "secretAccessKey": unused}},
            "table": {"name": "orders"},
            "timestampColumn": "created_at",
            "olderThan": "30d",
        }
    )
    with psycopg.connect(dsn(database)) as conn:
        info = describe_table(conn, settings)
        cutoff = datetime.now(UTC) - timedelta(days=30)
        sql_settings(conn, settings, info)
        # Every batch but a run's first resumes at the newest timestamp of the batch before it.
        oldest = conn.execute("SELECT min(created_at) FROM orders").fetchone()[0]  # type: ignore[index]
        query = batch_query(BatchPlan(settings, info, cutoff), 500, None, Lane(resume_from=oldest)).as_string(conn)
        plan = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}").fetchone()[0][0]["Plan"]  # type: ignore[index]
        deleted = conn.execute("SELECT count(*), bool_or(id = 7) FROM orders WHERE id <= 20000").fetchone()
        conn.rollback()  # EXPLAIN ANALYZE ran the DELETE: nothing of it stays
    read_from_table = [
        node["Actual Rows"] * node["Actual Loops"]
        for node in _plan_nodes(plan)
        if node.get("Relation Name") == "orders" and node["Node Type"] in ("Index Scan", "Seq Scan", "Bitmap Heap Scan")
    ]
    assert read_from_table, plan
    assert max(read_from_table) <= 2 * 500, json.dumps(plan, indent=1)[:4000]
    assert deleted == (20000 - 500, held)  # the batch took 500 rows, and never the held one


@pytest.mark.parametrize("parallelism", [1, 2])
def test_a_server_error_partway_through_a_batch_rolls_the_batch_back(archive_env: ArchiveEnv, parallelism: int) -> None:
    bucket, s3_admin, admin_api = archive_env.bucket, archive_env.s3, archive_env.admin_api
    database = archive_env.database
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute(SIMPLE_TABLE.format(old=3000))
        conn.execute(
            "CREATE FUNCTION refuse_2900() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF OLD.id = 2900 THEN RAISE EXCEPTION 'order 2900 is under audit'; END IF; RETURN OLD; END $$"
        )
        conn.execute("CREATE TRIGGER refuse_2900 BEFORE DELETE ON orders FOR EACH ROW EXECUTE FUNCTION refuse_2900()")
    setup_archive(archive_env, batch={"rows": 5000, "parallelism": parallelism})
    assert archive_env.run() == 1  # retryable
    archived = {i for t in archived_objects(s3_admin, bucket).values() for i in t.column("id").to_pylist()}
    assert archived == (set() if parallelism == 1 else set(range(1, 1501)))
    assert ids_in_table(database) == set(range(1, 3001)) - archived | {1000000 + g for g in range(1, 11)}
    with psycopg.connect(dsn(database)) as conn:
        ledger_rows = conn.execute("SELECT coalesce(sum(rows), 0) FROM cellar.archive_ledger").fetchone()
        assert ledger_rows == (len(archived),)
    found = conditions(get_status(admin_api, archive_env.namespace, "tablearchives", "orders"))
    assert "order 2900 is under audit" in found["ArchiveSucceeded"]["message"]


@pytest.mark.parametrize("grants", ["SELECT, UPDATE, DELETE", "SELECT, DELETE"], ids=["documented", "no-update"])
def test_the_job_needs_exactly_the_documented_grants(archive_env: ArchiveEnv, grants: str) -> None:
    stack, bucket, s3_admin = archive_env.stack, archive_env.bucket, archive_env.s3
    admin_api = archive_env.admin_api
    database = archive_env.database
    role, password = f"archiver_{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    with psycopg.connect(stack.pg_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    with psycopg.connect(dsn(database), autocommit=True) as conn:  # as the table's owner
        conn.execute(SIMPLE_TABLE.format(old=300))
        conn.execute(f"GRANT {grants} ON orders TO {role}")
        conn.execute(f"GRANT CREATE ON DATABASE {database['dbname']} TO {role}")  # for the schema cellar
    setup_archive(archive_env.on({**database, "username": role, "password": password}))
    code = archive_env.run()
    archived = [i for t in archived_objects(s3_admin, bucket).values() for i in t.column("id").to_pylist()]
    if grants == "SELECT, UPDATE, DELETE":
        assert code == 0
        assert sorted(archived) == list(range(1, 301))
        assert ids_in_table(database) == {1000000 + g for g in range(1, 11)}
        return
    assert code == 3  # permanent: a person must grant it
    assert archived == []
    assert len(ids_in_table(database)) == 310
    found = conditions(get_status(admin_api, archive_env.namespace, "tablearchives", "orders"))["ArchiveSucceeded"]
    assert found["reason"] == "InsufficientPrivilege"
    assert f"GRANT UPDATE ON public.orders TO {role}" in found["message"]


def test_the_rows_due_are_counted_beside_the_batches(
    archive_env: ArchiveEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    database = archive_env.database
    with _orders(
        database,
        "INSERT INTO orders SELECT g, now() - interval '500 days' + g * interval '4 hours', 'x' "
        "FROM generate_series(1, 3000) g",
    ) as conn:
        due = conn.execute("SELECT count(*) FROM orders WHERE created_at < now() - interval '30 days'").fetchone()
    assert due is not None
    assert 2700 < due[0] < 2900  # olderThan 30d (setup_archive)
    setup_archive(archive_env, batch={"rows": 200, "parallelism": 2})
    assert archive_env.run() == 0
    logged = json_log_lines(capsys)
    counted = [entry for entry in logged if entry["msg"] == "rows due"]
    assert [entry["rows"] for entry in counted] == [due[0]]
    summary = next(entry for entry in logged if entry["msg"] == "archive run summary")
    assert summary["rows"] == due[0]
    # The count ran on a connection of its own, which the run closed: only the lanes' were ever open.
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'cellar-archive'"
        ).fetchone()
    assert left == (0,)


# No autovacuum in these tables: whether they have statistics is the test's choice, not the daemon's timing.
ORDERS_FOR_ESTIMATES = {
    "plain": [
        "CREATE TABLE orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, note text) "
        "WITH (autovacuum_enabled = off)"
    ],
    "partitioned": [
        "CREATE TABLE orders (id bigint, created_at timestamptz NOT NULL, note text, PRIMARY KEY (id, created_at)) "
        "PARTITION BY RANGE (created_at)",
        "CREATE TABLE orders_old PARTITION OF orders FOR VALUES FROM (MINVALUE) TO (now() - interval '250 days') "
        "WITH (autovacuum_enabled = off)",
        "CREATE TABLE orders_new PARTITION OF orders DEFAULT WITH (autovacuum_enabled = off)",
        # made ahead of its time, as pg_partman does: analyzed, it holds no rows and so no statistics
        "CREATE TABLE orders_next PARTITION OF orders FOR VALUES FROM ('infinity') TO (MAXVALUE) "
        "WITH (autovacuum_enabled = off)",
    ],
}


@pytest.mark.parametrize(
    ("kind", "analyze", "estimated"),
    [
        ("plain", ["orders"], True),
        ("plain", [], False),  # without statistics the planner would guess a third of the table
        ("partitioned", ["orders_old", "orders_new", "orders_next"], True),  # an empty one needs none
        ("partitioned", ["orders_old", "orders_next"], False),  # one without statistics is enough to count
    ],
)
def test_a_large_backlog_is_estimated_from_the_statistics_not_counted(
    archive_env: ArchiveEnv,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    analyze: list[str],
    estimated: bool,
) -> None:
    tuning = Tuning(estimate_from_rows=500)  # the backlog: 2,800 rows; a guess: about 1,000
    database = archive_env.database
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        for statement in ORDERS_FOR_ESTIMATES[kind]:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO orders SELECT g, now() - interval '500 days' + g * interval '4 hours', 'x' "
            "FROM generate_series(1, 3000) g"
        )
        for table in analyze:
            conn.execute(f"ANALYZE {table}")
        due = conn.execute("SELECT count(*) FROM orders WHERE created_at < now() - interval '30 days'").fetchone()
    assert due is not None
    setup_archive(archive_env, batch={"rows": 200, "parallelism": 2})
    assert archive_env.run(tuning=tuning) == 0
    logged = json_log_lines(capsys)
    [counted] = [entry for entry in logged if entry["msg"] == "rows due"]
    assert counted["estimated"] is estimated
    if estimated:  # the planner's figure from the histograms: near the count, rarely equal to it
        assert abs(counted["rows"] - due[0]) < due[0] * 0.1
    else:
        assert counted["rows"] == due[0]
    assert ids_in_table(database) == set(range(due[0] + 1, 3001))


def test_a_day_goes_into_one_file_once_batches_end_on_day_boundaries(archive_env: ArchiveEnv) -> None:
    bucket, s3_admin = archive_env.bucket, archive_env.s3
    database = archive_env.database
    _orders(
        database,
        "INSERT INTO orders SELECT g, date_trunc('day', now()) - interval '200 days' + g * interval '1 hour', 'x' "
        "FROM generate_series(0, 60 * 24 - 1) g UNION ALL "
        "SELECT 10000 + g, date_trunc('day', now()) - interval '110 days' + g * interval '1 hour', 'y' "
        "FROM generate_series(0, 60 * 24 - 1) g",
    ).close()
    setup_archive(archive_env, partitioning="Daily", batch={"rows": 100, "parallelism": 1})
    assert archive_env.run() == 0
    assert ids_in_table(database) == set()  # the gap did not end the run early
    objects = archived_objects(s3_admin, bucket)
    files_per_day = Counter(key.split("/dt=")[1].split("/")[0] for key in objects)
    assert len(files_per_day) == 120
    assert sum(table.num_rows for table in objects.values()) == 120 * 24
    split = sorted(day for day, files in files_per_day.items() if files > 1)
    assert len(split) <= 2, split  # without aligned ends, about one day in four (every batch's edge)
    assert all(files == 2 for day, files in files_per_day.items() if day in split)


def test_arrays_of_mixed_dimensions_are_refused_up_front_and_a_filter_leaves_them_out(archive_env: ArchiveEnv) -> None:
    admin_api = archive_env.admin_api
    database, namespace = archive_env.database, archive_env.namespace
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute('CREATE TABLE orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, "Grid" integer[])')
        conn.execute(
            "INSERT INTO orders VALUES (1, now() - interval '100 days', '{{1,2},{3,4}}'), "
            "(2, now() - interval '99 days', '{5,NULL}'), (3, now() - interval '98 days', NULL)"
        )
    setup_archive(archive_env, batch={"rows": 100, "parallelism": 1})
    assert archive_env.run() == 3  # permanent: the spec must change
    found = conditions(get_status(admin_api, namespace, "tablearchives", "orders"))["ArchiveSucceeded"]
    assert found["reason"] == "EncodingFailed"
    assert "column 'Grid' (integer[]) holds arrays of 1 to 2 dimensions" in found["message"]
    assert ids_in_table(database) == {1, 2, 3}  # refused before the first batch

    # The message's suggestion, as the spec's filter: the 2-D (and NULL) rows go, the 1-D one stays.
    suggested = found["message"].split("for example ")[1].strip("'")
    patch_spec(admin_api, namespace, {"filter": suggested})
    assert archive_env.run() == 0
    assert ids_in_table(database) == {2}


def test_lanes_over_rows_that_bunch_up_archive_every_due_row_once(archive_env: ArchiveEnv) -> None:
    # A filter and rows bunched at the start leave one lane most of the work; it does it alone.
    bucket, s3_admin = archive_env.bucket, archive_env.s3
    database = archive_env.database
    with _orders(
        database,
        "INSERT INTO orders SELECT g, now() - interval '330 days' + g * interval '2 hours 24 minutes', "
        "CASE WHEN g <= 100 OR g % 10 = 0 THEN 'due' ELSE 'keep' END FROM generate_series(1, 3000) g",
        "INSERT INTO orders SELECT 10000 + g, now() - interval '330 days' + g * interval '1 minute', 'due' "
        "FROM generate_series(1, 900) g",
        "ANALYZE orders",
    ) as conn:
        due = {
            r[0]
            for r in conn.execute(
                "SELECT id FROM orders WHERE note = 'due' AND created_at < now() - interval '30 days'"
            )
        }
    setup_archive(archive_env, filter="note = 'due'", batch={"rows": 50, "parallelism": 2})
    assert archive_env.run() == 0
    # Every due row archived exactly once, none of the others.
    archived_ids = [i for table in archived_objects(s3_admin, bucket).values() for i in table.column("id").to_pylist()]
    assert len(archived_ids) == len(set(archived_ids))
    assert set(archived_ids) == due
    assert ids_in_table(database).isdisjoint(due)


def _patch_spec_after_the_first_batch(archive_env: ArchiveEnv, spec: dict[str, Any]) -> Thread:
    """A thread that merge-patches the TableArchive's spec once the run's first batch has committed."""
    admin_api = archive_env.admin_api
    database, namespace = archive_env.database, archive_env.namespace
    before = len(ids_in_table(database))

    def patch() -> None:
        deadline = time.monotonic() + 60
        while len(ids_in_table(database)) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        patch_spec(admin_api, namespace, spec)

    thread = Thread(target=patch)
    thread.start()
    return thread


def test_a_running_archive_takes_a_new_batch_size_and_pause_from_its_spec(
    archive_env: ArchiveEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    tuning = Tuning(settings_reread_seconds=0.0)  # read at every batch boundary
    _simple(archive_env, old=600, batch={"rows": 100, "pause": "5s"})  # the patch lands in this pause
    patcher = _patch_spec_after_the_first_batch(
        archive_env, {"batch": {"rows": 1000, "pause": "0s"}, "olderThan": "0d"}
    )
    try:
        assert archive_env.run(tuning=tuning) == 0
    finally:
        patcher.join()
    logged = json_log_lines(capsys)
    # The patch landed during the first pause: the batches after the first take up to 1000 rows. Where they cut is
    # not fixed (a batch ends on a day boundary when it can, and its size adapts to its rows): assert the sizes.
    batches = [entry["rows"] for entry in logged if entry["msg"] == "batch committed"]
    assert batches[0] == 100
    assert sum(batches) == 600
    assert all(rows <= 1000 for rows in batches)
    assert max(batches[1:]) > 100  # the new size was taken
    changed = next(entry for entry in logged if entry["msg"] == "settings changed; the next batches use them")
    assert changed["changed"] == {"batch.rows": "1000", "batch.pause": "0s"}
    later = next(entry for entry in logged if "take effect at the next run" in entry["msg"])
    assert later["detail"] == "olderThan"
    assert ids_in_table(archive_env.database) == {1000000 + g for g in range(1, 11)}  # the new rows stay


def test_a_shorter_max_run_time_set_while_the_lanes_run_stops_them(archive_env: ArchiveEnv) -> None:
    admin_api = archive_env.admin_api
    tuning = Tuning(settings_reread_seconds=0.0)
    _simple(archive_env, old=20000, batch={"rows": 20, "parallelism": 2})
    patcher = _patch_spec_after_the_first_batch(archive_env, {"maxRunTime": "1s"})
    try:
        assert archive_env.run(tuning=tuning) == 0
    finally:
        patcher.join()
    outcome = conditions(get_status(admin_api, archive_env.namespace, "tablearchives", "orders"))
    assert "stopped at maxRunTime" in outcome["ArchiveSucceeded"]["message"]
    left = len(ids_in_table(archive_env.database))
    assert 10 < left < 20010  # some rows moved, not all


def test_a_spec_changed_into_an_invalid_one_leaves_the_run_on_its_settings(
    archive_env: ArchiveEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    tuning = Tuning(settings_reread_seconds=0.0)
    _simple(archive_env, old=300, batch={"rows": 100, "pause": "1s"})
    patcher = _patch_spec_after_the_first_batch(
        archive_env, {"filter": "true; DROP TABLE orders", "batch": {"rows": 1000}}
    )
    try:
        assert archive_env.run(tuning=tuning) == 0
    finally:
        patcher.join()
    logged = json_log_lines(capsys)
    # The run kept its batch size of 100 (the invalid spec's 1000 was not taken). Where batches cut is not fixed
    # (a batch ends on a day boundary when it can, and its size adapts): under load [100, 100, 44, 56] was seen.
    batches = [entry["rows"] for entry in logged if entry["msg"] == "batch committed"]
    assert all(rows <= 100 for rows in batches), batches
    assert sum(batches) == 300
    warned = [entry for entry in logged if entry["msg"].startswith("the spec was changed into an invalid one")]
    assert len(warned) == 1  # once, not at every batch
    assert warned[0]["detail"].startswith("spec.filter: must be one boolean expression")


def test_the_shipped_example_only_reports_until_its_dry_run_is_turned_off(archive_env: ArchiveEnv) -> None:
    from tests.harness.chart import FLEET_EXAMPLE, render, rendered

    sample = rendered(render(FLEET_EXAMPLE), "TableArchive", "orders-created-at")
    assert sample["spec"]["dryRun"] is True
    with psycopg.connect(dsn(archive_env.database), autocommit=True) as conn:
        conn.execute(SIMPLE_TABLE.format(old=300))
        conn.execute("UPDATE orders SET created_at = created_at - interval '400 days' WHERE id < 1000000")
    before = ids_in_table(archive_env.database)
    archive_env.create_secret("cellar-database", archive_env.database)
    spec = {
        **sample["spec"],  # the example as the chart renders it, pointed at the test's database and bucket
        "database": {"secretRef": {"name": "cellar-database"}, "sslMode": "disable"},
        "storage": archive_env.storage_spec,
        "batch": {"rows": 1000},
    }
    archive_env.create_resource("TableArchive", {"metadata": {"name": "sample"}, "spec": spec})
    assert archive_env.run(name="sample") == 0
    assert ids_in_table(archive_env.database) == before  # nothing moved
    assert archived_objects(archive_env.s3, archive_env.bucket) == {}
    reported = archive_env.conditions("TableArchive", "sample")["ArchiveSucceeded"]
    assert reported["reason"] == "DryRunCompleted"
    assert "rows" in reported["message"]
    assert "nothing was changed" in reported["message"]
    patch_spec(archive_env.admin_api, archive_env.namespace, {"dryRun": False}, name="sample")
    assert archive_env.run(name="sample") == 0
    assert len(ids_in_table(archive_env.database)) < len(before)


def test_unarchive_logs_rate_limited_progress_and_a_summary_not_a_line_per_object(
    archive_env: ArchiveEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    env, interval = archive_env, 0.5
    _orders(
        env.database,
        "INSERT INTO orders SELECT g, now() - interval '200 days' + g * interval '1 hour', 'x' "
        "FROM generate_series(1, 2400) g",  # 100 days of rows: a file each
    ).close()
    setup_archive(env, partitioning="Daily", batch={"rows": 500})
    assert env.run() == 0
    objects = [o for o in list_all(env.s3, env.bucket, "test/public.orders/") if o["Key"].endswith(".parquet")]
    assert len(objects) >= 100
    json_log_lines(capsys)
    tuning = Tuning(progress_log_seconds=interval)
    assert env.run("unarchive", "--from", "2000-01-01", "--to", "2100-01-01", tuning=tuning) == 0
    lines = json_log_lines(capsys)
    summary = next(line for line in lines if line["msg"] == "unarchive summary")
    assert (summary["objects"], summary["rows"], summary["inserted"]) == (len(objects), 2400, 2400)
    assert summary["bytes"] == sum(o["Size"] for o in objects)
    progress = [line["progress"] for line in lines if line["msg"] == "progress"]
    # At most one line every `interval` seconds, whatever the number of objects; one at least once that passed.
    assert len(progress) <= summary["seconds"] / interval + 1
    assert progress or summary["seconds"] < interval
    for figures in progress:
        assert figures["unit"] == "rows"
        assert figures["total"] == 2400
        assert figures["objectsTotal"] == len(objects)
        assert 0 < figures["done"] <= 2400
        assert 0 < figures["bytes"] <= figures["bytesTotal"]
        assert figures["ratePerSecond"] > 0
        assert figures["done"] == 2400 or figures["eta"]  # an ETA while rows remain
    assert [f["done"] for f in progress] == sorted({f["done"] for f in progress})
    assert len([line for line in lines if line["msg"] != "progress"]) < 15  # no line per object
