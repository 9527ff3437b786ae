"""Maintenance benchmark: `cellar-archive maintain` of an Iceberg table of --files small data files (default 1,000),
against DuckDB reading all of their rows, in one run.

The table: --partitions month partitions (default 20), filled by --files / --partitions appends of one small file
per partition each (as archive batches leave them), --rows-per-file rows a file. Then, each in a process of its
own (their rusage covers exactly that):

  (a) the baseline: DuckDB's iceberg extension reads every row of those files (count, sums and max of every
      column), what any reader of the table does once
  (b) what `cellar-archive maintain` does once it holds the table's lock (jobs.archive.maintain.maintain_table),
      with a retention and a grace period of 0s: the small files rewritten into one file a partition, every
      older snapshot expired and every file no snapshot references deleted (PostgreSQL and MinIO only: the
      job's Kubernetes reads are not part of it)

Printed: seconds and peak RSS of each, and (b)'s seconds over (a)'s. Target: (b) under 30 s. Run:

    .venv/bin/python -m benchmarks.maintain_bench          (--files 200 for a quicker look)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pyarrow as pa

from benchmarks.measure import run_measured
from tests.harness.stack import (
    PG_SUPERUSER_PASSWORD,
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    LocalStack,
    built_binaries,
    s3_client,
)

DATABASE = "maintain_bench"
BUCKET = "maintain-bench"
NAME = "orders-iceberg"
TARGET_SECONDS = 30


def catalog(stack: LocalStack) -> Any:
    """PyIceberg's SQL catalog where the TableArchive's default catalog is: its database, schema cellar_iceberg."""
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog(
        "cellar",
        uri=f"postgresql+psycopg://postgres:{PG_SUPERUSER_PASSWORD}@127.0.0.1:{stack.pg_port}/{DATABASE}"
        "?options=-csearch_path%3Dcellar_iceberg",
        **{
            "s3.endpoint": stack.s3_endpoint,
            "s3.access-key-id": S3_ACCESS_KEY,
            "s3.secret-access-key": S3_SECRET_KEY,
            "s3.region": "us-east-1",
        },
    )


def rows(first: int, count: int, month: int) -> pa.Table:
    start = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=31 * month)
    ids = range(first, first + count)
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "created_at": pa.array([start + timedelta(minutes=i % 20_000) for i in ids], pa.timestamp("us", "UTC")),
            "amount": pa.array([Decimal(i % 100_000) / 100 for i in ids], pa.decimal128(12, 2)),
            "note": pa.array([f"order {i}" for i in ids], pa.string()),
        }
    )


def make_table(stack: LocalStack, files: int, partitions: int, rows_per_file: int) -> str:
    """The source table (empty: the TableArchive needs it) and the Iceberg table of `files` small files, appended
    a file per partition at a time; returns the table's metadata location."""
    from pyiceberg.transforms import MonthTransform

    with psycopg.connect(stack.pg_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {DATABASE}")
    with psycopg.connect(stack.pg_dsn(DATABASE), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, amount numeric(12,2), "
            "note text)"
        )
        conn.execute("CREATE SCHEMA cellar_iceberg")
    lake = catalog(stack)
    lake.create_namespace("public")
    table = lake.create_table(
        ("public", "orders"),
        schema=rows(0, 1, 0).schema,
        location=f"s3://{BUCKET}/{NAME}/public.orders/iceberg",
    )
    with table.update_spec() as spec:
        spec.add_field("created_at", MonthTransform(), "created_at_month")
    first = 0
    for _ in range(files // partitions):
        batch = pa.concat_tables([rows(first + m * rows_per_file, rows_per_file, m) for m in range(partitions)])
        table = lake.load_table(("public", "orders"))
        table.append(batch)
        first += partitions * rows_per_file
    return str(lake.load_table(("public", "orders")).metadata_location)


def read_all(endpoint: str, metadata: str) -> None:
    """(a), in its own process: DuckDB reads every row of the table."""
    import duckdb

    from tests.integration.iceberg_helpers import _extension

    conn = duckdb.connect()
    for package, name in (
        ("duckdb_extension_httpfs", "httpfs"),
        ("duckdb_extension_avro", "avro"),
        ("duckdb_extension_iceberg", "iceberg"),
    ):
        conn.load_extension(_extension(package, name))
    conn.execute(
        f"CREATE SECRET minio (TYPE s3, KEY_ID '{S3_ACCESS_KEY}', SECRET '{S3_SECRET_KEY}', "
        f"ENDPOINT '{endpoint.removeprefix('http://')}', URL_STYLE 'path', USE_SSL false, REGION 'us-east-1')"
    )
    found = conn.execute(
        "SELECT count(*), sum(id), sum(amount), max(created_at)::varchar, max(note) FROM iceberg_scan(?)", [metadata]
    ).fetchone()
    print(json.dumps({"rows": found[0] if found else None}))


def archive_settings(endpoint: str, transform: str, target_mib: int | None = None) -> Any:
    """The ArchiveSettings of a TableArchive over the table, its maintenance with a retention and grace of 0s."""
    from jobs.archive.settings import parse_archive_spec

    reference = {"name": "unused", "key": "unused"}
    return parse_archive_spec(
        {
            "database": {"secretRef": {"name": "unused"}},
            "storage": {
                "bucket": BUCKET,
                "prefix": NAME,
                "endpoint": endpoint,
                "forcePathStyle": True,
                "credentials": {"accessKeyId": reference, "secretAccessKey": reference},
            },
            "table": {"name": "orders"},
            "timestampColumn": "created_at",
            "olderThan": "30d",
            "format": "Iceberg",
            "iceberg": {
                "partitionBy": transform,
                "maintenance": {"snapshotRetention": "0s", "orphanGracePeriod": "0s"},
                **({"targetFileSizeMiB": target_mib} if target_mib else {}),
            },
        }
    )


def maintain(port: int, endpoint: str, target_mib: int | None) -> None:
    """(b), in its own process: what `cellar-archive maintain` does once it holds the table's lock."""
    from common.db import connect
    from common.secrets import DatabaseSettings, StorageCredentials
    from common.storage import open_store
    from jobs.archive.iceberg import IcebergTable
    from jobs.archive.iceberg_catalog import CatalogAccess
    from jobs.archive.ledger_schema import ensure_ledger
    from jobs.archive.maintain import MaintenanceScope, maintain_table
    from jobs.archive.table import describe_table

    settings = archive_settings(endpoint, "month", target_mib)
    database = DatabaseSettings("127.0.0.1", port, DATABASE, "postgres", PG_SUPERUSER_PASSWORD, "disable", None, 10)
    credentials = StorageCredentials(S3_ACCESS_KEY, S3_SECRET_KEY, None, None)
    store = open_store(settings.storage, credentials)
    with connect(database) as conn:
        info = describe_table(conn, settings)
        ensure_ledger(conn)
        access = CatalogAccess(database, credentials, store.key(settings.relation))
        table = IcebergTable.open(settings, info, access, create=False)
        done = maintain_table(MaintenanceScope(table, store, conn, "bench"))
    print(json.dumps({"message": done.message("public.orders")}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=20)
    parser.add_argument("--rows-per-file", type=int, default=500)
    # A small target with large partitions shows (b)'s peak RSS follows the target, not the partition's size.
    parser.add_argument("--target-mib", type=int, help="spec.iceberg.targetFileSizeMiB (default: the spec's)")
    parser.add_argument("variant", nargs="?", choices=["read-all", "maintain"], help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--metadata", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant == "read-all":
        read_all(args.endpoint, args.metadata)
        return 0
    if args.variant == "maintain":
        maintain(args.port, args.endpoint, args.target_mib)
        return 0
    stack = LocalStack()
    stack.binaries = built_binaries(["minio"])  # PostgreSQL and MinIO only: no Kubernetes
    try:
        stack.start_postgres()
        stack.start_minio()
        return measure(stack, args)
    finally:
        stack.stop()


def measure(stack: LocalStack, args: argparse.Namespace) -> int:
    print(f"servers: {stack.pg_version}, MinIO; cores: {os.cpu_count()}", flush=True)
    s3_client(stack.s3_endpoint).create_bucket(Bucket=BUCKET)
    started = time.monotonic()
    metadata = make_table(stack, args.files, args.partitions, args.rows_per_file)
    total = args.files // args.partitions * args.partitions * args.rows_per_file
    print(f"table of {args.files} small files ({total} rows) made in {time.monotonic() - started:.0f}s", flush=True)
    env = {**os.environ}
    here = [sys.executable, "-m", "benchmarks.maintain_bench", "--endpoint", stack.s3_endpoint]
    baseline = run_measured("(a)", [*here, "read-all", "--metadata", metadata], env)
    read = json.loads(baseline.output.strip().splitlines()[-1])
    assert read["rows"] == total, read
    target = ["--target-mib", str(args.target_mib)] if args.target_mib else []
    maintained = run_measured("(b)", [*here, "maintain", "--port", str(stack.pg_port), *target], env)
    message = json.loads(maintained.output.strip().splitlines()[-1])["message"]
    after = catalog(stack).load_table(("public", "orders"))
    files_after = len(list(after.scan().plan_files()))
    assert after.scan().to_arrow().num_rows == total
    print(
        f"(a) DuckDB reads all {total} rows of the {args.files} files: {baseline.wall:.1f}s, "
        f"peak RSS {baseline.peak_rss_mb:.0f} MB"
    )
    print(f"(b) maintenance: {maintained.wall:.1f}s, peak RSS {maintained.peak_rss_mb:.0f} MB; {message}")
    verdict = "PASS" if maintained.wall < TARGET_SECONDS else "MISS"
    print(f"(b) / (a): {maintained.wall / baseline.wall:.2f}; {files_after} data files after")
    print(f"{verdict}: (b) {maintained.wall:.1f}s against the target of under {TARGET_SECONDS} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
