"""End to end: the shipped CronJob fires on a real kube-controller-manager, a Job and a Pod appear, our job
runs with the ServiceAccount's permissions (a stand-in kubelet runs the Pod), the resource becomes Ready;
a Pod that exits 3 fails its Job at once (podFailurePolicy); a Job made from the CronJob runs a manual backup."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import yaml
from kubernetes import client

from tests.harness.cluster import REPO, apply_manifests
from tests.harness.node import PodRunner
from tests.harness.stack import LocalStack
from tests.integration.archive_helpers import dsn
from tests.integration.backup_helpers import conditions, get_status
from tests.integration.environments import BackupEnv

CRONJOB = REPO / "cronjobs" / "base" / "jobs" / "backup-cronjob.yaml"


@pytest.fixture(scope="session")
def controller_manager(stack: LocalStack) -> LocalStack:
    stack.start_controller_manager()
    return stack


@pytest.fixture
def node(controller_manager: LocalStack, admin_api: Any, namespace: str) -> Iterator[PodRunner]:
    runner = PodRunner(admin_api, controller_manager, namespace)
    runner.start()
    yield runner
    runner.stop.set()
    runner.join(timeout=10)


def _cronjob(name: str, resource: str, schedule: str) -> dict[str, Any]:
    cronjob = yaml.safe_load(CRONJOB.read_text())
    cronjob["metadata"]["name"] = name
    cronjob["spec"]["schedule"] = schedule
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    container["image"] = "cellar-backup:test"
    for variable in container["env"]:
        if variable["name"] == "CELLAR_RESOURCE_NAME":
            variable["value"] = resource
    return dict(cronjob)


def _wait(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _finished_job(batch: client.BatchV1Api, namespace: str, name: str) -> Any:
    job = batch.read_namespaced_job(name, namespace)
    types = {c.type: c for c in (job.status.conditions or []) if c.status == "True"}
    return job if ("Complete" in types or "Failed" in types) else None


def test_cronjob_fires_runs_the_backup_and_failures_fail_fast(node: PodRunner, backup_env: BackupEnv) -> None:
    admin_api, namespace = backup_env.admin_api, backup_env.namespace
    database, storage_spec = backup_env.database, backup_env.storage_spec
    create_resource = backup_env.create_resource
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g")
    apply_manifests(admin_api, REPO / "cronjobs" / "base" / "rbac" / "backup.yaml", namespace)
    backup_env.setup()
    batch = client.BatchV1Api(admin_api)
    batch.create_namespaced_cron_job(namespace, _cronjob("cellar-backup", "orders", "* * * * *"))

    # The controller creates a Job at the next minute, the Job a Pod; the node runs it.
    job = _wait("the CronJob's first Job", lambda: next(iter(batch.list_namespaced_job(namespace).items), None), 90)
    finished = _wait("the Job to finish", lambda: _finished_job(batch, namespace, job.metadata.name), 120)
    assert finished.status.succeeded == 1, node.exit_codes
    assert list(node.exit_codes.values()) == [0]
    assert conditions(get_status(admin_api, namespace, "databasebackups", "orders"))["Ready"]["status"] == "True"
    batch.patch_namespaced_cron_job("cellar-backup", namespace, {"spec": {"suspend": True}})

    # A permanent failure (exit 3: the storage Secret lacks the key the spec names) fails the Job at once.
    create_resource(
        "DatabaseBackup",
        {
            "metadata": {"name": "broken"},
            "spec": {
                "database": {"secretRef": {"name": "cellar-database"}, "sslMode": "disable"},
                "storage": {
                    **storage_spec,
                    "credentials": {
                        **storage_spec["credentials"],
                        "secretAccessKey": {"name": "cellar-object-storage", "key": "no-such-key"},
                    },
                },
            },
        },
    )
    broken = _cronjob("cellar-backup-broken", "broken", "0 0 1 1 *")
    batch.create_namespaced_cron_job(namespace, broken)
    manual = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "broken-now"},
        "spec": broken["spec"]["jobTemplate"]["spec"],
    }
    batch.create_namespaced_job(namespace, manual)
    failed = _wait("the broken Job to fail", lambda: _finished_job(batch, namespace, "broken-now"), 120)
    reasons = {c.type: c.reason for c in failed.status.conditions if c.status == "True"}
    assert reasons.get("Failed") == "PodFailurePolicy", reasons
    pods = client.CoreV1Api(admin_api).list_namespaced_pod(namespace, label_selector="job-name=broken-now").items
    assert len(pods) == 1, "exit 3 is not retried"
    assert node.exit_codes[pods[0].metadata.name] == 3
    assert conditions(get_status(admin_api, namespace, "databasebackups", "broken"))["Ready"]["reason"] == (
        "InvalidSpec"
    )

    # kubectl create job --from=cronjob/cellar-backup, through the API: a manual backup.
    template = batch.read_namespaced_cron_job("cellar-backup", namespace).spec.job_template
    batch.create_namespaced_job(
        namespace,
        client.V1Job(
            metadata=client.V1ObjectMeta(
                name="backup-now", annotations={"cronjob.kubernetes.io/instantiate": "manual"}
            ),
            spec=template.spec,
        ),
    )
    done = _wait("the manual Job", lambda: _finished_job(batch, namespace, "backup-now"), 120)
    assert done.status.succeeded == 1
    assert get_status(admin_api, namespace, "databasebackups", "orders")["backupsKept"] == 2
