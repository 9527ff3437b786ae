"""Partition benchmark: cellar archiving whole partitions against the floor, in one run.

A table of --rows rows (default 5 million) of the archive benchmark's columns, range-partitioned by month on
created_at over 5 years, about 80% of the rows in partitions wholly older than the cutoff (365 days). Each
variant runs on its own copy of the database (CREATE DATABASE ... TEMPLATE), dropped once measured:

  (a) the floor: for each partition wholly before the cutoff, COPY it TO STDOUT into /dev/null, then DROP it
  (b) cellar with partitions.archiveWhole: false: every due row in row batches (what partition mode replaces)
  (c) cellar's archiver with its defaults: those partitions detached, read once into Parquet, dropped; the
      due rows of the partition that straddles the cutoff in row batches
  (d) (c) with partitioning: Monthly: one file per month instead of one per day (a thirtieth of the objects)
  (e) (d) with the partitions read through COPY CSV instead of in binary (Tuning.arrow_reads off)
  (r) a diagnostic: the whole partitions only read, both ways, nothing written: what each read costs
  (bi), (ci) (b) and (c) with format: Iceberg (PyIceberg's SQL catalog in the same PostgreSQL), partitionBy: day
      to match their layout, spec.iceberg.maintenance.enabled: false, the defaults otherwise; (cm) (ci) with the
      maintenance at the run's end (the default)

(a) to (e) and the Iceberg variants take turns for --rounds rounds. Printed: rows per second of each; (c)'s and
(d)'s rows per second over (a)'s (target: at least 0.8); the most that ratio could be on this machine (the CPU
seconds the variant needed, spread perfectly over the cores, against (a)'s wall time); the longest time any
transaction held an ACCESS EXCLUSIVE lock on the parent table while (c) ran, sampled every 20 ms from pg_locks
(target: under 1 s); and each Iceberg variant's rows per second and peak RSS over its Parquet variant's (targets:
at least 0.9, at most 1.2). Run:

    .venv/bin/python -m benchmarks.partition_bench              (--rows 1000000 for a quicker look)
    .venv/bin/python -m benchmarks.partition_bench --pair bi    (only (bi) and (b), taking turns)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
import psycopg
from psycopg import sql

from benchmarks.archive_baselines import orders_settings
from benchmarks.archive_bench import (
    COLUMNS,
    ICEBERG_VARIANTS,
    cellar,
    cpu_spent,
    drop,
    fill_orders,
    fresh_copy,
    iceberg_checks,
    iceberg_ratios,
    print_checks,
)
from benchmarks.measure import install_cellar, server_cpu
from jobs.archive.arrow_reads import ArrowReader
from jobs.archive.arrow_types import select_list
from jobs.archive.copy_reads import read_copy
from jobs.archive.encoding import arrow_to_table, csv_to_table
from jobs.archive.statements import copy_out
from jobs.archive.table import describe_table
from tests.harness.stack import LocalStack, s3_client

TEMPLATE = "partition_template"
# The archive job with Tuning(arrow_reads=False), as the scheduler benchmark switches parts off.
CSV_READS_JOB = ("benchmarks.scheduler_bench", "job", json.dumps({"arrow_reads": False}))
CUTOFF_AGE_DAYS = 365


def generate(stack: LocalStack, rows: int) -> None:
    with psycopg.connect(stack.pg_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    with psycopg.connect(stack.pg_dsn(TEMPLATE), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id bigint, created_at timestamptz NOT NULL, customer int, amount numeric(12, 2), "
            "status text, note text, payload jsonb, ref uuid, PRIMARY KEY (id, created_at)) "
            "PARTITION BY RANGE (created_at)"
        )
        conn.execute(
            "DO $$ DECLARE m timestamptz; BEGIN "
            "FOR m IN SELECT generate_series(date_trunc('month', now() - interval '1830 days'), "
            "date_trunc('month', now() + interval '31 days'), interval '1 month') LOOP "
            "EXECUTE format('CREATE TABLE %I PARTITION OF orders FOR VALUES FROM (%L) TO (%L)', "
            "'orders_' || to_char(m, 'YYYYMM'), m, m + interval '1 month'); END LOOP; END $$"
        )
        fill_orders(conn, rows)  # the archive benchmark's rows, uniform over 5 years


def whole_partitions(dsn: str) -> list[tuple[str, int]]:
    """The partitions wholly before the cutoff and their rows."""
    with psycopg.connect(dsn) as conn:
        names = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'orders'::regclass AND (regexp_match(pg_get_expr(c.relpartbound, c.oid), "
            "'TO \\(''(.*)''\\)'))[1]::timestamptz <= now() - %s * interval '1 day' ORDER BY 1",
            (CUTOFF_AGE_DAYS,),
        ).fetchall()
        found = []
        for (name,) in names:
            counted = conn.execute(f"SELECT count(*) FROM {name}").fetchone()
            found.append((str(name), int(str(counted[0])) if counted else 0))
        return found


def floor(stack: LocalStack, attempt: int) -> dict[str, Any]:
    database = f"partition_a_{attempt}"
    dsn = fresh_copy(stack, database, TEMPLATE)
    partitions = whole_partitions(dsn)
    before, client_before = server_cpu(stack), time.process_time()
    started = time.monotonic()
    with psycopg.connect(dsn) as conn:
        for name, _ in partitions:
            with conn.cursor().copy(f"COPY (SELECT {COLUMNS} FROM {name}) TO STDOUT") as copy:
                for _chunk in copy:
                    pass
            conn.execute(f"DROP TABLE {name}")
            conn.commit()
    wall = time.monotonic() - started
    spent = cpu_spent(time.process_time() - client_before, before, server_cpu(stack))
    drop(stack, database)
    rows = sum(n for _, n in partitions)
    return {"wall": wall, "rows": rows, "rows_per_second": rows / wall, "partitions": len(partitions), **spent}


def rounded(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}


def cpu_bound_wall(figures: dict[str, Any]) -> float:
    """The shortest wall time the CPU seconds a variant needed allow on this machine's cores."""
    spent = figures["job_cpu"] + figures["postgres_cpu"] + figures["minio_cpu"]
    return spent / (os.cpu_count() or 1)


def reads_only(stack: LocalStack, attempt: int) -> dict[str, Any]:
    """(r), a diagnostic: every whole partition read as the job reads it, nothing written: through COPY CSV and
    parsed (Tuning.arrow_reads off), and in binary through ADBC (the default); what each read costs."""
    database = f"partition_r_{attempt}"
    dsn = fresh_copy(stack, database, TEMPLATE)
    partitions = whole_partitions(dsn)
    figures: dict[str, Any] = {}
    with psycopg.connect(dsn) as conn:
        info = describe_table(conn, orders_settings({"bucket": "unused"}, f"{CUTOFF_AGE_DAYS}d"))
        conn.rollback()
        queries = [sql.SQL("SELECT {} FROM {}").format(select_list(info.columns), sql.SQL(n)) for n, _ in partitions]
        reader = ArrowReader(adbc.connect(f"{dsn} sslmode=disable", autocommit=True))
        for path in ("csv", "binary"):
            before, client_before, started = server_cpu(stack), time.process_time(), time.monotonic()
            rows = 0
            for query in queries:
                if path == "binary":
                    rows += arrow_to_table(reader.fetch(query.as_string(conn)), info.columns).num_rows
                    continue
                with conn.cursor() as cursor, cursor.copy(copy_out(query)) as copy:
                    rows += csv_to_table(read_copy(conn, copy), info.columns).num_rows
            wall = time.monotonic() - started
            spent = cpu_spent(time.process_time() - client_before, before, server_cpu(stack))
            figures[path] = {"wall": wall, "rows": rows, **spent}
            conn.rollback()
        reader.close()
    drop(stack, database)
    return figures


class ParentLockWatch(threading.Thread):
    """Samples pg_locks every 20 ms for an ACCESS EXCLUSIVE lock on the parent; the longest hold seen."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.stop, self.longest = dsn, threading.Event(), 0.0

    def run(self) -> None:
        held_since: float | None = None
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE relation = 'orders'::regclass "
                    "AND mode = 'AccessExclusiveLock' AND granted"
                ).fetchone()
                now = time.monotonic()
                if row and row[0]:
                    held_since = held_since or now
                    self.longest = max(self.longest, now - held_since)
                else:
                    held_since = None
                time.sleep(0.02)


def cellar_run(
    stack: LocalStack,
    kubeconfig: Any,
    api: Any,
    attempt: int,
    whole: bool = True,
    partitioning: str = "Daily",
    csv_reads: bool = False,
    iceberg: str = "",
) -> dict[str, Any]:
    """(b) to (e); `iceberg`: one of ICEBERG_VARIANTS, for (bi), (ci) and (cm)."""
    variant = ("e" if csv_reads else "c" if partitioning == "Daily" else "d") if whole else "b"
    variant += {"": "", "iceberg": "i", "iceberg-maintained": "m"}[iceberg]
    database = f"partition_{variant}_{attempt}"
    dsn = fresh_copy(stack, database, TEMPLATE)
    whole_rows = sum(n for _, n in whole_partitions(dsn))
    watch = ParentLockWatch(dsn)
    watch.start()
    result = cellar(
        stack,
        database,
        "partition-bench",
        kubeconfig,
        api,
        partitioning,
        attempt,
        {},
        name=f"part-{variant}-{attempt}",
        spec={"partitions": {"archiveWhole": whole}, **ICEBERG_VARIANTS.get(iceberg, {})},
        job=CSV_READS_JOB if csv_reads else ("jobs.archive",),
    )
    watch.stop.set()
    watch.join()
    drop(stack, database)
    return {
        **result,
        "whole_partition_rows": whole_rows,
        "rows_per_second": result["rows"] / result["wall"],
        "parent_exclusive_seconds": watch.longest,
    }


# --pair: each Iceberg variant's cellar_run arguments, then its Parquet variant's.
PAIRS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "bi": ({"whole": False, "iceberg": "iceberg"}, {"whole": False}),
    "ci": ({"iceberg": "iceberg"}, {}),
    "cm": ({"iceberg": "iceberg-maintained"}, {}),
}


def report_iceberg(runs: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """Each Iceberg variant against its Parquet variant: (bi) against (b), (ci) and (cm) against (c)."""
    for name, (iceberg, parquet) in runs.items():
        ratios = iceberg_ratios(iceberg, parquet)
        print(
            f"({name}) {iceberg['rows']} rows, {iceberg['wall']:.1f}s, {iceberg['rows_per_second']:.0f} rows/s, "
            f"peak RSS {iceberg['rss']:.0f} MB; ({name[0]}) {parquet['rows_per_second']:.0f} rows/s, "
            f"peak RSS {parquet['rss']:.0f} MB"
        )
        print_checks(iceberg_checks(f"({name}) / ({name[0]})", ratios))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--pair",
        choices=sorted(PAIRS),
        help="only this Iceberg variant and its Parquet variant, taking turns (a closer look at one ratio)",
    )
    args = parser.parse_args()
    stack = LocalStack().start()
    try:
        s3_client(stack.s3_endpoint).create_bucket(Bucket="partition-bench")
        kubeconfig, api = install_cellar(stack, "archive")
        started = time.monotonic()
        generate(stack, args.rows)
        print(f"generated {args.rows} rows in {time.monotonic() - started:.0f}s", file=sys.stderr)
        for attempt in range(1, args.rounds + 1):
            if args.pair:
                parquet_run = cellar_run(stack, kubeconfig, api, attempt, **PAIRS[args.pair][1])
                iceberg_run = cellar_run(stack, kubeconfig, api, attempt, **PAIRS[args.pair][0])
                print(
                    json.dumps({"round": attempt, args.pair: rounded(iceberg_run), args.pair[0]: rounded(parquet_run)})
                )
                report_iceberg({args.pair: (iceberg_run, parquet_run)})
                continue
            a = floor(stack, attempt)
            r = reads_only(stack, attempt)
            b = cellar_run(stack, kubeconfig, api, attempt, whole=False)
            c = cellar_run(stack, kubeconfig, api, attempt)
            d = cellar_run(stack, kubeconfig, api, attempt, partitioning="Monthly")
            e = cellar_run(stack, kubeconfig, api, attempt, partitioning="Monthly", csv_reads=True)
            iceberg = {
                "bi": (cellar_run(stack, kubeconfig, api, attempt, whole=False, iceberg="iceberg"), b),
                "ci": (cellar_run(stack, kubeconfig, api, attempt, iceberg="iceberg"), c),
                "cm": (cellar_run(stack, kubeconfig, api, attempt, iceberg="iceberg-maintained"), c),
            }
            shown = {
                name: rounded(figures)
                for name, figures in (
                    ("a_floor", a),
                    ("b_row_batches", b),
                    ("c_whole_partitions", c),
                    ("d_whole_partitions_monthly_files", d),
                    ("e_as_d_read_as_copy_csv", e),
                )
            }
            ratios = {
                "c_over_a_rows_per_second": round(c["rows_per_second"] / a["rows_per_second"], 2),
                "d_over_a_rows_per_second": round(d["rows_per_second"] / a["rows_per_second"], 2),
                "e_over_a_rows_per_second": round(e["rows_per_second"] / a["rows_per_second"], 2),
                "c_over_b_rows_per_second": round(c["rows_per_second"] / b["rows_per_second"], 2),
                # the most (c) and (d) could reach here: their CPU seconds (job, PostgreSQL, MinIO) spread
                # perfectly over this machine's cores, against the floor's wall time
                "c_cpu_bound_over_a": round(a["wall"] / cpu_bound_wall(c), 2),
                "d_cpu_bound_over_a": round(a["wall"] / cpu_bound_wall(d), 2),
            }
            reads = {path: rounded(figures) for path, figures in r.items()}
            print(json.dumps({"round": attempt, **shown, **ratios, "r_reads_only": reads}))
            report_iceberg(iceberg)
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
