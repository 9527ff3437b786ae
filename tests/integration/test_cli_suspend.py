"""`kubectl cellar suspend NAME` / `resume NAME`: an annotation on the resource that the jobs honour and that the
next `helm upgrade` (Helm 4, server-side apply) neither conflicts with nor undoes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from common.suspension import SUSPEND_ANNOTATION
from jobs.archive.__main__ import main as archive_main
from jobs.backup.__main__ import main as backup_main
from tests.harness.stack import LocalStack
from tests.integration.cli_helpers import cellar, install, uninstall
from tests.integration.test_cli_runs import VALUES
from tests.integration.test_resources import MINIMAL_BACKUP_SPEC


@pytest.fixture
def release(stack: LocalStack, crds: list[str], namespace: str, tmp_path: Path) -> Any:
    install(stack, namespace, VALUES, tmp_path)
    yield namespace
    uninstall(stack, namespace)


def annotations(admin_api: Any, namespace: str, plural: str, name: str) -> dict[str, str]:
    stored = client.CustomObjectsApi(admin_api).get_namespaced_custom_object(
        "cellar.dev", "v1alpha1", namespace, plural, name
    )
    return dict(stored["metadata"].get("annotations") or {})


def test_suspend_survives_a_helm_upgrade_and_resume_undoes_it(
    stack: LocalStack, admin_api: Any, release: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace = release
    ran = cellar(capsys, stack.kubeconfig, "suspend", "orders", "-n", namespace)
    assert ran.code == 0, ran.err
    assert "databasebackup.cellar.dev/orders suspended" in ran.out
    assert annotations(admin_api, namespace, "databasebackups", "orders")[SUSPEND_ANNOTATION] == "true"

    rows = {r["name"]: r for r in json.loads(cellar(capsys, stack.kubeconfig, "status", "-n", namespace, "-o",
                                                    "json").out)["items"]}  # fmt: skip
    assert rows["orders"]["suspended"] is True
    assert rows["orders"]["next_run"] == ""
    assert rows["events"]["suspended"] is False

    # Helm 4 applies server-side, without --force-conflicts: no conflict, and the annotation stays.
    changed = {**VALUES, "backups": {"orders": {**VALUES["backups"]["orders"], "schedule": "45 3 * * *"}}}
    install(stack, namespace, changed, tmp_path, verb="upgrade")
    cronjob = client.BatchV1Api(admin_api).read_namespaced_cron_job("cellar-backup-orders", namespace)
    assert cronjob.spec.schedule == "45 3 * * *"
    kept = annotations(admin_api, namespace, "databasebackups", "orders")
    assert kept[SUSPEND_ANNOTATION] == "true"
    assert kept["helm.sh/resource-policy"] == "keep"

    ran = cellar(capsys, stack.kubeconfig, "backup", "orders", "-n", namespace)
    assert ran.code == 2
    assert "is suspended" in ran.err
    assert f"kubectl cellar resume orders -n {namespace}" in ran.err

    ran = cellar(capsys, stack.kubeconfig, "resume", "orders", "-n", namespace)
    assert ran.code == 0, ran.err
    assert SUSPEND_ANNOTATION not in annotations(admin_api, namespace, "databasebackups", "orders")
    install(stack, namespace, VALUES, tmp_path, verb="upgrade")

    ran = cellar(capsys, stack.kubeconfig, "suspend", "archive/events", "-n", namespace)
    assert ran.code == 0, ran.err
    assert annotations(admin_api, namespace, "tablearchives", "events")[SUSPEND_ANNOTATION] == "true"
    ran = cellar(capsys, stack.kubeconfig, "suspend", "nope", "-n", namespace)
    assert ran.code == 3
    assert ran.err.startswith('NotFound: no DatabaseBackup or TableArchive "nope"')


ARCHIVE_SPEC = {
    **MINIMAL_BACKUP_SPEC,
    "table": {"name": "events"},
    "timestampColumn": "at",
    "olderThan": "90d",
}


@pytest.mark.parametrize(
    ("kind", "plural", "spec", "main", "job"),
    [
        ("DatabaseBackup", "databasebackups", MINIMAL_BACKUP_SPEC, backup_main, "backup"),
        ("TableArchive", "tablearchives", ARCHIVE_SPEC, archive_main, "archive"),
    ],
)
def test_a_suspended_resources_run_does_nothing_records_it_and_exits_0(
    stack: LocalStack,
    admin_api: Any,
    namespace: str,
    create_resource: Callable[..., Any],
    job_kubeconfig: Callable[[str], Path],
    kind: str,
    plural: str,
    spec: dict[str, Any],
    main: Callable[[list[str]], int],
    job: str,
) -> None:
    # The spec's Secrets do not exist: a run that did anything would fail with InvalidSpec.
    metadata = {"name": "paused", "annotations": {SUSPEND_ANNOTATION: "true"}}
    create_resource(kind, {"metadata": metadata, "spec": spec})
    code = main([job, "--name", "paused", "--namespace", namespace, "--kubeconfig", str(job_kubeconfig(job))])
    assert code == 0
    stored = client.CustomObjectsApi(admin_api).get_namespaced_custom_object(
        "cellar.dev", "v1alpha1", namespace, plural, "paused"
    )
    assert "lastRun" not in (stored.get("status") or {})
    events = client.EventsV1Api(admin_api).list_namespaced_event(namespace).items
    (suspended,) = [e for e in events if e.reason == "Suspended"]
    assert suspended.regarding.name == "paused"
    assert "kubectl cellar resume paused" in suspended.note
