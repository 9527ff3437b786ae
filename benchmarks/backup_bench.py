"""Backup benchmark: cellar against what people run today, on one generated database, in one run.

  (a) pg_dump -Fc -Z0 --no-sync -f /dev/null       the floor: nothing dumps faster
  (b) pg_dump -Fc | aws s3 cp - s3://...           what most people script
  (c) pg_dumpall | gzip | aws s3 cp - s3://...     the Zalando logical-backup CronJob's approach
  (d) cellar's backup job (zstd, streaming multipart upload, manifest)
  (e) the same, encrypted with age to one recipient (spec.encryption)
  (f) the same as (d), into a bucket with object lock, every object locked (spec.storage.objectLock)

With --wide-gb, a second database of four large tables for parallel dumps (benchmarks/parallel_backup_bench.py).

(d), (e) and (f) take turns in two rounds, and each figure is the best of its two, so that a slow minute
on shared cores weighs on all alike.

For each: wall time, CPU time (all processes), peak RSS (largest process) and stored size, then the
ratios against (a), (b) and (d) and the targets. Run:

    .venv/bin/python -m benchmarks.backup_bench --gb 1          (add --gb 1,4 for the memory check)
    .venv/bin/python -m benchmarks.backup_bench --gb 0 --wide-gb 1   (only the parallel section)

It starts its own kube-apiserver, PostgreSQL and MinIO (tests/harness), as the tests do.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pyrage
from kubernetes import client

from benchmarks.measure import BENCH_NAMESPACE as NAMESPACE
from benchmarks.measure import create_database_secret, install_cellar, run_measured
from tests.harness.cluster import admin_client
from tests.harness.stack import S3_ACCESS_KEY, S3_SECRET_KEY, LocalStack, s3_client

AWSCLI_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cellar" / "awscli-venv"


@dataclass
class Measurement:
    name: str
    wall: float
    cpu: float
    peak_rss_mb: float
    stored_mb: float


def measure(name: str, argv: list[str], env: dict[str, str], stored: Any) -> Measurement:
    run = run_measured(name, argv, env)
    return Measurement(name, run.wall, run.cpu, run.peak_rss_mb, stored() / 1024**2)


def ensure_awscli() -> Path:
    """The AWS CLI in a venv of its own (it pins a botocore that would fight cellar's boto3)."""
    aws = AWSCLI_VENV / "bin" / "aws"
    if not aws.exists():
        subprocess.run([sys.executable, "-m", "venv", str(AWSCLI_VENV)], check=True)
        subprocess.run([str(AWSCLI_VENV / "bin" / "pip"), "install", "-q", "awscli"], check=True)
    return aws


def pgbench_init(stack: LocalStack, database: str, *, scale: int) -> None:
    """pgbench's tables at `scale` (about 15 MiB a unit), in `database` on the stack's server."""
    env = {**os.environ, "PGPASSWORD": stack.pg_dsn().split("password=")[1]}
    where = ["-h", "127.0.0.1", "-p", str(stack.pg_port), "-U", "postgres", database]
    subprocess.run(
        [str(stack.pg_bin / "pgbench"), "-i", "-s", str(scale), "-q", *where], env=env, check=True, capture_output=True
    )


def generate_database(stack: LocalStack, gigabytes: float) -> tuple[str, int]:
    """pgbench tables plus a table of text, jsonb and bytea; returns (name, size in bytes)."""
    name = f"bench_{str(gigabytes).replace('.', '_')}gb"
    with psycopg.connect(stack.pg_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    pgbench_init(stack, name, scale=max(1, int(52 * gigabytes)))
    rows = int(300_000 * gigabytes)
    with psycopg.connect(stack.pg_dsn(name), autocommit=True) as conn:
        conn.execute("CREATE TABLE documents (id bigint PRIMARY KEY, title text, body jsonb, attachment bytea)")
        # Realistic entropy: random ids and amounts, repeated vocabulary, and an incompressible attachment,
        # so that compressors work as they do on production data (not on repeated md5 strings).
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
        conn.execute(
            "INSERT INTO documents SELECT g, "
            "(ARRAY['invoice', 'order', 'refund', 'quote', 'receipt'])[1 + g % 5] || ' ' || g || ' for customer ' "
            "|| (random() * 100000)::int, "
            "jsonb_build_object('id', g, 'customer', (random() * 100000)::int, "
            "'amount', round((random() * 10000)::numeric, 2), "
            "'currency', (ARRAY['EUR', 'USD', 'GBP'])[1 + g % 3], 'created', now() - random() * interval '900 days', "
            "'lines', jsonb_build_array("
            "jsonb_build_object('sku', md5(random()::text), 'qty', (random() * 9)::int + 1), "
            "jsonb_build_object('sku', md5(random()::text), 'qty', (random() * 9)::int + 1)), "
            "'note', md5(random()::text) || ' ' || md5(random()::text)), "
            "gen_random_bytes(600) "
            f"FROM generate_series(1, {rows}) g"
        )
        conn.execute("VACUUM ANALYZE")
        size = int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])  # type: ignore[index]
    return name, size


CELLAR = "(d) cellar backup (zstd, default level)"
CELLAR_ENCRYPTED = "(e) cellar backup, age to one recipient"
CELLAR_LOCKED = "(f) cellar backup, object lock"
CELLAR_ROUNDS = 2


def create_backup_resource(
    api: Any, name: str, secret: str, bucket: str, endpoint: str, extra: dict[str, Any], storage: dict[str, Any]
) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "cellar.dev",
        "v1alpha1",
        NAMESPACE,
        "databasebackups",
        {
            "apiVersion": "cellar.dev/v1alpha1",
            "kind": "DatabaseBackup",
            "metadata": {"name": name},
            "spec": {
                "database": {"secretRef": {"name": secret}, "sslMode": "disable"},
                "storage": {
                    "bucket": bucket,
                    "prefix": name,
                    "endpoint": endpoint,
                    "forcePathStyle": True,
                    "credentials": {
                        "accessKeyId": {"name": "cellar-object-storage", "key": "AWS_ACCESS_KEY_ID"},
                        "secretAccessKey": {"name": "cellar-object-storage", "key": "AWS_SECRET_ACCESS_KEY"},
                    },
                    **storage,
                },
                **extra,
            },
        },
    )


def run(stack: LocalStack, kubeconfig: Path, gigabytes: float) -> list[Measurement]:
    database, size = generate_database(stack, gigabytes)
    print(f"\n## database {database}: {size / 1024**3:.2f} GiB (pg_database_size)", flush=True)
    s3 = s3_client(stack.s3_endpoint)
    bucket = f"bench-{database.replace('_', '-')}"
    s3.create_bucket(Bucket=bucket)

    def size_of(prefix: str, where: str = bucket) -> Any:
        return lambda: sum(o["Size"] for o in s3.list_objects_v2(Bucket=where, Prefix=prefix).get("Contents", []))

    password = stack.pg_dsn().split("password=")[1]
    pg_env = {
        **os.environ,
        "PGHOST": "127.0.0.1",
        "PGPORT": str(stack.pg_port),
        "PGUSER": "postgres",
        "PGPASSWORD": password,
    }
    aws = ensure_awscli()
    aws_env = {
        **pg_env,
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    aws_cp = f"{aws} --endpoint-url {stack.s3_endpoint} s3 cp - s3://{bucket}"
    pg_dump = str(stack.pg_bin / "pg_dump")
    results = [
        measure(
            "(a) pg_dump -Fc -Z0 > /dev/null",
            [pg_dump, "-Fc", "-Z0", "--no-sync", "-f", "/dev/null", database],
            pg_env,
            lambda: 0,
        ),
        measure(
            "(b) pg_dump -Fc | aws s3 cp -",
            ["bash", "-o", "pipefail", "-c", f"{pg_dump} -Fc {database} | {aws_cp}/b/{database}.dump"],
            aws_env,
            size_of("b/"),
        ),
        measure(
            "(c) pg_dumpall | gzip | aws s3 cp -",
            ["bash", "-o", "pipefail", "-c", f"{stack.pg_bin / 'pg_dumpall'} | gzip | {aws_cp}/c/all.sql.gz"],
            aws_env,
            size_of("c/"),
        ),
    ]

    # (d) and (e): cellar, as its ServiceAccount, against a DatabaseBackup.
    api = admin_client(stack.kubeconfig)
    secret = f"cellar-database-{database.replace('_', '-')}"
    create_database_secret(api, stack, secret, database)
    recipient = str(pyrage.x25519.Identity.generate().to_public())
    locked = f"{bucket}-locked"
    s3.create_bucket(Bucket=locked, ObjectLockEnabledForBucket=True)
    lock = {"objectLock": {"mode": "Governance", "retainFor": "1h"}}
    variants = [
        (CELLAR, "plain", bucket, {}, {}),
        (CELLAR_ENCRYPTED, "age", bucket, {"encryption": {"recipients": [recipient]}}, {}),
        (CELLAR_LOCKED, "lock", locked, {}, lock),
    ]
    best: dict[str, Measurement] = {}
    for attempt in range(CELLAR_ROUNDS):
        for label, short, target, extra, storage in variants:
            name = f"{database.replace('_', '-')}-{short}-{attempt}"
            create_backup_resource(api, name, secret, target, stack.s3_endpoint, extra, storage)
            measured = measure(
                label,
                [
                    *[sys.executable, "-m", "jobs.backup", "--kubeconfig", str(kubeconfig)],
                    *["--namespace", NAMESPACE, "--name", name, "--log-level", "warning"],
                ],
                {**os.environ, "CELLAR_TERMINATION_LOG": "/nonexistent/x"},
                size_of(f"{name}/data/", target),
            )
            if label not in best or measured.wall < best[label].wall:
                best[label] = measured
    results += [best[CELLAR], best[CELLAR_ENCRYPTED], best[CELLAR_LOCKED]]
    return results


def report(gigabytes: float, results: list[Measurement]) -> dict[str, float]:
    print(f"\n{'variant':42} {'wall s':>8} {'cpu s':>8} {'peak RSS MB':>12} {'stored MB':>10}")
    for m in results:
        print(f"{m.name:42} {m.wall:8.1f} {m.cpu:8.1f} {m.peak_rss_mb:12.0f} {m.stored_mb:10.1f}")
    a, b, _, d, e, f = results[:6]
    ratios = {
        "e_wall_over_d": e.wall / d.wall,
        "f_wall_over_d": f.wall / d.wall,
        "d_wall_over_a": d.wall / a.wall,
        "b_wall_over_d": b.wall / d.wall,
        "d_size_over_b": d.stored_mb / b.stored_mb,
        "d_peak_rss_mb": d.peak_rss_mb,
    }
    print(f"\nratios at {gigabytes} GB:")
    print(
        f"  (d) wall / (a) wall   = {ratios['d_wall_over_a']:.2f}   target <= 1.5   "
        f"{'PASS' if ratios['d_wall_over_a'] <= 1.5 else 'MISS'}"
    )
    print(
        f"  (b) wall / (d) wall   = {ratios['b_wall_over_d']:.2f}   target >= 2.0   "
        f"{'PASS' if ratios['b_wall_over_d'] >= 2 else 'MISS'}"
    )
    print(
        f"  (d) size / (b) size   = {ratios['d_size_over_b']:.2f}   target <= 1.0   "
        f"{'PASS' if ratios['d_size_over_b'] <= 1 else 'MISS'}"
    )
    print(
        f"  (d) peak RSS          = {d.peak_rss_mb:.0f} MB  target < 200  {'PASS' if d.peak_rss_mb < 200 else 'MISS'}"
    )
    print(
        f"  (e) wall / (d) wall   = {ratios['e_wall_over_d']:.2f}   target <= 1.15  "
        f"{'PASS' if ratios['e_wall_over_d'] <= 1.15 else 'MISS'}"
    )
    print(
        f"  (e) peak RSS          = {e.peak_rss_mb:.0f} MB  target < 200  {'PASS' if e.peak_rss_mb < 200 else 'MISS'}"
    )
    print(f"  (f) wall / (d) wall   = {ratios['f_wall_over_d']:.2f}   (object lock: no target, the cost shown)")
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", default="1", help="database sizes in GB, comma-separated (for example 1,4); 0: none")
    parser.add_argument("--wide-gb", type=float, default=0, help="the four-table database for parallel dumps; 0: none")
    args = parser.parse_args()
    sizes = [float(s) for s in args.gb.split(",") if float(s) > 0]
    stack = LocalStack().start()
    try:
        print(f"servers: kube-apiserver {stack.kube_version}, {stack.pg_version}, MinIO; cores: {os.cpu_count()}")
        kubeconfig, _ = install_cellar(stack, "backup")
        if args.wide_gb:
            from benchmarks.parallel_backup_bench import report_parallel, run_parallel

            report_parallel(run_parallel(stack, kubeconfig, args.wide_gb))
        summary = {size: report(size, run(stack, kubeconfig, size)) for size in sizes}
        if len(sizes) > 1:
            low, high = summary[min(sizes)], summary[max(sizes)]
            verdict = "PASS" if high["d_peak_rss_mb"] <= low["d_peak_rss_mb"] * 1.1 else "MISS"
            print(
                f"\n(d) peak RSS at {max(sizes)} GB / at {min(sizes)} GB = "
                f"{high['d_peak_rss_mb'] / low['d_peak_rss_mb']:.2f}  target: no higher (within 10% noise)  {verdict}"
            )
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
