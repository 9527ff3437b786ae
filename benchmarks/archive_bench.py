"""Archive benchmark: cellar's archiver against the floor and a hand-written loop, in one run.

A table of --rows rows (default 5 million) of mixed types, 80% of it older than the cutoff. Each variant
runs on its own copy of the same database (CREATE DATABASE ... TEMPLATE), dropped once measured:

  (a) the floor: COPY (SELECT ... WHERE ts < cutoff) TO STDOUT into /dev/null, then one DELETE (best of 3)
  (b) a plain loop a team would write: select a batch, write gzip CSV, upload, DELETE ... WHERE id IN (...)
  (c) cellar's archiver (Parquet with zstd, ledger, verified uploads) with its default settings (25,000
      rows a batch, 2 lanes), Daily, Monthly and Auto (the default) partitions (best of 3 each)
  (d) a diagnostic, no target: one lane's capture step alone, one batch at a time (its DELETE, reading
      and parsing the rows, COMMIT; no files)
  (i) (c) with format: Iceberg (PyIceberg's SQL catalog in the same PostgreSQL, schema cellar_iceberg; its default
      batches: 100,000 rows, a snapshot each, read and written 25,000 rows at a time): as (c) Daily (partitionBy:
      day, a file a day) once with spec.iceberg.maintenance.enabled: false, once with the maintenance at the run's
      end (the default); and as (c) Auto (partitionBy: Auto, the default), maintenance off

(a), (c) and (i) take turns in --rounds rounds (default 3), so that a slow minute on shared cores weighs on all
alike; each prints its round's ratios. For each: rows per second, peak RSS, the longest single transaction, stored
size, and the CPU seconds of the job, PostgreSQL and MinIO while it ran; then the targets:
(c) >= 50% of (a)'s rows/s and faster than (b); no transaction over 2 s; peak RSS under 300 MB; each (i) >= 0.9
of the (c) run of its layout's rows/s and its peak RSS within 1.2 of that run's. Run:

    .venv/bin/python -m benchmarks.archive_bench              (--rows 1000000 for a quicker look)

--batch-rows N and --parallelism N run (c) with those settings instead of the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from kubernetes import client

from benchmarks.measure import BENCH_NAMESPACE as NAMESPACE
from benchmarks.measure import create_database_secret, install_cellar, run_measured, server_cpu
from tests.harness.stack import LocalStack, s3_client

BATCH = 10_000
ROUNDS = 3
CUTOFF_AGE_DAYS = 365
COLUMNS = "id, created_at, customer, amount, status, note, payload, ref"


UNIFORM = "g::float8 / %s"  # a row's age, as a fraction of 5 years: as many rows every day


def generate(stack: LocalStack, rows: int, template: str = "archive_template", age: str = UNIFORM) -> None:
    """The table in database `template`; `age`: an SQL expression of g (1 to rows) and the row count
    (its %s), each row's age as a fraction of 5 years."""
    with psycopg.connect(stack.pg_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {template}")
    with psycopg.connect(stack.pg_dsn(template), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, customer int, "
            "amount numeric(12, 2), status text, note text, payload jsonb, ref uuid)"
        )
        fill_orders(conn, rows, age)


def fill_orders(conn: psycopg.Connection[Any], rows: int, age: str = UNIFORM) -> None:
    """`rows` rows into `orders` (plain or partitioned), indexed on created_at and analyzed. With UNIFORM ages
    80% are older than the cutoff (365 days): spread over 5 years, the newest 1 year old."""
    conn.execute(
        f"INSERT INTO orders SELECT g, now() - ({age}) * interval '1825 days', "
        "(random() * 100000)::int, round((random() * 10000)::numeric, 2), "
        "(ARRAY['new', 'paid', 'shipped', 'cancelled'])[1 + g %% 4], 'order ' || g || ' ' || md5(g::text), "
        "jsonb_build_object('sku', md5((g %% 5000)::text), 'qty', 1 + g %% 9, 'gift', g %% 7 = 0), "
        "md5(g::text || 'x')::uuid FROM generate_series(1, %s) g",
        (rows, rows),
    )
    conn.execute("CREATE INDEX orders_created_at ON orders (created_at)")
    conn.execute("VACUUM ANALYZE orders")


def cpu_spent(job: float, before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds of the variant's own processes and of each server while it ran: on two shared cores,
    what they add up to bounds the wall time."""
    return {"job_cpu": job, **{f"{name}_cpu": after[name] - before[name] for name in before}}


def fresh_copy(stack: LocalStack, name: str, template: str = "archive_template") -> str:
    with psycopg.connect(stack.pg_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    return stack.pg_dsn(name)


def drop(stack: LocalStack, name: str) -> None:
    """Drop a variant's database once measured, so that autovacuum of its dead rows (4 million after a
    full run) does not take CPU from the variants after it."""
    with psycopg.connect(stack.pg_dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def cellar(
    stack: LocalStack,
    database: str,
    bucket: str,
    kubeconfig: Path,
    api: Any,
    partitioning: str,
    attempt: int,
    batch: dict[str, int],
    *,
    name: str = "",
    job: tuple[str, ...] = ("jobs.archive",),
    env: dict[str, str] | None = None,
    spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """(c): a TableArchive over `database` with the given partitioning, run as the archive job's account.
    `job`: the module to run and its first arguments; `env`: added to the job's environment; `spec`: more
    fields of the TableArchive's spec."""
    name = name or f"orders-{partitioning.lower()}-{attempt}"
    create_database_secret(api, stack, name, database)
    credentials = {
        "accessKeyId": {"name": "cellar-object-storage", "key": "AWS_ACCESS_KEY_ID"},
        "secretAccessKey": {"name": "cellar-object-storage", "key": "AWS_SECRET_ACCESS_KEY"},
    }
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "cellar.dev",
        "v1alpha1",
        NAMESPACE,
        "tablearchives",
        {
            "apiVersion": "cellar.dev/v1alpha1",
            "kind": "TableArchive",
            "metadata": {"name": name},
            "spec": {
                "database": {"secretRef": {"name": name}, "sslMode": "disable"},
                "storage": {
                    "bucket": bucket,
                    "prefix": name,
                    "endpoint": stack.s3_endpoint,
                    "forcePathStyle": True,
                    "credentials": credentials,
                },
                "table": {"name": "orders"},
                "timestampColumn": "created_at",
                "olderThan": f"{CUTOFF_AGE_DAYS}d",
                "partitioning": partitioning,
                "maxRunTime": "2h",
                **({"batch": batch} if batch else {}),
                **(spec or {}),
            },
        },
    )
    before = server_cpu(stack)
    run = run_measured(
        "(c) cellar",
        [
            sys.executable,
            "-m",
            *job,
            "--kubeconfig",
            str(kubeconfig),
            "--namespace",
            NAMESPACE,
            "--name",
            name,
        ],
        {**os.environ, "CELLAR_TERMINATION_LOG": "/nonexistent/x", **(env or {})},
    )
    summary = next(
        json.loads(line) for line in run.output.splitlines() if line.startswith("{") and '"archive run summary"' in line
    )
    return {
        "wall": run.wall,
        "rss": run.peak_rss_mb,
        "rows": summary["rows"],
        "longest_transaction": summary["longest_transaction_seconds"],
        "stored": summary["bytes"],
        "objects": summary["objects"] + summary["batches"],  # data files and one manifest per batch
        **cpu_spent(run.cpu, before, server_cpu(stack)),
    }


# (i): format: Iceberg, laid out as the (c) run each is compared with: Daily (a file a day: PyIceberg's cost a file
# shows most), without and with the maintenance at the run's end, and Auto (the default, as a user would run it).
ICEBERG_VARIANTS: dict[str, dict[str, Any]] = {
    "iceberg": {"format": "Iceberg", "iceberg": {"partitionBy": "day", "maintenance": {"enabled": False}}},
    "iceberg-maintained": {"format": "Iceberg", "iceberg": {"partitionBy": "day"}},
    "iceberg-auto": {"format": "Iceberg", "iceberg": {"maintenance": {"enabled": False}}},
}
ICEBERG_LAYOUT = {"iceberg": "Daily", "iceberg-maintained": "Daily", "iceberg-auto": "Auto"}
FLOOR = "(a) COPY to /dev/null + one DELETE"
HAND_LOOP = "(b) hand loop: SELECT, gzip CSV, upload, DELETE"
CAPTURE_ONLY = "(d) diagnostic: cellar's DELETE + parse + COMMIT only"


def cellar_label(partitioning: str) -> str:
    return f"(c) cellar, {partitioning} partitions" + (" (default)" if partitioning == "Auto" else "")


def iceberg_label(variant: str) -> str:
    maintenance = "on" if variant.endswith("maintained") else "off"
    return f"(i) as (c) {ICEBERG_LAYOUT[variant]}, Iceberg, maintenance {maintenance}"


def iceberg_ratios(iceberg: dict[str, Any], parquet: dict[str, Any]) -> dict[str, float]:
    """An Iceberg run against the Parquet run it matches: rows/s and peak RSS, Iceberg's over Parquet's."""
    return {
        "rows_per_second": (iceberg["rows"] / iceberg["wall"]) / (parquet["rows"] / parquet["wall"]),
        "rss": iceberg["rss"] / parquet["rss"],
    }


def iceberg_checks(label: str, ratios: dict[str, float]) -> list[tuple[str, str, bool]]:
    """The targets of #38: Iceberg at least 0.9 of Parquet's rows/s, its peak RSS within 1.2 of Parquet's."""
    return [
        (f"{label} rows/s ratio = {ratios['rows_per_second']:.2f}", "target >= 0.90", ratios["rows_per_second"] >= 0.9),
        (f"{label} peak RSS ratio = {ratios['rss']:.2f}", "target <= 1.20", ratios["rss"] <= 1.2),
    ]


def script_variant(stack: LocalStack, label: str, variant: str, attempt: int, cutoff: str) -> dict[str, Any]:
    """One run of (a), (b) or (d): this module in a process of its own, on a fresh copy of the table."""
    database = f"archive_{variant.replace('-', '_')}_{attempt}"
    dsn = fresh_copy(stack, database)
    before = server_cpu(stack)
    run = run_measured(
        label,
        [
            *[sys.executable, "-m", "benchmarks.archive_baselines", variant],
            *["--dsn", dsn, "--cutoff", cutoff, "--endpoint", stack.s3_endpoint, "--bucket", "archive-bench"],
        ],
        dict(os.environ),
    )
    spent = cpu_spent(run.cpu, before, server_cpu(stack))
    drop(stack, database)
    return {"wall": run.wall, "rss": run.peak_rss_mb, **json.loads(run.output.strip().splitlines()[-1]), **spent}


def cellar_variant(
    stack: LocalStack, kubeconfig: Path, api: Any, partitioning: str, attempt: int, batch: dict[str, int]
) -> dict[str, Any]:
    """(c) with `partitioning`, or (i) when `partitioning` names one of ICEBERG_VARIANTS (laid out as its
    ICEBERG_LAYOUT)."""
    spec = ICEBERG_VARIANTS.get(partitioning)
    database = f"archive_c_{partitioning.lower().replace('-', '_')}_{attempt}"
    fresh_copy(stack, database)
    result = cellar(
        stack,
        database,
        "archive-bench",
        kubeconfig,
        api,
        ICEBERG_LAYOUT[partitioning] if spec else partitioning,
        attempt,
        batch,
        name=f"orders-{partitioning.lower()}-{attempt}",
        spec=spec,
    )
    drop(stack, database)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--batch-rows", type=int, help="(c): spec.batch.rows (default: cellar's default)")
    parser.add_argument("--parallelism", type=int, help="(c): spec.batch.parallelism (default: cellar's default)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="rounds of (a), (c) and (i); the best of each")
    args = parser.parse_args()

    stack = LocalStack().start()
    try:
        print(f"servers: {stack.pg_version}, MinIO, kube-apiserver {stack.kube_version}; cores: {os.cpu_count()}")
        started = time.monotonic()
        generate(stack, args.rows)
        print(f"generated {args.rows} rows in {time.monotonic() - started:.0f}s", flush=True)
        cutoff = (datetime.now(UTC) - timedelta(days=CUTOFF_AGE_DAYS)).isoformat()
        s3 = s3_client(stack.s3_endpoint)
        s3.create_bucket(Bucket="archive-bench")
        batch = {
            key: value
            for key, value in (("rows", args.batch_rows), ("parallelism", args.parallelism))
            if value is not None
        }
        kubeconfig, api = install_cellar(stack, "archive")
        runs: dict[str, list[dict[str, Any]]] = {FLOOR: [], HAND_LOOP: [], CAPTURE_ONLY: []}
        runs[HAND_LOOP].append(script_variant(stack, HAND_LOOP, "hand-loop", 0, cutoff))
        runs[CAPTURE_ONLY].append(script_variant(stack, CAPTURE_ONLY, "capture-only", 0, cutoff))
        # The floor and cellar take turns, round after round: a run of a few seconds on shared cores is
        # noisy, and a slow minute then weighs on both alike. Each figure is the best of its rounds.
        for attempt in range(args.rounds):
            runs[FLOOR].append(script_variant(stack, FLOOR, "floor", attempt, cutoff))
            labels = {p: cellar_label(p) for p in ("Daily", "Monthly", "Auto")}
            labels |= {v: iceberg_label(v) for v in ICEBERG_VARIANTS}
            for variant, label in labels.items():
                runs.setdefault(label, []).append(cellar_variant(stack, kubeconfig, api, variant, attempt, batch))
            floor_wall = runs[FLOOR][-1]["wall"]
            turns = []
            for variant, label in labels.items():
                wall = runs[label][-1]["wall"]
                turn = f"{label[:3]} {variant} {wall:.1f}s ({floor_wall / wall:.2f} of (a)'s rows/s"
                if variant in ICEBERG_VARIANTS:
                    layout = ICEBERG_LAYOUT[variant]
                    parquet = runs[cellar_label(layout)][-1]
                    turn += f", {iceberg_ratios(runs[label][-1], parquet)['rows_per_second']:.2f} of (c) {layout}'s"
                turns.append(turn + ")")
            print(f"round {attempt + 1}: (a) {floor_wall:.1f}s, " + ", ".join(turns), flush=True)
        results = {label: min(measured, key=lambda r: r["wall"]) for label, measured in runs.items()}
        report(args.rows, results)
    finally:
        stack.stop()
    return 0


def report(total_rows: int, results: dict[str, dict[str, Any]]) -> None:
    print(f"\ntable: {total_rows} rows; rows moved per variant below")
    print(
        f"{'variant':54} {'rows':>9} {'wall s':>8} {'rows/s':>9} {'longest tx s':>13} {'peak RSS MB':>12} "
        f"{'stored MB':>10} {'objects':>8}"
    )
    for label, r in results.items():
        print(
            f"{label:54} {r['rows']:>9} {r['wall']:8.1f} {r['rows'] / r['wall']:9.0f} {r['longest_transaction']:13.2f} "
            f"{r['rss']:12.0f} {r['stored'] / 1024**2:10.1f} {r.get('objects', 0):>8}"
        )
    cores = os.cpu_count() or 1
    print(f"\nCPU seconds while each ran ({cores} cores: their sum / {cores} bounds the wall time from below)")
    print(f"{'variant':54} {'job':>7} {'postgres':>9} {'minio':>7} {'sum':>7} {'sum / ' + str(cores):>8} {'wall':>7}")
    for label, r in results.items():
        total = r["job_cpu"] + r["postgres_cpu"] + r["minio_cpu"]
        print(
            f"{label:54} {r['job_cpu']:7.1f} {r['postgres_cpu']:9.1f} {r['minio_cpu']:7.1f} {total:7.1f} "
            f"{total / cores:8.1f} {r['wall']:7.1f}"
        )
    a, b = results[FLOOR], results[HAND_LOOP]
    c, c_monthly = results[cellar_label("Daily")], results[cellar_label("Monthly")]
    rate = {k: r["rows"] / r["wall"] for k, r in zip("abc", (a, b, c), strict=True)}
    checks = [
        (f"(c) rows/s / (a) rows/s = {rate['c'] / rate['a']:.2f}", "target >= 0.50", rate["c"] / rate["a"] >= 0.5),
        (f"(c) rows/s / (b) rows/s = {rate['c'] / rate['b']:.2f}", "target > 1.00", rate["c"] > rate["b"]),
        (f"(c) longest transaction = {c['longest_transaction']:.2f} s", "target <= 2 s", c["longest_transaction"] <= 2),
        (f"(c) peak RSS = {c['rss']:.0f} MB", "target < 300 MB", c["rss"] < 300),
        (
            f"(c, Monthly) rows/s / (a) rows/s = {c_monthly['rows'] / c_monthly['wall'] / rate['a']:.2f}",
            "target >= 0.50",
            c_monthly["rows"] / c_monthly["wall"] >= rate["a"] / 2,
        ),
    ]
    for variant in ICEBERG_VARIANTS:
        label = iceberg_label(variant)
        layout = ICEBERG_LAYOUT[variant]
        parquet = results[cellar_label(layout)]
        checks += iceberg_checks(f"(i) {variant} / (c) {layout}", iceberg_ratios(results[label], parquet))
    d = results[CAPTURE_ONLY]
    print(f"\n  diagnostic, no target: (d) rows/s / (a) rows/s = {d['rows'] / d['wall'] / rate['a']:.2f}")
    print_checks(checks)


def print_checks(checks: list[tuple[str, str, bool]]) -> None:
    for figure, target, ok in checks:
        print(f"  {figure:50} {target:16} {'PASS' if ok else 'MISS'}")


if __name__ == "__main__":
    sys.exit(main())
