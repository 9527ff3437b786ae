"""Restore benchmark: how long a restore of a cellar backup takes, against the floor and a hand pipeline.

One generated database (the backup benchmark's: pgbench tables with their indexes plus a table of text,
jsonb and bytea), backed up once by cellar (zstd). Then, each into a new database dropped afterwards:

  (a) the floor: `pg_restore -j N` from a local, uncompressed dump file (N = the cores)
  (b) what a team writes: `aws s3 cp s3://... - | zstd -d | pg_restore`, from cellar's object
  (c) cellar, streaming (a DatabaseRestore with createDatabase; one transaction)
  (d) cellar, staged: parallelism N with a staging directory (download, check, pg_restore -j N)
  (e) for reference: the object downloaded once (`aws s3 cp` to a file)
  (f) cellar, a directory backup (the DatabaseBackup's parallelism: 2) restored with parallelism 2: every
      file staged and checked, then pg_restore -j 2 of the directory

For each: wall time, CPU seconds of the variant's processes, peak RSS; then the targets: (d) within 1.3x of
(a) + (e), and (c) no slower than (b). Run:

    .venv/bin/python -m benchmarks.restore_bench            (--gb 2 by default; --gb 0.5 for a quick look)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
from kubernetes import client

from benchmarks.backup_bench import create_backup_resource, ensure_awscli, generate_database
from benchmarks.measure import BENCH_NAMESPACE as NAMESPACE
from benchmarks.measure import create_database_secret, install_cellar, job_account, run_measured
from tests.harness.cluster import admin_client
from tests.harness.stack import S3_ACCESS_KEY, S3_SECRET_KEY, LocalStack, s3_client

CORES = os.cpu_count() or 1


def cellar_job(kubeconfig: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "jobs.backup", *args, "--kubeconfig", str(kubeconfig), "--namespace", NAMESPACE]


def drop(stack: LocalStack, name: str) -> None:
    with psycopg.connect(stack.pg_dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def create(stack: LocalStack, name: str) -> None:
    with psycopg.connect(stack.pg_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")


def row_count(stack: LocalStack, name: str) -> int:
    """The rows of the largest table, compared after each restore with the source's."""
    with psycopg.connect(stack.pg_dsn(name)) as conn:
        found = conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone()
    return int(str(found[0])) if found else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=2.0)
    args = parser.parse_args()
    stack = LocalStack().start()
    try:
        print(f"servers: {stack.pg_version}, MinIO, kube-apiserver {stack.kube_version}; cores: {CORES}")
        started = time.monotonic()
        database, size = generate_database(stack, args.gb)
        print(f"database {database}: {size / 1024**3:.2f} GiB, generated in {time.monotonic() - started:.0f}s")
        kubeconfig, _ = install_cellar(stack, "backup")
        api = admin_client(stack.kubeconfig)
        key = back_up(stack, api, kubeconfig, database)
        expected = row_count(stack, database)
        work = Path(tempfile.mkdtemp(prefix="restore-bench-"))
        results = by_hand(stack, database, key, work, expected)
        # Restores run as the restore job's own ServiceAccount, as the chart runs them: the backup job's may not
        # read DatabaseRestores.
        restorer = job_account(stack, api, "restore")
        results.update(cellar_restores(stack, api, restorer, work, expected))
        aws, aws_env = aws_cli(stack)
        download = ["s3", "cp", f"s3://{BUCKET}/{key}", str(work / "object")]
        results["(e) the object downloaded once"] = run_measured(
            "(e)", [str(aws), "--endpoint-url", stack.s3_endpoint, *download], aws_env
        )
        back_up(stack, api, kubeconfig, database, name="source-dir", parallel_staging=work / "backup-staging")
        results["(f) cellar, directory backup, parallelism 2"] = restore_measured(
            stack,
            api,
            restorer,
            RestoreVariant(
                "(f)", "r_dir", "source-dir", {"parallelism": 2, "staging": {"path": str(work / "staging")}}
            ),
            expected,
        )
        report(results)
    finally:
        stack.stop()
    return 0


BUCKET = "restore-bench"


def back_up(
    stack: LocalStack,
    api: Any,
    kubeconfig: Path,
    database: str,
    *,
    name: str = "source",
    parallel_staging: Path | None = None,
) -> str:
    """cellar's backup of `database`, with its defaults (or parallelism 2 through `parallel_staging`); returns its
    object's key (a directory backup's: its folder)."""
    extra: dict[str, Any] = {}
    if parallel_staging is None:
        s3_client(stack.s3_endpoint).create_bucket(Bucket=BUCKET)
        create_database_secret(api, stack, "cellar-database-bench", database)
    else:
        parallel_staging.mkdir(exist_ok=True)
        extra = {"parallelism": 2, "staging": {"path": str(parallel_staging)}}
    create_backup_resource(api, name, "cellar-database-bench", BUCKET, stack.s3_endpoint, extra, {})
    backup = run_measured("backup", cellar_job(kubeconfig, "--name", name), dict(os.environ))
    status = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "cellar.dev", "v1alpha1", NAMESPACE, "databasebackups", name
    )["status"]["lastSuccessfulBackup"]
    print(f"backup {name}: {backup.wall:.1f}s, {status['size']} stored")
    return str(status["key"])


def aws_cli(stack: LocalStack) -> tuple[Path, dict[str, str]]:
    env = {**postgres_env(stack), "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}
    env["AWS_DEFAULT_REGION"] = "us-east-1"
    return ensure_awscli(), env


def postgres_env(stack: LocalStack) -> dict[str, str]:
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(stack.pg_port), "PGUSER": "postgres"}
    env["PGPASSWORD"] = stack.pg_dsn().split("password=")[1]
    return env


def by_hand(stack: LocalStack, database: str, key: str, work: Path, expected: int) -> dict[str, Any]:
    """(a) and (b): the floor from a local file, and the pipeline a team writes."""
    pg_bin, env = stack.pg_bin, postgres_env(stack)
    dump = work / "local.dump"
    run_measured("local dump", [str(pg_bin / "pg_dump"), "-Fc", "-Z0", "-f", str(dump), database], env)
    results = {}
    create(stack, "r_floor")
    results["(a) pg_restore -j N from a local file (the floor)"] = run_measured(
        "(a)", [str(pg_bin / "pg_restore"), f"-j{CORES}", "-d", "r_floor", str(dump)], env
    )
    assert row_count(stack, "r_floor") == expected
    drop(stack, "r_floor")
    aws, aws_env = aws_cli(stack)
    create(stack, "r_hand")
    pipeline = (
        f"{aws} --endpoint-url {stack.s3_endpoint} s3 cp s3://{BUCKET}/{key} - | zstd -d | "
        f"{pg_bin / 'pg_restore'} --single-transaction -d r_hand"
    )
    results["(b) aws s3 cp - | zstd -d | pg_restore"] = run_measured(
        "(b)", ["bash", "-o", "pipefail", "-c", pipeline], aws_env
    )
    assert row_count(stack, "r_hand") == expected
    drop(stack, "r_hand")
    return results


class RestoreVariant(NamedTuple):
    label: str
    database: str  # the new database it restores into
    backup: str  # the DatabaseBackup whose newest backup it restores
    extra: dict[str, Any]


def restore_measured(stack: LocalStack, api: Any, kubeconfig: Path, variant: RestoreVariant, expected: int) -> Any:
    """One DatabaseRestore into a new database, run as the restore job's account; checked, then dropped."""
    restore = variant.database.replace("_", "-")
    target = {"secretRef": {"name": "cellar-restore-target"}, "dbname": variant.database, "sslMode": "disable"}
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "cellar.dev",
        "v1alpha1",
        NAMESPACE,
        "databaserestores",
        {
            "apiVersion": "cellar.dev/v1alpha1",
            "kind": "DatabaseRestore",
            "metadata": {"name": restore},
            "spec": {"backup": {"name": variant.backup}, "target": target, "createDatabase": True, **variant.extra},
        },
    )
    run = run_measured(
        variant.label, cellar_job(kubeconfig, "restore", "--name", restore, "--log-level", "warning"), dict(os.environ)
    )
    assert row_count(stack, variant.database) == expected
    drop(stack, variant.database)
    return run


def cellar_restores(stack: LocalStack, api: Any, kubeconfig: Path, work: Path, expected: int) -> dict[str, Any]:
    """(c) and (d): DatabaseRestores of the backup into new databases, run as the restore job's account."""
    create_database_secret(api, stack, "cellar-restore-target", "postgres")
    staging = work / "staging"
    staging.mkdir()
    variants = [
        RestoreVariant("(c) cellar, streaming", "r_stream", "source", {}),
        RestoreVariant(
            f"(d) cellar, staged, parallelism {CORES}",
            "r_staged",
            "source",
            {"parallelism": CORES, "staging": {"path": str(staging)}},
        ),
    ]
    return {v.label: restore_measured(stack, api, kubeconfig, v, expected) for v in variants}


def report(results: dict[str, Any]) -> None:
    print(f"\n{'variant':48} {'wall s':>8} {'CPU s':>8} {'peak RSS MB':>12}")
    for label, run in results.items():
        print(f"{label:48} {run.wall:8.1f} {run.cpu:8.1f} {run.peak_rss_mb:12.0f}")
    floor, hand, streamed, staged, download, directory = [run.wall for run in results.values()]
    print(
        f"\n(d) / ((a) + (e)) = {staged / (floor + download):.2f}   target <= 1.3   "
        f"{'PASS' if staged <= 1.3 * (floor + download) else 'MISS'}"
    )
    print(f"(c) / (b)         = {streamed / hand:.2f}   target <= 1.0   {'PASS' if streamed <= hand else 'MISS'}")
    print(f"(f) / (d)         = {directory / staged:.2f}   (a directory backup at N=2 against one file at N={CORES})")


if __name__ == "__main__":
    sys.exit(main())
