"""The job runtime end to end: a real process, the job's ServiceAccount, SIGTERM, logs and status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.conftest import REPO
from tests.integration.processes import Job, start_process
from tests.integration.test_resources import MINIMAL_BACKUP_SPEC


def _start_probe(kubeconfig: Path, namespace: str, termination_log: Path, *extra: str) -> Job:
    env = {"CELLAR_TERMINATION_LOG": str(termination_log), "KUBERNETES_SERVICE_HOST": ""}
    where = ["--kubeconfig", str(kubeconfig), "--namespace", namespace, "--name", "probe"]
    return start_process("tests.integration.probe_job", *where, *extra, env=env)


def _status(admin_api: Any, namespace: str) -> dict[str, Any]:
    stored = client.CustomObjectsApi(admin_api).get_namespaced_custom_object(
        "cellar.dev", "v1alpha1", namespace, "databasebackups", "probe"
    )
    return {c["type"]: c for c in stored["status"]["conditions"]}


def test_sigterm_records_interrupted_and_exits_143(
    job_kubeconfig: Callable[[str], Path], namespace: str, create_resource: Any, admin_api: Any, tmp_path: Path
) -> None:
    create_resource("DatabaseBackup", {"metadata": {"name": "probe"}, "spec": MINIMAL_BACKUP_SPEC})
    termination_log = tmp_path / "termination-log"
    probe = _start_probe(job_kubeconfig("backup"), namespace, termination_log, "--seconds", "60")
    probe.wait_for_line("PROBE-READY")
    probe.send_signal(signal.SIGTERM)
    out, err = probe.communicate(timeout=30)
    lines = out.splitlines()
    assert probe.returncode == 143, (out, err)
    conditions = _status(admin_api, namespace)
    assert conditions["Ready"]["reason"] == "Interrupted"
    assert conditions["Progressing"]["status"] == "False"
    assert termination_log.read_text().startswith("Interrupted: interrupted by SIGTERM")
    events = client.EventsV1Api(admin_api).list_namespaced_event(namespace).items
    assert any(e.reason == "Interrupted" and e.type == "Warning" for e in events)

    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert records, lines
    assert {r["run_id"] for r in records} == {records[0]["run_id"]}
    assert all(r["resource"] == f"{namespace}/probe" for r in records)
    assert any(r["msg"] == "run failed" and r["exit_code"] == 143 for r in records)


def test_successful_run_exits_0_and_writes_a_summary(
    job_kubeconfig: Callable[[str], Path], namespace: str, create_resource: Any, admin_api: Any, tmp_path: Path
) -> None:
    create_resource("DatabaseBackup", {"metadata": {"name": "probe"}, "spec": MINIMAL_BACKUP_SPEC})
    termination_log = tmp_path / "termination-log"
    probe = _start_probe(job_kubeconfig("backup"), namespace, termination_log)
    out, err = probe.communicate(timeout=60)
    assert probe.returncode == 0, (out, err)
    assert _status(admin_api, namespace)["Ready"]["status"] == "True"
    assert termination_log.read_text() == "probe done"


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.integration.probe_job", "--namespace", "x"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "CELLAR_RESOURCE_NAME": ""},
    )
    assert result.returncode == 2
    assert "pass --name or set CELLAR_RESOURCE_NAME" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "tests.integration.probe_job", "--bogus"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "unrecognized arguments: --bogus" in result.stdout


def test_a_run_asked_to_wait_for_its_resource_starts_once_it_is_created(
    job_kubeconfig: Callable[[str], Path], namespace: str, create_resource: Any, admin_api: Any, tmp_path: Path
) -> None:
    """Helm creates a chart's restore Job before its DatabaseRestore: the Job's run waits for the resource."""
    kubeconfig = job_kubeconfig("backup")
    where = ["--kubeconfig", str(kubeconfig), "--namespace", namespace, "--name", "probe"]
    env = {"CELLAR_TERMINATION_LOG": str(tmp_path / "termination-log"), "KUBERNETES_SERVICE_HOST": ""}
    impatient = start_process("tests.integration.probe_job", *where, env=env)
    out, err = impatient.communicate(timeout=60)
    assert impatient.returncode == 3, (out, err)  # NotFound is permanent without the wait
    assert 'DatabaseBackup \\"probe\\" was not found' in out  # as the JSON log line escapes it

    waiting = start_process(
        "tests.integration.probe_job", *where, env={**env, "CELLAR_WAIT_FOR_RESOURCE_SECONDS": "120"}
    )
    waiting.wait_for_line("waiting for the resource to be created")
    create_resource("DatabaseBackup", {"metadata": {"name": "probe"}, "spec": MINIMAL_BACKUP_SPEC})
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, (out, err)
    assert _status(admin_api, namespace)["Ready"]["status"] == "True"
