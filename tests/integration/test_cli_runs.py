"""`kubectl cellar backup NAME` / `archive NAME` on the real API server: the Job `kubectl create job --from` makes.

(`--wait` needs a kubelet: tests/integration/test_e2e.py runs it on the real node.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.harness.stack import LocalStack
from tests.integration.cli_helpers import STORAGE, cellar, console_scripts, install, uninstall

VALUES = {
    "defaults": {"storage": STORAGE},
    "backups": {"orders": {"spec": {"database": {"secretRef": {"name": "orders-db"}}}}},
    "archives": {
        "events": {
            "spec": {
                "database": {"secretRef": {"name": "orders-db"}},
                "table": {"name": "events"},
                "timestampColumn": "at",
                "olderThan": "90d",
            }
        }
    },
}


@pytest.fixture
def release(stack: LocalStack, crds: list[str], namespace: str, tmp_path: Path) -> Any:
    install(stack, namespace, VALUES, tmp_path)
    yield namespace
    uninstall(stack, namespace)


@pytest.mark.parametrize(("job", "name"), [("backup", "orders"), ("archive", "events")])
def test_a_run_now_is_the_cronjobs_job_owned_by_it_and_marked_manual(
    stack: LocalStack, admin_api: Any, release: str, capsys: pytest.CaptureFixture[str], job: str, name: str
) -> None:
    ran = cellar(capsys, stack.kubeconfig, job, name, "-n", release)
    assert ran.code == 0, ran.err
    batch = client.BatchV1Api(admin_api)
    cronjob = batch.read_namespaced_cron_job(f"cellar-{job}-{name}", release)
    jobs = batch.list_namespaced_job(release).items
    assert len(jobs) == 1
    made = jobs[0]
    assert f"job.batch/{made.metadata.name} created" in ran.err
    assert made.metadata.name.startswith(f"cellar-{job}-{name}-manual-")
    assert made.metadata.annotations["cronjob.kubernetes.io/instantiate"] == "manual"
    (owner,) = made.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid, owner.controller) == (
        "CronJob",
        cronjob.metadata.name,
        cronjob.metadata.uid,
        True,
    )
    template = cronjob.spec.job_template.spec
    assert made.spec.template.spec.service_account_name == f"cellar-{job}"
    assert made.spec.template.spec.containers[0].image == template.template.spec.containers[0].image
    assert made.spec.template.spec.containers[0].args == [job]
    assert made.spec.active_deadline_seconds == template.active_deadline_seconds
    assert made.spec.pod_failure_policy == template.pod_failure_policy
    assert made.spec.template.metadata.labels["cellar.dev/resource"] == name


def test_a_name_that_is_no_cellar_resource_says_where_to_look(
    stack: LocalStack, release: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = cellar(capsys, stack.kubeconfig, "backup", "nope", "-n", release)
    assert ran.code == 3
    assert ran.err.count("\n") == 1
    assert ran.err.startswith(f'NotFound: DatabaseBackup "nope" is not in namespace "{release}"')
    assert f"kubectl cellar status -n {release}" in ran.err
    ran = cellar(capsys, stack.kubeconfig, "archive", "orders", "-n", release)  # a backup, not an archive
    assert ran.code == 3
    assert 'TableArchive "orders" is not in namespace' in ran.err


def test_a_resource_the_chart_did_not_make_has_no_cronjob_to_run(
    stack: LocalStack, namespace: str, create_resource: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.integration.test_resources import MINIMAL_BACKUP_SPEC

    create_resource("DatabaseBackup", {"metadata": {"name": "by-hand"}, "spec": MINIMAL_BACKUP_SPEC})
    ran = cellar(capsys, stack.kubeconfig, "backup", "by-hand", "-n", namespace)
    assert ran.code == 3
    assert ran.err.count("\n") == 1
    assert "has no CronJob cellar-backup-by-hand" in ran.err
    assert "backups: in the release's values file" in ran.err


def test_no_name_is_a_usage_error(stack: LocalStack, capsys: pytest.CaptureFixture[str]) -> None:
    ran = cellar(capsys, stack.kubeconfig, "backup")
    assert ran.code == 2
    assert "NAME" in ran.err


def test_logs_of_a_resource_that_never_ran_say_how_to_run_it(
    stack: LocalStack, release: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = cellar(capsys, stack.kubeconfig, "logs", "orders", "-n", release)
    assert ran.code == 3
    assert ran.err.count("\n") == 1
    assert ran.err.startswith(f'NotFound: no run of "orders" in namespace "{release}" has a Pod left')
    assert "kubectl cellar backup orders" in ran.err


def test_a_name_completes_from_the_namespaces_backups_and_archives(
    stack: LocalStack, release: str, tmp_path: Path
) -> None:
    """kubectl runs kubectl_complete-cellar for `kubectl cellar backup <TAB>`."""
    import subprocess

    env = console_scripts(tmp_path / "bin")
    complete = str(tmp_path / "bin" / "kubectl_complete-cellar")
    words = ["--kubeconfig", str(stack.kubeconfig), "-n", release, "backup", ""]
    result = subprocess.run([complete, *words], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.split() == ["events", "orders", ":4"]
    result = subprocess.run([complete, *words[:-1], "or"], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.split() == ["orders", ":4"]


def test_unarchive_is_a_run_of_the_archives_cronjob_with_the_dates(
    stack: LocalStack, admin_api: Any, release: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["unarchive", "events", "--from", "2020-01-01", "--to", "2021-01-01", "--into", "source"]
    ran = cellar(capsys, stack.kubeconfig, *args, "-n", release)
    assert ran.code == 0, ran.err
    (made,) = client.BatchV1Api(admin_api).list_namespaced_job(release).items
    assert made.metadata.name.startswith("cellar-unarchive-events-")
    (owner,) = made.metadata.owner_references
    assert (owner.kind, owner.name) == ("CronJob", "cellar-archive-events")
    pod = made.spec.template.spec
    assert pod.service_account_name == "cellar-archive"
    assert pod.containers[0].args == ["unarchive", "--from", "2020-01-01", "--to", "2021-01-01", "--into", "source"]

    ran = cellar(capsys, stack.kubeconfig, "unarchive", "events", "--from", "soon", "--to", "2021-01-01", "-n", release)
    assert ran.code == 2
    assert ran.err.startswith("UsageError: --from 'soon' is not a date or time")
    ran = cellar(
        capsys, stack.kubeconfig, "unarchive", "orders", "--from", "2020-01-01", "--to", "2021-01-01", "-n", release
    )
    assert ran.code == 3
    assert 'TableArchive "orders" is not in namespace' in ran.err
