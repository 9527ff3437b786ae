"""`kubectl cellar status` against the chart installed by the real Helm on the real API server."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from common.conditions import format_time
from tests.harness.stack import LocalStack
from tests.integration.cli_helpers import (
    STORAGE,
    cellar,
    console_scripts,
    install,
    no_role_kubeconfig,
    ready,
    uninstall,
    write_status,
)

FLEET = {
    "defaults": {"storage": STORAGE},
    "backups": {
        "orders": {"schedule": "30 2 * * *", "spec": {"database": {"secretRef": {"name": "orders-db"}}}},
        "billing": {"schedule": "@hourly", "spec": {"database": {"secretRef": {"name": "billing-db"}}}},
    },
    "archives": {
        "events": {
            "schedule": "0 4 * * 0",
            "spec": {
                "database": {"secretRef": {"name": "orders-db"}},
                "table": {"name": "events"},
                "timestampColumn": "at",
                "olderThan": "90d",
            },
        }
    },
}


@pytest.fixture
def release(stack: LocalStack, crds: list[str], namespace: str, tmp_path: Path) -> Any:
    install(stack, namespace, FLEET, tmp_path)
    yield namespace
    uninstall(stack, namespace)


def fresh_backup(now: datetime, *, verified: bool) -> dict[str, Any]:
    done = now - timedelta(hours=3)
    return {
        "conditions": [ready("True", "Completed")],
        "lastSuccessfulBackup": {
            "key": "k1",
            "completionTime": format_time(done),
            "size": "1.5 MiB",
            "verified": verified,
        },
        "freshUntil": format_time(done + timedelta(hours=30)),
    }


def test_the_fleet_in_one_table_and_its_exit_code(
    stack: LocalStack, admin_api: Any, release: str, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace, now = release, datetime.now(UTC)
    write_status(admin_api, namespace, "databasebackups", "orders", fresh_backup(now, verified=True))
    write_status(admin_api, namespace, "databasebackups", "billing", fresh_backup(now, verified=False))
    archive = {
        "conditions": [ready("True", "Completed")],
        "lastRun": {"reason": "Completed", "rows": 1200, "completionTime": format_time(now - timedelta(days=1))},
    }
    write_status(admin_api, namespace, "tablearchives", "events", archive)

    ran = cellar(capsys, stack.kubeconfig, "status", "-n", namespace)
    assert ran.code == 0, ran.err
    lines = ran.out.splitlines()
    assert lines[0].split()[:3] == ["KIND", "NAME", "READY"]
    by_name = {line.split()[1]: line for line in lines[1:]}
    assert set(by_name) == {"orders", "billing", "events"}
    assert "1.5 MiB" in by_name["orders"]
    assert " yes " in by_name["orders"]
    assert "1200 rows" in by_name["events"]

    listed = json.loads(cellar(capsys, stack.kubeconfig, "status", "-n", namespace, "-o", "json").out)["items"]
    rows = {r["name"]: r for r in listed}
    assert rows["orders"]["restore_tested"] is True
    assert rows["billing"]["restore_tested"] is False
    assert rows["orders"]["stale_after"] == "30h"  # the chart's: a day's period plus the deadline
    assert rows["orders"]["cronjob"] == "cellar-backup-orders"
    # The next run from the CronJob's own schedule and time zone (the chart's Etc/UTC).
    next_orders = datetime.fromisoformat(rows["orders"]["next_run"])
    assert (next_orders.hour, next_orders.minute) == (2, 30)
    assert now < next_orders <= now + timedelta(days=1)
    next_events = datetime.fromisoformat(rows["events"]["next_run"])
    assert next_events.isoweekday() == 7
    assert next_events.hour == 4
    assert not any(r["suspended"] for r in listed)

    # A backup whose freshUntil has passed is Stale, though no run has said so: exit 1, in scripts and CI.
    stale = fresh_backup(now - timedelta(days=2), verified=True)
    write_status(admin_api, namespace, "databasebackups", "billing", stale)
    ran = cellar(capsys, stack.kubeconfig, "status", "-n", namespace, "-o", "json")
    assert ran.code == 1
    billing = next(r for r in json.loads(ran.out)["items"] if r["name"] == "billing")
    assert (billing["ready"], billing["reason"]) == (False, "Stale")


def test_a_resource_that_never_ran_is_not_ready(
    stack: LocalStack, release: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = cellar(capsys, stack.kubeconfig, "status", "-n", release)
    assert ran.code == 1
    assert all(line.split()[2:4] == ["False", "-"] for line in ran.out.splitlines()[1:])


def test_all_namespaces_adds_the_namespace_column(
    stack: LocalStack, release: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = cellar(capsys, stack.kubeconfig, "status", "-A")
    assert ran.out.splitlines()[0].split()[0] == "NAMESPACE"
    assert any(line.split()[0] == release for line in ran.out.splitlines()[1:])


def test_a_namespace_without_the_chart_says_what_to_do(
    stack: LocalStack, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = cellar(capsys, stack.kubeconfig, "status", "-n", namespace)
    assert ran.code == 3
    assert ran.err.count("\n") == 1
    assert ran.err.startswith(f'NotFound: no DatabaseBackup or TableArchive in namespace "{namespace}"')
    assert "-n NAMESPACE" in ran.err


def test_a_context_without_permission_says_what_to_grant(
    stack: LocalStack,
    admin_api: Any,
    namespace: str,
    crds: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kubeconfig = no_role_kubeconfig(stack, admin_api, namespace, tmp_path / "nobody.kubeconfig")
    ran = cellar(capsys, kubeconfig, "status")  # the context's namespace
    assert ran.code == 3
    assert ran.err.count("\n") == 1
    assert ran.err.startswith("Forbidden: permission denied: context 'cellar' cannot list ")
    assert f'in namespace "{namespace}"' in ran.err


def test_an_unknown_context_is_a_usage_error(stack: LocalStack, capsys: pytest.CaptureFixture[str]) -> None:
    ran = cellar(capsys, stack.kubeconfig, "status", "--context", "nowhere")
    assert ran.code == 2
    assert "context 'nowhere' is not in" in ran.err


def test_kubectl_finds_the_plugin_on_path(stack: LocalStack, release: str, tmp_path: Path) -> None:
    """The console script on PATH is what `kubectl cellar` runs (kubectl's plugin discovery); the wheel's install
    of it is test_packaging's."""
    env = console_scripts(tmp_path / "bin")
    kubectl = str(stack.binaries["kubectl"])
    found = subprocess.run([kubectl, "plugin", "list"], capture_output=True, text=True, env=env, check=False)
    assert str(tmp_path / "bin" / "kubectl-cellar") in found.stdout, found.stderr
    ran = subprocess.run(
        [kubectl, "cellar", "status", "-n", release, f"--kubeconfig={stack.kubeconfig}"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert ran.returncode == 1, ran.stderr  # nothing has run yet: not Ready
    assert any(line.split()[:2] == ["backup", "orders"] for line in ran.stdout.splitlines())

    # kubectl's own completion of a plugin runs kubectl_complete-cellar: NAME from the namespace's resources.
    words = ["cellar", "-n", release, "--kubeconfig", str(stack.kubeconfig)]
    completed = subprocess.run(
        [kubectl, "__complete", *words, "backup", ""], capture_output=True, text=True, env=env, check=False
    )
    assert completed.stdout.split() == ["billing", "events", "orders", ":4"], completed.stderr
