"""The demo: cellar's backup and restore against a local stack it brings up and tears down itself.

1. starts kube-apiserver + etcd, PostgreSQL and MinIO on loopback (built on first use);
2. installs cellar from its Helm chart: the CRDs, and what `helm template` renders from a values file of one
   backup, one archive and one restore (the ServiceAccounts, their Roles, the three resources);
3. creates a database with data (pgbench tables plus text, jsonb and bytea), a bucket and the Secrets;
4. runs the backup job as ServiceAccount cellar-backup, then the restore as cellar-restore into a new database;
5. compares the two databases and shows the backup's status the way `kubectl describe` does;
6. archives the documents older than 30 days with a TableArchive (the archive job, as its own
   ServiceAccount), reads the Parquet files back, and brings one month back into a side table;
7. sums up what it did, how long each job took, and the resources as `kubectl get` shows them.
   The jobs log short text lines here (`--log-format text`); in a Pod they log JSON lines.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg
import yaml
from kubernetes import client

from tests.harness.chart import rbac_of, render, rendered
from tests.harness.cluster import REPO, admin_client, apply_manifests, install_crds, service_account_kubeconfig
from tests.harness.stack import S3_ACCESS_KEY, S3_SECRET_KEY, LocalStack, s3_client

NAMESPACE = "demo"
BUCKET = "cellar-demo"


def step(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


# What the demo did, for the summary at its end: (step, what happened, seconds).
SUMMARY: list[tuple[str, str, float]] = []


def run_job(kubeconfig: Path, *args: str, module: str = "jobs.backup") -> float:
    """Run a job as a person would at a terminal (short text log lines); returns its wall time."""
    shown = [f"python -m {module}", *args, "--kubeconfig", "<job token>", "--namespace", NAMESPACE]
    print("$ " + " ".join(shown))
    command = [sys.executable, "-m", module, *args, "--kubeconfig", str(kubeconfig), "--namespace", NAMESPACE]
    started = time.monotonic()
    result = subprocess.run(
        [*command, "--log-format", "text"],
        cwd=REPO,
        env={**os.environ, "CELLAR_TERMINATION_LOG": "/nonexistent/x"},
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"the job exited with {result.returncode}")
    return time.monotonic() - started


def print_summary(kubectl: list[str]) -> None:
    step("what the demo did")
    for what, outcome, seconds in SUMMARY:
        print(f"  {what:10} {outcome}  ({seconds:.1f} s)")
    for kinds in ("databasebackups,databaserestores", "tablearchives"):
        print(f"\n$ kubectl get {kinds} -n {NAMESPACE}")
        subprocess.run([*kubectl, "get", kinds], check=True)


def make_database(stack: LocalStack) -> dict[str, str]:
    credentials = {
        "host": "127.0.0.1",
        "port": str(stack.pg_port),
        "dbname": "shop",
        "username": "shop",
        "password": "shop-demo-password",
    }
    with psycopg.connect(stack.pg_dsn(), autocommit=True) as conn:
        conn.execute("CREATE ROLE shop LOGIN CREATEDB PASSWORD 'shop-demo-password'")
        conn.execute("CREATE DATABASE shop OWNER shop")
    env = {**os.environ, "PGPASSWORD": credentials["password"]}
    subprocess.run(
        [
            str(stack.pg_bin / "pgbench"),
            "-i",
            "-s",
            "5",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            str(stack.pg_port),
            "-U",
            "shop",
            "shop",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    dsn = stack.pg_dsn("shop", "shop", credentials["password"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE documents (id bigserial PRIMARY KEY, title text, body jsonb, thumbnail bytea, "
            "created timestamptz DEFAULT now())"
        )
        conn.execute(
            "INSERT INTO documents (title, body, thumbnail, created) SELECT 'doc ' || g, "
            "jsonb_build_object('n', g, 'tags', jsonb_build_array('a', 'b')), decode(md5(g::text), 'hex'), "
            "now() - (20000 - g) * interval '15 minutes' FROM generate_series(1, 20000) g"  # about 208 days
        )
    return credentials


def row_counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
        return {t: int(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in tables}  # type: ignore[index]


def values(stack: LocalStack) -> dict[str, Any]:
    """The demo's values file: what a user writes for one database, one table and one restore."""
    return {
        "defaults": {
            "storage": {
                "bucket": BUCKET,
                "endpoint": stack.s3_endpoint,
                "forcePathStyle": True,
                "credentials": {
                    "accessKeyId": {"name": "cellar-object-storage", "key": "AWS_ACCESS_KEY_ID"},
                    "secretAccessKey": {"name": "cellar-object-storage", "key": "AWS_SECRET_ACCESS_KEY"},
                },
            },
            "database": {"secretRef": {"name": "cellar-database"}, "sslMode": "disable"},
        },
        "backups": {
            "orders": {
                "spec": {
                    "storage": {"prefix": "demo/shop"},
                    "verify": {"enabled": True},
                    "retention": {"keepLast": 7, "keepDaily": 14},
                }
            }
        },
        "archives": {
            "documents": {
                "spec": {
                    "storage": {"prefix": "demo/archive"},
                    "table": {"schema": "public", "name": "documents"},
                    "timestampColumn": "created",
                    "olderThan": "30d",
                    "batch": {"rows": 2000},
                    "dryRun": True,
                }
            }
        },
        "restores": {
            "orders-restore-test": {
                "spec": {
                    "backup": {"name": "orders"},
                    "target": {"secretRef": {"name": "cellar-restore-target"}, "dbname": "shop_restored"},
                    "createDatabase": True,
                }
            }
        },
    }


def install(api: Any, stack: LocalStack) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Render the chart with the demo's values; create its ServiceAccounts and Roles and return its documents
    and a kubeconfig per job. The demo runs the jobs itself, so the CronJobs and the restore Job are not made."""
    workdir = Path(tempfile.mkdtemp())
    values_file = workdir / "values.yaml"
    values_file.write_text(yaml.safe_dump(values(stack)))
    documents = render(values_file, namespace=NAMESPACE)
    print("$ helm template cellar ./cronjobs -f values.yaml   # one backup, one archive, one restore")
    kubeconfigs = {}
    for job in ("backup", "archive", "restore"):
        kubeconfigs[job] = service_account_kubeconfig(
            api, stack, NAMESPACE, job, workdir / f"{job}.kubeconfig", rbac_of(documents, job)
        )
    return documents, kubeconfigs


def create_secret(api: Any, name: str, data: dict[str, str]) -> None:
    client.CoreV1Api(api).create_namespaced_secret(NAMESPACE, {"metadata": {"name": name}, "stringData": data})


def main() -> int:
    step("starting kube-apiserver + etcd, PostgreSQL and MinIO on loopback")
    stack = LocalStack().start()
    try:
        api = admin_client(stack.kubeconfig)
        step(f"installing cellar into kube-apiserver {stack.kube_version} from its Helm chart")
        install_crds(api)
        client.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})
        documents, kubeconfigs = install(api, stack)
        kubeconfig = kubeconfigs["backup"]

        step("creating database 'shop' (pgbench scale 5 + documents with jsonb and bytea), a bucket and Secrets")
        database = make_database(stack)
        s3 = s3_client(stack.s3_endpoint)
        s3.create_bucket(Bucket=BUCKET)
        create_secret(api, "cellar-database", database)
        create_secret(api, "cellar-restore-target", database)
        create_secret(
            api, "cellar-object-storage", {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}
        )

        step("creating DatabaseBackup 'orders' as the chart renders it")
        apply_manifests(api, [rendered(documents, "DatabaseBackup", "orders")], NAMESPACE)
        step("running the backup job as ServiceAccount cellar-backup")
        seconds = run_job(kubeconfig, "backup", "--name", "orders")
        stored = client.CustomObjectsApi(api).get_namespaced_custom_object(
            "cellar.dev", "v1alpha1", NAMESPACE, "databasebackups", "orders"
        )["status"]["lastSuccessfulBackup"]
        verified = ", restore-tested" if stored.get("verified") else ""
        SUMMARY.append(
            (
                "backup",
                f"database shop (PostgreSQL {stored.get('serverVersion')}): {stored['size']} stored{verified}",
                seconds,
            )
        )

        step("restoring the newest backup into a new database 'shop_restored'")
        apply_manifests(api, [rendered(documents, "DatabaseRestore", "orders-restore-test")], NAMESPACE)
        step("running the restore as ServiceAccount cellar-restore (the one that may read the restore target)")
        seconds = run_job(kubeconfigs["restore"], "restore", "--name", "orders-restore-test")

        step("comparing row counts: shop vs shop_restored")
        original = row_counts(stack.pg_dsn("shop", "shop", database["password"]))
        restored = row_counts(stack.pg_dsn("shop_restored", "shop", database["password"]))
        for table, rows in original.items():
            verdict = "ok" if restored.get(table) == rows else "DIFFERENT"
            print(f"  {table:20} {rows:>10} {restored.get(table, 0):>10}  {verdict}")
        if original != restored:
            raise SystemExit("the restored database differs")
        SUMMARY.append(
            (
                "restore",
                f"into shop_restored: {len(original)} tables, {sum(original.values())} rows, identical",
                seconds,
            )
        )

        kubectl = [str(stack.binaries["kubectl"]), "--kubeconfig", str(stack.kubeconfig), "-n", NAMESPACE]
        step("kubectl describe databasebackup orders (status and events)")
        described = subprocess.run(
            [*kubectl, "describe", "databasebackup", "orders"], check=True, capture_output=True, text=True
        ).stdout
        print(described[described.index("Status:") :] if "Status:" in described else described)
        archive_demo(api, s3, database, rendered(documents, "TableArchive", "documents"), kubeconfigs["archive"], stack)
        print_summary(kubectl)
        print(
            "\nThe demo worked: backup written, verified by a restore test, restored, and identical; old rows "
            "archived to Parquet, read back, and a month brought back."
        )
        return 0
    finally:
        step("stopping the local stack")
        stack.stop()


def archive_demo(
    api: Any, s3: Any, database: dict[str, str], archive: dict[str, Any], kubeconfig: Path, stack: LocalStack
) -> None:
    import io

    import pyarrow.parquet as pq

    dsn = stack.pg_dsn("shop", "shop", database["password"])
    before = row_counts(dsn)["documents"]
    step("creating TableArchive 'documents' as the chart renders it: rows older than 30 days")
    apply_manifests(api, [archive], NAMESPACE)
    objects = client.CustomObjectsApi(api)
    step("the values say dryRun: true, as the example does; the first run only reports what it would move")
    run_job(kubeconfig, "archive", "--name", "documents", module="jobs.archive")
    stored = objects.get_namespaced_custom_object("cellar.dev", "v1alpha1", NAMESPACE, "tablearchives", "documents")
    report = next(c for c in stored["status"]["conditions"] if c["type"] == "ArchiveSucceeded")["message"]
    print(f"  {report.split(' Plan of one batch')[0]}")
    step("read it; now dryRun: false, and the archive job moves the rows")
    objects.patch_namespaced_custom_object(
        "cellar.dev", "v1alpha1", NAMESPACE, "tablearchives", "documents", {"spec": {"dryRun": False}}
    )
    seconds = run_job(kubeconfig, "archive", "--name", "documents", module="jobs.archive")
    after = row_counts(dsn)["documents"]
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="demo/archive/public.documents/")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    archived = sum(
        pq.read_metadata(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read())).num_rows for k in keys
    )
    step("reading the Parquet files back with pyarrow")
    print(f"  documents in the table: {before} before, {after} after")
    print(f"  rows in {len(keys)} Parquet files: {archived}, for example s3://{BUCKET}/{keys[0]}")
    if before - after != archived or not archived:
        raise SystemExit("the archived rows do not add up")
    SUMMARY.append(
        ("archive", f"{archived} rows of documents older than 30 days into {len(keys)} Parquet files", seconds)
    )

    step("bringing the oldest month back into the side table documents_unarchived")
    # The oldest partition's first day, whichever granularity partitioning: Auto chose (dt=YYYY[-MM[-DD]]).
    first = (min(k.split("dt=")[1].split("/")[0] for k in keys) + "-01-01")[:10]
    month_later = (date.fromisoformat(first) + timedelta(days=30)).isoformat()
    seconds = run_job(
        kubeconfig, "unarchive", "--name", "documents", "--from", first, "--to", month_later, module="jobs.archive"
    )
    back = row_counts(dsn).get("documents_unarchived", 0)
    print(f"  rows back in documents_unarchived: {back}")
    SUMMARY.append(("unarchive", f"{back} rows of {first} to {month_later} into documents_unarchived", seconds))


if __name__ == "__main__":
    sys.exit(main())
