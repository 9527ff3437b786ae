"""`kubectl cellar restore NAME --to SECRET` on the real API server: the DatabaseRestore and the Job it runs as
cellar-restore, and the refusal of a target Secret the chart's Role does not let cellar-restore read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.harness.stack import LocalStack
from tests.integration.cli_helpers import cellar, install, uninstall
from tests.integration.test_cli_runs import VALUES

WITH_TARGET = {**VALUES, "extraSecrets": {"restore": ["restore-target"]}}


@pytest.fixture
def release(stack: LocalStack, crds: list[str], namespace: str, tmp_path: Path) -> Any:
    install(stack, namespace, WITH_TARGET, tmp_path)
    yield namespace
    uninstall(stack, namespace)


def restores(admin_api: Any, namespace: str) -> list[dict[str, Any]]:
    found = client.CustomObjectsApi(admin_api).list_namespaced_custom_object(
        "cellar.dev", "v1alpha1", namespace, "databaserestores"
    )
    return list(found["items"])


def test_a_restore_is_written_and_run_as_cellar_restore(
    stack: LocalStack, admin_api: Any, release: str, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace = release
    args = ["restore", "orders", "--to", "restore-target", "--table", "public.orders", "--backup", "20260101T000000Z-x"]
    ran = cellar(capsys, stack.kubeconfig, *args, "--dbname", "copy", "--create-database", "-n", namespace)
    assert ran.code == 0, ran.err
    (restore,) = restores(admin_api, namespace)
    name = restore["metadata"]["name"]
    assert name.startswith("orders-")
    assert f"databaserestore.cellar.dev/{name} created" in ran.err
    assert restore["spec"]["backup"] == {"name": "orders", "key": "20260101T000000Z-x"}
    assert restore["spec"]["target"]["secretRef"] == {"name": "restore-target"}
    assert restore["spec"]["target"]["dbname"] == "copy"
    assert restore["spec"]["select"]["tables"] == ["public.orders"]
    assert restore["spec"]["createDatabase"] is True

    job = client.BatchV1Api(admin_api).read_namespaced_job(f"cellar-restore-{name}", namespace)
    pod = job.spec.template.spec
    assert pod.service_account_name == "cellar-restore"
    (container,) = pod.containers
    assert (container.name, container.args) == ("restore", ["restore"])
    assert {e.name: e.value for e in container.env}["CELLAR_RESOURCE_NAME"] == name
    assert job.spec.template.metadata.labels["app.kubernetes.io/name"] == "cellar-restore"
    assert job.spec.template.metadata.labels["cellar.dev/resource"] == name
    (owner,) = job.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == ("DatabaseRestore", name, restore["metadata"]["uid"])
    assert {r.on_exit_codes.container_name for r in job.spec.pod_failure_policy.rules if r.on_exit_codes} == {"restore"}


def test_a_target_cellar_restore_may_not_read_is_refused_naming_extra_secrets(
    stack: LocalStack, admin_api: Any, release: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = cellar(capsys, stack.kubeconfig, "restore", "orders", "--to", "someone-elses", "-n", release)
    assert ran.code == 3
    assert ran.err.count("\n") == 1
    assert ran.err.startswith('Forbidden: the ServiceAccount cellar-restore may not read Secret "someone-elses"')
    assert "extraSecrets.restore" in ran.err
    assert restores(admin_api, release) == [], "nothing is written"


def test_a_restore_of_no_backup_says_where_to_look(
    stack: LocalStack, release: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = cellar(capsys, stack.kubeconfig, "restore", "nope", "--to", "restore-target", "-n", release)
    assert ran.code == 3
    assert ran.err.startswith(f'NotFound: DatabaseBackup "nope" is not in namespace "{release}"')


def test_restore_needs_a_target(stack: LocalStack, capsys: pytest.CaptureFixture[str]) -> None:
    ran = cellar(capsys, stack.kubeconfig, "restore", "orders")
    assert ran.code == 2
    assert "--to" in ran.err
