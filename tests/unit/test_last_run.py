"""Every run's `lastRun` describes that run alone: status is written as a merge patch, so a field one run leaves
out would keep what an earlier run wrote there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from common import runtime
from common.kube import DATABASE_BACKUP, Kube, ResourceRef, RetryPolicy
from common.metrics import status_value
from common.runtime import Job, run_job
from jobs.archive.job import ArchiveJob
from jobs.backup.backup.job import BackupJob
from jobs.backup.restore.job import RestoreJob
from jobs.backup.status import BackupRun
from tests.unit.fake_kube import FakeTransport

EARLIER_RUN = {
    "runId": "earlier",
    "startTime": "2026-01-01T00:00:00Z",
    "completionTime": "2026-01-01T00:10:00Z",
    "durationSeconds": 600.0,
    "reason": "Completed",
    "message": "all went well",
}


@pytest.fixture(autouse=True)
def _no_termination_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "TERMINATION_LOG", tmp_path / "termination-log")
    monkeypatch.setenv("CELLAR_RUN_ID", "thisrun")


def _run(job: Job, transport: FakeTransport) -> int:
    return run_job(job, ["--name", "orders", "--namespace", "prod"], transport_factory=lambda _: transport)


def test_a_failed_archive_run_shows_none_of_the_last_good_runs_figures() -> None:
    earlier = {**EARLIER_RUN, "rows": 500, "bytes": 9000, "batches": 5, "longestTransactionSeconds": 0.5}
    transport = FakeTransport("TableArchive", {"lastRun": earlier})
    assert _run(ArchiveJob(), transport) == 3  # an empty spec: InvalidSpec
    last_run = transport.status["lastRun"]
    assert set(last_run) == {"runId", "startTime", "completionTime", "reason", "message"}
    assert (last_run["runId"], last_run["reason"]) == ("thisrun", "InvalidSpec")
    assert status_value(transport.status, ("lastRun", "rows")) is None  # the rows metric is not pushed again


def test_a_backup_that_fails_in_preflight_shows_its_own_start_and_no_key() -> None:
    transport = FakeTransport("DatabaseBackup", {"lastRun": {**EARLIER_RUN, "key": "backups/earlier.dump"}})
    assert _run(BackupJob(), transport) == 3
    last_run = transport.status["lastRun"]
    assert set(last_run) == {"runId", "startTime", "completionTime", "reason", "message"}
    assert last_run["startTime"] != EARLIER_RUN["startTime"]
    assert last_run["runId"] == "thisrun"


def test_a_run_under_way_shows_nothing_of_how_the_last_one_ended() -> None:
    transport = FakeTransport("DatabaseBackup", {"lastRun": {**EARLIER_RUN, "key": "backups/earlier.dump"}})
    kube = Kube(transport, retry=RetryPolicy(attempts=1), sleep=lambda _: None)
    started = BackupRun("thisrun", "2026-02-02T00:00:00Z", key="backups/thisrun.dump")
    kube.update_status(ResourceRef(DATABASE_BACKUP, "prod", "orders"), lambda _: {"lastRun": started.to_status()})
    assert transport.status["lastRun"] == {
        "runId": "thisrun",
        "startTime": "2026-02-02T00:00:00Z",
        "key": "backups/thisrun.dump",
    }


def test_a_restore_that_fails_before_restoring_shows_no_earlier_key_or_bytes() -> None:
    earlier: dict[str, Any] = {
        "key": "backups/earlier.dump",
        "startTime": "2026-01-01T00:00:00Z",
        "completionTime": "2026-01-01T00:10:00Z",
        "bytesRead": 123,
    }
    transport = FakeTransport("DatabaseRestore", earlier)
    assert _run(RestoreJob(), transport) == 3
    status = transport.status
    assert "key" not in status
    assert "bytesRead" not in status
    assert status["startTime"] != earlier["startTime"]
    assert status["completionTime"] >= status["startTime"]
