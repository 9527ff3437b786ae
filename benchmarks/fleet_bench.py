"""Fleet benchmark: many runs started together on one PostgreSQL server, one object store, one API server.

One database holds pgbench's tables (what the backups dump) and ten tables of old rows (what the archives
move). Measured in the same run:

  (a) one backup alone, and one archive alone (the baseline)
  (b) the fleet: --backups backups (every third restore-tested) and --archives archives, all started at once

For (b): wall time, how many runs failed (the target is none), the retries they made (lock timeouts of
batches, waits for a connection slot, waits for another run's schema migration), the scratch databases
left, and the fleet's wall time against the same runs one after another (estimated from (a)). Run:

    .venv/bin/python -m benchmarks.fleet_bench              (30 backups and 10 archives by default)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from kubernetes import client

from benchmarks.backup_bench import create_backup_resource, pgbench_init
from benchmarks.measure import BENCH_NAMESPACE as NAMESPACE
from benchmarks.measure import create_database_secret, install_cellar
from tests.harness.cluster import service_account_kubeconfig
from tests.harness.stack import LocalStack, s3_client

OLD_ROWS = 20_000
# Each count is what one log line says happened once (the retries a fleet makes when it shares a server).
RETRY_LINES = {
    "batch lock timeouts": "a batch waited longer than lockTimeout",
    "waits for a connection slot": "refused a connection for lack of slots",
    "schema step lock waits": "a ledger schema step waited too long",
    "schema migrations": "migrating the ledger's schema",
    "scratch database drop waits": "waiting for the sessions connected to a database",
}


def prepare(stack: LocalStack, archives: int) -> str:
    name = "fleet"
    with psycopg.connect(stack.pg_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    pgbench_init(stack, name, scale=5)
    with psycopg.connect(stack.pg_dsn(name), autocommit=True) as conn:
        for index in range(archives + 1):  # one more for the lone archive of the baseline
            conn.execute(
                f"CREATE TABLE events_{index} (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, note text);"
                f"INSERT INTO events_{index} SELECT g, now() - interval '400 days' + g * interval '20 seconds', "
                f"'old event ' || g FROM generate_series(1, {OLD_ROWS}) g;"
                f"CREATE INDEX ON events_{index} (created_at)"
            )
    return name


def create_archive(api: Any, name: str, table: str, bucket: str, endpoint: str) -> None:
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
                "database": {"secretRef": {"name": "fleet-db"}, "sslMode": "disable"},
                "storage": {
                    "bucket": bucket,
                    "prefix": name,
                    "endpoint": endpoint,
                    "forcePathStyle": True,
                    "credentials": {
                        "accessKeyId": {"name": "cellar-object-storage", "key": "AWS_ACCESS_KEY_ID"},
                        "secretAccessKey": {"name": "cellar-object-storage", "key": "AWS_SECRET_ACCESS_KEY"},
                    },
                },
                "table": {"schema": "public", "name": table},
                "timestampColumn": "created_at",
                "olderThan": "30d",
            },
        },
    )


def start(module: str, kubeconfig: Path, name: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", module, "--kubeconfig", str(kubeconfig), "--namespace", NAMESPACE, "--name", name]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_together(runs: list[tuple[str, Path, str]]) -> tuple[float, dict[str, tuple[int, str]]]:
    """Start every (module, kubeconfig, name) at once; the wall time and each run's exit code and output."""
    began = time.perf_counter()
    started = {name: start(module, kubeconfig, name) for module, kubeconfig, name in runs}
    outcomes = {}
    for name, process in started.items():
        output, _ = process.communicate()
        outcomes[name] = (process.returncode, output)
    return time.perf_counter() - began, outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backups", type=int, default=30)
    parser.add_argument("--archives", type=int, default=10)
    args = parser.parse_args(argv)
    stack = LocalStack().start()
    try:
        database = prepare(stack, args.archives)
        bucket = "fleet"
        s3_client(stack.s3_endpoint).create_bucket(Bucket=bucket)
        backup_kubeconfig, api = install_cellar(stack, "backup")
        archive_kubeconfig = service_account_kubeconfig(
            api, stack, NAMESPACE, "archive", Path(tempfile.mkdtemp()) / "kc"
        )
        client.RbacAuthorizationV1Api(api).patch_namespaced_role(
            "cellar-archive",
            NAMESPACE,
            [
                {
                    "op": "add",
                    "path": "/rules/-",
                    "value": {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
                }
            ],
        )
        create_database_secret(api, stack, "fleet-db", database)
        names = [f"backup-{i}" for i in range(args.backups + 1)]
        for index, name in enumerate(names):
            verify = {"verify": {"enabled": True}} if index % 3 == 1 else {}
            create_backup_resource(api, name, "fleet-db", bucket, stack.s3_endpoint, verify, {})
        for index in range(args.archives + 1):
            create_archive(api, f"archive-{index}", f"events_{index}", bucket, stack.s3_endpoint)

        lone_backup, lone = run_together([("jobs.backup", backup_kubeconfig, names[0])])
        lone_archive, lone_archived = run_together([("jobs.archive", archive_kubeconfig, f"archive-{args.archives}")])
        for name, (code, output) in {**lone, **lone_archived}.items():
            if code != 0:
                raise SystemExit(f"baseline run {name} failed ({code}):\n{output[-3000:]}")
        fleet = [("jobs.backup", backup_kubeconfig, name) for name in names[1:]]
        fleet += [("jobs.archive", archive_kubeconfig, f"archive-{i}") for i in range(args.archives)]
        wall, outcomes = run_together(fleet)

        failed = {name: output[-1500:] for name, (code, output) in outcomes.items() if code != 0}
        everything = "\n".join(output for _, output in outcomes.values())
        with psycopg.connect(stack.pg_dsn()) as conn:
            left = conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'cellar_verify_%'").fetchone()
        restore_tested = sum(1 for index in range(1, args.backups + 1) if index % 3 == 1)
        one_after_another = args.backups * lone_backup + args.archives * lone_archive
        print(f"fleet of {args.backups} backups ({restore_tested} restore-tested) and {args.archives} archives")
        print(f"(a) one backup alone: {lone_backup:.1f} s; one archive alone ({OLD_ROWS} rows): {lone_archive:.1f} s")
        print(f"(b) all started together: {wall:.1f} s wall; runs failed: {len(failed)} of {len(fleet)}")
        for what, line in RETRY_LINES.items():
            print(f"    {what}: {everything.count(line)}")
        print(f"    scratch databases left: {left[0] if left else 0}")
        print(
            f"    the same runs one after another (from (a)): {one_after_another:.1f} s; "
            f"together/after another: {wall / one_after_another:.2f}"
        )
        for name, tail in failed.items():
            print(f"FAILED {name}:\n{tail}", file=sys.stderr)
        return 1 if failed else 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
