"""`kubectl cellar backup NAME --wait`, `list`, `restore --wait` and `logs` on the real node: the Jobs run
cellar's image on the kubelet, the plugin follows their logs through the API server and exits with the
container's exit code, a success's and a permanent failure's (the termination message, `<Reason>: ...`, is its
last line); `logs` shows either run. The node and the release are test_e2e.py's fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kubernetes import client

from tests.integration.archive_helpers import dsn
from tests.integration.cli_helpers import cellar
from tests.integration.environments import JobEnvironment
from tests.integration.test_e2e import _fleet, _recipient, _values, cluster, helm_install, images, node

__all__ = ["cluster", "images", "node"]  # pytest finds the fixtures by these names


def test_backup_wait_follows_the_run_and_exits_with_its_code(
    cluster: JobEnvironment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = cluster
    kubeconfig = env.stack.kubeconfig
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts AS SELECT g AS id FROM generate_series(1, 100) g")
    ran = cellar(capsys, kubeconfig, "backup", "nightly", "--wait", "-n", env.namespace)
    assert ran.code == 0, ran.err
    assert '"run started"' in ran.out, ran.out[-2000:]  # the container's log, followed
    batch = client.BatchV1Api(env.admin_api)
    (job,) = batch.list_namespaced_job(env.namespace).items
    assert job.status.succeeded == 1
    stored: dict[str, Any] = client.CustomObjectsApi(env.admin_api).get_namespaced_custom_object(
        "cellar.dev", "v1alpha1", env.namespace, "databasebackups", "nightly"
    )
    assert stored["status"]["lastSuccessfulBackup"]["key"].startswith(f"{env.namespace}/nightly/")

    # `list`: a short Job under cellar-backup lists the backups in storage; its log is the listing alone.
    ran = cellar(capsys, kubeconfig, "list", "nightly", "-o", "json", "-n", env.namespace)
    assert ran.code == 0, ran.err
    (listed,) = json.loads(ran.out)["backups"]
    assert listed["key"] == stored["status"]["lastSuccessfulBackup"]["key"]
    assert listed["encrypted_to"], "nightly is sealed with age"
    assert [j.metadata.name for j in batch.list_namespaced_job(env.namespace).items] == [job.metadata.name], (
        "the listing Job is deleted once read"
    )

    # `restore --wait`: a DatabaseRestore run now as cellar-restore, once the release lets it read the target, the
    # age identity and the storage keys (extraSecrets.restore), into a new database of the same server.
    values = _values(env, **_fleet(env, _recipient(tmp_path)))
    values["extraSecrets"] = {"restore": ["cellar-restore-target", "cellar-backup-identity", "cellar-object-storage"]}
    helm_install(env, tmp_path, "upgrade", values)
    copy = f"{env.database['dbname']}_copy"
    restore = ["restore", "nightly", "--to", "cellar-restore-target", "--dbname", copy, "--create-database"]
    ran = cellar(capsys, kubeconfig, *restore, "--identity", "cellar-backup-identity:identity.txt", "--wait",
                 "-n", env.namespace)  # fmt: skip
    assert ran.code == 0, f"{ran.err}\n{ran.out[-6000:]}\n{_pods_and_logs(env)}"
    with psycopg.connect(dsn({**env.database, "dbname": copy})) as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone() == (100,)
    # A backup id that does not exist: the restore's own reason, one line, exit 3.
    missing = ["restore", "nightly", "--to", "cellar-restore-target", "--backup", "20000101T000000Z-none"]
    ran = cellar(capsys, kubeconfig, *missing, "--identity", "cellar-backup-identity:identity.txt", "--wait",
                 "-n", env.namespace)  # fmt: skip
    assert ran.code == 3, ran.err
    assert ran.err.splitlines()[-1].startswith("BackupNotFound: "), ran.err

    # A permanent failure: the spec names a key its Secret lacks. Exit 3, as the container's, at once (the
    # chart's podFailurePolicy fails the Job without a retry), and the run's reason on the last line.
    storage = {**stored["spec"]["storage"]}
    storage["credentials"] = {
        **storage["credentials"],
        "secretAccessKey": {"name": "cellar-object-storage", "key": "x"},
    }
    client.CustomObjectsApi(env.admin_api).patch_namespaced_custom_object(
        "cellar.dev", "v1alpha1", env.namespace, "databasebackups", "nightly", {"spec": {"storage": storage}}
    )
    ran = cellar(capsys, kubeconfig, "backup", "nightly", "--wait", "-n", env.namespace)
    assert ran.code == 3, ran.err
    assert ran.err.splitlines()[-1].startswith("InvalidSpec: "), ran.err

    # `logs`: the newest run's log (the failure), and with --previous the run before it (the success).
    ran = cellar(capsys, kubeconfig, "logs", "nightly", "-n", env.namespace)
    assert ran.code == 0, ran.err
    assert '"run failed"' in ran.out, ran.out[-2000:]
    ran = cellar(capsys, kubeconfig, "logs", "backup/nightly", "--previous", "-n", env.namespace)
    assert ran.code == 0, ran.err
    assert '"run finished"' in ran.out, _pods_and_logs(env)


def _pods_and_logs(env: JobEnvironment) -> str:
    """What a failed assertion on `logs` shows: each Pod of the namespace, its phase and its log's length."""
    core = client.CoreV1Api(env.admin_api)
    lines = []
    for pod in core.list_namespaced_pod(env.namespace).items:
        text = core.read_namespaced_pod_log(pod.metadata.name, env.namespace)
        why = f"{pod.status.reason}: {pod.status.message}" if pod.status.reason else ""
        lines.append(f"{pod.metadata.name} {pod.metadata.creation_timestamp} {pod.status.phase} {why} {len(text)} B")
    return "\n".join(lines)


def test_archive_and_unarchive_wait_on_the_real_node(
    cluster: JobEnvironment, capsys: pytest.CaptureFixture[str]
) -> None:
    env = cluster
    kubeconfig = env.stack.kubeconfig
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, payload text)")
        conn.execute(
            "INSERT INTO events SELECT g, now() - interval '90 days' + g * interval '1 second', md5(g::text)"
            " FROM generate_series(1, 300) g"
        )
        conn.execute("INSERT INTO events SELECT g, now(), md5(g::text) FROM generate_series(301, 350) g")
    ran = cellar(capsys, kubeconfig, "archive", "events", "--wait", "-n", env.namespace)
    assert ran.code == 0, ran.err
    with psycopg.connect(dsn(env.database)) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (50,)

    args = ["unarchive", "events", "--from", "2000-01-01", "--to", "2100-01-01", "--wait", "-n", env.namespace]
    ran = cellar(capsys, kubeconfig, *args)
    assert ran.code == 0, ran.err
    with psycopg.connect(dsn(env.database)) as conn:
        assert conn.execute("SELECT count(*) FROM events_unarchived").fetchone() == (300,)
