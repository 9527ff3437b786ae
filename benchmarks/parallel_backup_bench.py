"""Parallel dumps (issue #39), the --wide-gb section of backup_bench: a database of four large tables, in one run:

  (p1) pg_dump -Fc -Z0 -f /dev/null                       the single-stream floor
  (p2) pg_dump -Fd -j 2 -Z0 into a local directory        the parallel floor, N = 2
  (p3) pg_dump -Fd -j 4 -Z0 into a local directory        the parallel floor, N = 4
  (p4) cellar backup, one stream                          today's cellar, for peak RSS
  (p5) cellar backup, spec.parallelism: 2 (staging)
  (p6) cellar backup, spec.parallelism: 4 (staging)

with the most bytes the staging directory held (cellar's own count, at each 0.2 s poll), and the CPU seconds
PostgreSQL and MinIO spent on each: their sum with the client's, over the cores, is the least wall time the
machine allows that variant, and shows when a target is out of the machine's reach rather than cellar's.

Run:

    .venv/bin/python -m benchmarks.backup_bench --gb 0 --wide-gb 1
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psycopg

from benchmarks.backup_bench import Measurement, create_backup_resource, measure
from benchmarks.measure import BENCH_NAMESPACE as NAMESPACE
from benchmarks.measure import create_database_secret, run_measured, server_cpu
from tests.harness.cluster import admin_client
from tests.harness.stack import LocalStack, s3_client


@dataclass
class ParallelRun:
    """A variant of the parallel section: its measurement, the most bytes it staged, and the servers' CPU."""

    measured: Measurement
    staged: int
    postgres_cpu: float
    minio_cpu: float

    def cpu_bound(self, cores: int) -> float:
        """The least wall time this variant's CPU allows on `cores` cores, all of them kept busy."""
        return (self.measured.cpu + self.postgres_cpu + self.minio_cpu) / cores


WIDE_TABLES = 4


def generate_wide_database(stack: LocalStack, gigabytes: float) -> tuple[str, int]:
    """Four tables of about gigabytes / 4 each (text, jsonb, numbers), so that pg_dump -j has tables to share."""
    name = f"wide_{str(gigabytes).replace('.', '_')}gb"
    with psycopg.connect(stack.pg_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    rows = int(7_000_000 * gigabytes / WIDE_TABLES)  # about 150 bytes a row on disk
    with psycopg.connect(stack.pg_dsn(name), autocommit=True) as conn:
        for number in range(1, WIDE_TABLES + 1):
            conn.execute(
                f"CREATE TABLE events_{number} (id bigint PRIMARY KEY, kind text, amount numeric, payload jsonb)"
            )
            conn.execute(
                f"INSERT INTO events_{number} SELECT g, (ARRAY['view', 'click', 'buy'])[1 + g % 3] || ' ' || g, "
                "round((random() * 1000)::numeric, 2), "
                "jsonb_build_object('user', (random() * 1e6)::int, 'note', md5(random()::text)) "
                f"FROM generate_series(1, {rows}) g"
            )
        conn.execute("VACUUM ANALYZE")
        size = int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])  # type: ignore[index]
    return name, size


def peak_staged(output: str) -> int:
    """The peak_staged_bytes cellar logged for each directory it dumped (the largest)."""
    peaks = [0]
    for line in output.splitlines():
        if "peak_staged_bytes" in line:
            try:
                peaks.append(int(json.loads(line)["peak_staged_bytes"]))
            except (ValueError, KeyError):
                continue
    return max(peaks)


def run_parallel(stack: LocalStack, kubeconfig: Path, gigabytes: float) -> list[ParallelRun]:
    """The wide database: the single-stream and parallel floors, and cellar at parallelism 1, 2 and 4."""
    database, size = generate_wide_database(stack, gigabytes)
    print(f"\n## database {database}: {size / 1024**3:.2f} GiB, {WIDE_TABLES} tables", flush=True)
    s3 = s3_client(stack.s3_endpoint)
    bucket = f"bench-{database.replace('_', '-')}"
    s3.create_bucket(Bucket=bucket)
    pg_env = {
        **os.environ,
        "PGHOST": "127.0.0.1",
        "PGPORT": str(stack.pg_port),
        "PGUSER": "postgres",
        "PGPASSWORD": stack.pg_dsn().split("password=")[1],
    }
    pg_dump = str(stack.pg_bin / "pg_dump")
    work = Path(tempfile.mkdtemp(prefix="wide-bench-"))
    results = [
        with_server_cpu(
            stack,
            lambda: (
                measure(
                    "(p1) pg_dump -Fc -Z0 > /dev/null",
                    [pg_dump, "-Fc", "-Z0", "--no-sync", "-f", "/dev/null", database],
                    pg_env,
                    lambda: 0,
                ),
                0,
            ),
        )
    ]
    for jobs in (2, 4):
        label = f"(p{jobs // 2 + 1}) pg_dump -Fd -j {jobs} -Z0 to local disk"
        out = work / f"floor-{jobs}"
        argv = [pg_dump, "-Fd", f"-j{jobs}", "-Z0", "--no-sync", "-f", str(out), database]
        results.append(with_server_cpu(stack, partial(floor_dump, label, argv, pg_env, out)))
    secret = f"cellar-database-{database.replace('_', '-')}"
    create_database_secret(admin_client(stack.kubeconfig), stack, secret, database)
    target = BackupTarget(secret, bucket, work / "staging", kubeconfig)
    target.staging.mkdir()
    for label, parallelism in (
        ("(p4) cellar, one stream", 1),
        ("(p5) cellar, parallelism 2", 2),
        ("(p6) cellar, parallelism 4", 4),
    ):
        results.append(with_server_cpu(stack, partial(cellar_backup, stack, target, label, parallelism)))
    shutil.rmtree(work, ignore_errors=True)
    return results


def floor_dump(label: str, argv: list[str], env: dict[str, str], out: Path) -> tuple[Measurement, int]:
    """pg_dump (`argv`) into the directory `out`; its size, then removed."""
    measured = measure(label, argv, env, lambda: 0)
    size = sum(p.stat().st_size for p in out.iterdir())
    shutil.rmtree(out)
    return measured, size


@dataclass(frozen=True)
class BackupTarget:
    """What the parallel section's cellar runs share: the database Secret, the bucket, staging, the kubeconfig."""

    secret: str
    bucket: str
    staging: Path
    kubeconfig: Path


def cellar_backup(stack: LocalStack, target: BackupTarget, label: str, parallelism: int) -> tuple[Measurement, int]:
    """One cellar backup of the wide database at `parallelism` (1: one stream); its measurement and peak staging."""
    api = admin_client(stack.kubeconfig)
    name = f"{target.secret.removeprefix('cellar-database-')}-j{parallelism}"
    extra = {} if parallelism == 1 else {"parallelism": parallelism, "staging": {"path": str(target.staging)}}
    create_backup_resource(api, name, target.secret, target.bucket, stack.s3_endpoint, extra, {})
    run = run_measured(
        label,
        [
            *[sys.executable, "-m", "jobs.backup", "--kubeconfig", str(target.kubeconfig)],
            *["--namespace", NAMESPACE, "--name", name, "--log-level", "info"],
        ],
        {**os.environ, "CELLAR_TERMINATION_LOG": "/nonexistent/x"},
    )
    listed = s3_client(stack.s3_endpoint).list_objects_v2(Bucket=target.bucket, Prefix=f"{name}/data/")
    stored = sum(o["Size"] for o in listed.get("Contents", []))
    return Measurement(label, run.wall, run.cpu, run.peak_rss_mb, stored / 1024**2), peak_staged(run.output)


def with_server_cpu(stack: LocalStack, variant: Callable[[], tuple[Measurement, int]]) -> ParallelRun:
    """Run `variant`, and the CPU seconds PostgreSQL and MinIO spent meanwhile."""
    before = server_cpu(stack)
    measured, staged = variant()
    after = server_cpu(stack)
    return ParallelRun(measured, staged, after["postgres"] - before["postgres"], after["minio"] - before["minio"])


def report_parallel(results: list[ParallelRun]) -> None:
    cores = os.cpu_count() or 1
    print(
        f"\n{'variant':42} {'wall s':>7} {'cpu s':>6} {'postgres':>9} {'MinIO':>6} {'CPU bound s':>12} "
        f"{'peak RSS MB':>12} {'stored MB':>10} {'staging MB':>11}"
    )
    for run in results:
        m = run.measured
        print(
            f"{m.name:42} {m.wall:7.1f} {m.cpu:6.1f} {run.postgres_cpu:9.1f} {run.minio_cpu:6.1f} "
            f"{run.cpu_bound(cores):12.1f} {m.peak_rss_mb:12.0f} {m.stored_mb:10.1f} {run.staged / 1024**2:11.1f}"
        )
    single, floor2, floor4, one, cellar2, cellar4 = results
    print(f"\ncpu s: the client's; postgres, MinIO: the servers'; CPU bound: the three summed / {cores} cores")
    print("ratios (issue #39 targets):")
    for label, cellar, floor in (("2", cellar2, floor2), ("4", cellar4, floor4)):
        ratio = cellar.measured.wall / floor.measured.wall
        verdict = "PASS" if ratio <= 1.15 else "MISS"
        print(f"  cellar N={label} wall / parallel floor N={label} = {ratio:.2f}  target <= 1.15  {verdict}")
        reach = cellar.cpu_bound(cores) / floor.measured.wall
        print(f"    the least this machine allows: cellar N={label}'s CPU bound / that floor's wall = {reach:.2f}")
    for label, cellar in (("2", cellar2), ("4", cellar4)):
        ratio = cellar.measured.wall / single.measured.wall
        print(f"  cellar N={label} wall / single-stream floor = {ratio:.2f}  (below 1: faster than one stream)")
    rss = cellar4.measured.peak_rss_mb / one.measured.peak_rss_mb
    print(f"  cellar N=4 peak RSS / one stream's = {rss:.2f}  target <= 1.5  {'PASS' if rss <= 1.5 else 'MISS'}")
