"""Each job's sequence of status writes, over the fake Kubernetes transport: a run that succeeds, one that fails
with a retryable error, with a permanent one, and one stopped by SIGTERM (Interrupted). The writes are what the
jobs make through common.run_status; a failure is recorded by the job's own `record_failure`, as the runtime calls
it."""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from common import runtime
from common.conditions import Condition, ConditionType
from common.errors import BackupUnsound, CellarError, ChecksumMismatch, ConnectionFailed, Interrupted, InvalidSpec
from common.invocation import Invocation
from common.kube import DATABASE_BACKUP, DATABASE_RESTORE, TABLE_ARCHIVE, Kube, ResourceKind, ResourceRef, RetryPolicy
from common.reasons import Reason
from common.run_status import RunStatus
from common.runtime import Interrupts, Job, RunContext, run_job
from jobs.archive.job import ArchiveJob
from jobs.archive.status import ARCHIVE_RUNS, UNARCHIVE_RUNS, ArchiveRun, UnarchiveRecord
from jobs.archive.unarchive import UnarchiveJob
from jobs.backup.backup.job import BackupJob, VerifyJob
from jobs.backup.restore.job import RestoreJob
from jobs.backup.status import BACKUP_RUNS, RESTORE_RUNS, VERIFY_RUNS, BackupRun, RestoreOutcome
from tests.unit.fake_kube import FakeTransport

START = "2026-02-02T00:00:00Z"
END = "2026-02-02T00:05:00Z"
FAILURES = [
    pytest.param(ConnectionFailed("cannot reach the database"), id="retryable"),
    pytest.param(InvalidSpec("spec.table: required"), id="permanent"),
    pytest.param(Interrupted("interrupted by SIGTERM"), id="sigterm"),
]


def _context(transport: FakeTransport, kind: ResourceKind) -> RunContext:
    kube = Kube(transport, retry=RetryPolicy(attempts=1), sleep=lambda _: None, instance="pod-1")
    ref = ResourceRef(kind, "prod", "orders")
    invocation = Invocation("orders", "prod", None, dry_run=False)
    return RunContext("test", "run-2", invocation, kube, ref, kube.get(ref), Interrupts())


def _conditions(patch: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in patch.get("conditions", [])}


def _events(transport: FakeTransport) -> list[tuple[str, str, str]]:
    return [(e["reason"], e["type"], e["action"]) for e in transport.events]


# ---- DatabaseBackup: a backup run

EARLIER_BACKUP = {
    "lastRun": {
        "runId": "run-1",
        "startTime": "2026-01-01T00:00:00Z",
        "completionTime": "2026-01-01T00:10:00Z",
        "durationSeconds": 600.0,
        "reason": "Completed",
        "message": "backup b1 done",
        "key": "backups/b1.dump",
    }
}
STARTED_BACKUP = BackupRun("run-2", START, key="backups/b2.dump")


def _start_backup(ctx: RunContext) -> RunStatus:
    status = RunStatus.of(ctx, BACKUP_RUNS)
    status.started("dumping app to backups/b2.dump", "backup b2 of app started", STARTED_BACKUP)
    status.progressed({"done": 10, "unit": "bytes"})
    return status


def test_a_backup_run_that_succeeds_writes_started_progress_and_its_whole_outcome() -> None:
    transport = FakeTransport("DatabaseBackup", EARLIER_BACKUP)
    ctx = _context(transport, DATABASE_BACKUP)
    status = _start_backup(ctx)
    fresh = Condition(ConditionType.READY, "True", Reason.COMPLETED, "newest backup b2")
    ended = replace(STARTED_BACKUP, duration_seconds=300.0).ended(END, Reason.COMPLETED, "backup b2 done")
    status.succeeded(Reason.COMPLETED, "backup b2 done", ended, conditions=[fresh], fields={"backupsKept": 2})

    started, progressed, succeeded = transport.patches
    assert _conditions(started) == {"Progressing": ("True", "Running")}
    # Nothing of run-1 stays in lastRun while run-2 runs.
    assert started["lastRun"] == {
        "runId": "run-2",
        "startTime": START,
        "key": "backups/b2.dump",
        "completionTime": None,
        "durationSeconds": None,
        "reason": None,
        "message": None,
    }
    assert progressed["progress"] == {"done": 10, "unit": "bytes"}
    assert _conditions(succeeded) == {
        "Progressing": ("False", "Completed"),
        "BackupSucceeded": ("True", "Completed"),
        "Ready": ("True", "Completed"),
    }
    assert [c["message"] for c in succeeded["conditions"]][-1] == "newest backup b2"  # the job's own Ready
    assert transport.status["lastRun"] == {
        "runId": "run-2",
        "startTime": START,
        "key": "backups/b2.dump",
        "completionTime": END,
        "durationSeconds": 300.0,
        "reason": "Completed",
        "message": "backup b2 done",
    }
    assert "progress" not in transport.status
    assert transport.status["backupsKept"] == 2
    assert _events(transport) == [("Started", "Normal", "Backup"), ("Completed", "Normal", "Backup")]


@pytest.mark.parametrize("error", FAILURES)
def test_a_backup_run_that_fails_after_it_started_keeps_its_start_and_key(error: CellarError) -> None:
    transport = FakeTransport("DatabaseBackup", EARLIER_BACKUP)
    ctx = _context(transport, DATABASE_BACKUP)
    _start_backup(ctx)
    BackupJob().record_failure(ctx, error)

    failed = transport.patches[-1]
    reason = str(error.reason)
    assert _conditions(failed) == {
        "Progressing": ("False", reason),
        "BackupSucceeded": ("False", reason),
        "Ready": ("False", reason),
    }
    last_run = transport.status["lastRun"]
    assert {k: v for k, v in last_run.items() if k != "completionTime"} == {
        "runId": "run-2",
        "startTime": START,
        "key": "backups/b2.dump",
        "reason": reason,
        "message": str(error),
    }
    assert "progress" not in transport.status
    assert _events(transport)[-1] == (reason, "Warning", "Backup")


@pytest.mark.parametrize("error", FAILURES)
def test_a_backup_run_that_fails_before_it_started_shows_its_own_start(error: CellarError) -> None:
    transport = FakeTransport("DatabaseBackup", EARLIER_BACKUP)
    ctx = _context(transport, DATABASE_BACKUP)
    BackupJob().record_failure(ctx, error)
    (failed,) = transport.patches
    assert set(transport.status["lastRun"]) == {"runId", "startTime", "completionTime", "reason", "message"}
    assert failed["lastRun"]["startTime"] != EARLIER_BACKUP["lastRun"]["startTime"]
    assert _events(transport) == [(str(error.reason), "Warning", "Backup")]


def test_a_restore_test_that_passes_writes_verified_only() -> None:
    transport = FakeTransport("DatabaseBackup", {"progress": {"done": 1}})  # a backup run under way
    ctx = _context(transport, DATABASE_BACKUP)
    RunStatus.of(ctx, VERIFY_RUNS).succeeded(Reason.RESTORE_TEST_PASSED, "row counts matched", fields={"x": 1})
    (passed,) = transport.patches
    assert _conditions(passed) == {"Verified": ("True", "RestoreTestPassed")}
    assert "progress" not in passed  # the backup run's progress is its own
    assert _events(transport) == [("RestoreTestPassed", "Normal", "Verify")]


@pytest.mark.parametrize("error", [*FAILURES, pytest.param(ChecksumMismatch("the SHA-256 differs"), id="unsound")])
def test_a_restore_test_that_fails_writes_verified_and_for_an_unsound_backup_ready(error: CellarError) -> None:
    transport = FakeTransport("DatabaseBackup", EARLIER_BACKUP)
    ctx = _context(transport, DATABASE_BACKUP)
    VerifyJob().record_failure(ctx, error)
    (failed,) = transport.patches
    expected = {"Verified": ("False", str(error.reason))}
    if isinstance(error, BackupUnsound):
        expected["Ready"] = ("False", str(error.reason))
    assert _conditions(failed) == expected
    assert transport.status["lastRun"] == EARLIER_BACKUP["lastRun"]  # a restore test is not a backup run
    assert _events(transport) == [(str(error.reason), "Warning", "Verify")]


# ---- TableArchive: an archive run, and an unarchive

EARLIER_ARCHIVE = {
    "lastRun": {
        "runId": "run-1",
        "startTime": "2026-01-01T00:00:00Z",
        "completionTime": "2026-01-01T00:10:00Z",
        "durationSeconds": 600.0,
        "reason": "Completed",
        "message": "500 rows archived",
        "rows": 500,
        "bytes": 9000,
        "batches": 5,
        "longestTransactionSeconds": 0.5,
    }
}


def _start_archive(ctx: RunContext) -> RunStatus:
    status = RunStatus.of(ctx, ARCHIVE_RUNS)
    status.started("archiving rows", "archiving public.orders rows", fields={"cutoff": START})
    status.progressed({"done": 100, "unit": "rows"})
    status.under_way(Reason.WAITING_FOR_STANDBY, "a standby is 10s behind")
    return status


def test_an_archive_run_that_succeeds_writes_started_progress_and_its_whole_outcome() -> None:
    transport = FakeTransport("TableArchive", EARLIER_ARCHIVE)
    ctx = _context(transport, TABLE_ARCHIVE)
    status = _start_archive(ctx)
    last_run = ArchiveRun("run-2", START, duration_seconds=3.0, rows=300, bytes=100, batches=3)
    ended = last_run.ended(END, Reason.COMPLETED, "300 rows archived")
    status.succeeded(Reason.COMPLETED, "300 rows archived", ended, fields={"oldestRowTime": END})

    started, progressed, waiting, succeeded = transport.patches
    assert (_conditions(started), started["cutoff"]) == ({"Progressing": ("True", "Running")}, START)
    assert "lastRun" not in started  # while it runs, lastRun is the last run that ended
    assert progressed["progress"]["done"] == 100
    assert _conditions(waiting) == {"Progressing": ("True", "WaitingForStandby")}
    assert _conditions(succeeded) == {
        "Progressing": ("False", "Completed"),
        "ArchiveSucceeded": ("True", "Completed"),
        "Ready": ("True", "Completed"),
    }
    assert transport.status["lastRun"] == {
        "runId": "run-2",
        "startTime": START,
        "completionTime": END,
        "durationSeconds": 3.0,
        "reason": "Completed",
        "message": "300 rows archived",
        "rows": 300,
        "bytes": 100,
        "batches": 3,
    }
    assert "progress" not in transport.status
    assert _events(transport) == [("Started", "Normal", "Archive"), ("Completed", "Normal", "Archive")]


@pytest.mark.parametrize("error", FAILURES)
def test_an_archive_run_that_fails_shows_none_of_the_last_good_runs_figures(error: CellarError) -> None:
    transport = FakeTransport("TableArchive", EARLIER_ARCHIVE)
    ctx = _context(transport, TABLE_ARCHIVE)
    _start_archive(ctx)
    ArchiveJob().record_failure(ctx, error)

    failed = transport.patches[-1]
    reason = str(error.reason)
    assert _conditions(failed) == {
        "Progressing": ("False", reason),
        "ArchiveSucceeded": ("False", reason),
        "Ready": ("False", reason),
    }
    last_run = transport.status["lastRun"]
    assert set(last_run) == {"runId", "startTime", "completionTime", "reason", "message"}
    assert (last_run["runId"], last_run["reason"]) == ("run-2", reason)
    assert "progress" not in transport.status
    assert _events(transport)[-1] == (reason, "Warning", "Archive")


def test_an_unarchive_that_succeeds_writes_its_record_and_no_condition() -> None:
    transport = FakeTransport("TableArchive", EARLIER_ARCHIVE)
    ctx = _context(transport, TABLE_ARCHIVE)
    record = UnarchiveRecord(END, "2024-01-01", "2024-02-01", "side", 2, 20, "20 rows brought back")
    RunStatus.of(ctx, UNARCHIVE_RUNS).succeeded(Reason.UNARCHIVED, "20 rows brought back", record)
    (written,) = transport.patches
    assert written["lastUnarchive"]["rows"] == 20
    assert written["conditions"] == []
    assert transport.status["lastRun"] == EARLIER_ARCHIVE["lastRun"]
    assert _events(transport) == [("Unarchived", "Normal", "Unarchive")]


@pytest.mark.parametrize("error", FAILURES)
def test_an_unarchive_that_fails_posts_an_event_and_writes_no_status(error: CellarError) -> None:
    transport = FakeTransport("TableArchive", EARLIER_ARCHIVE)
    ctx = _context(transport, TABLE_ARCHIVE)
    UnarchiveJob().record_failure(ctx, error)
    assert transport.patches == []
    assert _events(transport) == [(str(error.reason), "Warning", "Unarchive")]
    assert transport.events[0]["note"] == f"unarchive failed: {error}"


# ---- DatabaseRestore: a one-shot run

EARLIER_RESTORE = {"key": "backups/b1.dump", "startTime": "2026-01-01T00:00:00Z", "completionTime": END, "bytesRead": 7}


def _start_restore(ctx: RunContext) -> tuple[RunStatus, RestoreOutcome]:
    status = RunStatus.of(ctx, RESTORE_RUNS)
    outcome = RestoreOutcome(key="backups/b2.dump", start_time=START)
    status.started("restoring b2 into app", "restore of b2 into app started", outcome)
    status.progressed({"done": 5, "unit": "bytes"})
    return status, outcome


def test_a_restore_that_succeeds_writes_unknown_progress_and_its_whole_outcome() -> None:
    transport = FakeTransport("DatabaseRestore", EARLIER_RESTORE)
    ctx = _context(transport, DATABASE_RESTORE)
    status, outcome = _start_restore(ctx)
    read = replace(outcome, bytes_read=99).ended(END, Reason.COMPLETED, "restored")
    status.succeeded(Reason.COMPLETED, "restored", read)

    started, progressed, succeeded = transport.patches
    assert _conditions(started) == {"Succeeded": ("Unknown", "Running")}
    assert (started["completionTime"], started["bytesRead"]) == (None, None)  # the earlier run's are cleared
    assert progressed["progress"]["done"] == 5
    assert _conditions(succeeded) == {"Succeeded": ("True", "Completed")}
    status_now = transport.status
    assert {k: status_now[k] for k in ("key", "startTime", "completionTime", "bytesRead")} == {
        "key": "backups/b2.dump",
        "startTime": START,
        "completionTime": END,
        "bytesRead": 99,
    }
    assert "progress" not in status_now
    assert _events(transport) == [("Started", "Normal", "Restore"), ("Completed", "Normal", "Restore")]


@pytest.mark.parametrize("error", FAILURES)
def test_a_restore_that_fails_keeps_its_key_and_clears_the_earlier_bytes(error: CellarError) -> None:
    transport = FakeTransport("DatabaseRestore", EARLIER_RESTORE)
    ctx = _context(transport, DATABASE_RESTORE)
    _start_restore(ctx)
    RestoreJob().record_failure(ctx, error)
    assert _conditions(transport.patches[-1]) == {"Succeeded": ("False", str(error.reason))}
    status_now = transport.status
    assert (status_now["key"], status_now["startTime"]) == ("backups/b2.dump", START)
    assert "bytesRead" not in status_now
    assert "progress" not in status_now
    assert _events(transport)[-1] == (str(error.reason), "Warning", "Restore")


# ---- through the runtime: SIGTERM while the job runs is recorded as Interrupted, exit 143


class SigtermOnSecretRead(FakeTransport):
    """The fake, sending this process SIGTERM when the job reads its first Secret (in its preflight)."""

    def get_secret_data(self, namespace: str, name: str) -> dict[str, str]:
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises Interrupted before kill() returns
        return super().get_secret_data(namespace, name)


BACKUP_SPEC = {
    "database": {"secretRef": {"name": "cellar-database"}},
    "storage": {
        "bucket": "some-bucket",
        "credentials": {"accessKeyId": {"name": "s", "key": "id"}, "secretAccessKey": {"name": "s", "key": "key"}},
    },
}


ARCHIVE_SPEC = {
    "database": {"secretRef": {"name": "cellar-database"}},
    "storage": BACKUP_SPEC["storage"],
    "table": {"name": "orders"},
    "timestampColumn": "created_at",
    "olderThan": "30d",
}
RESTORE_SPEC = {"backup": {"name": "nightly"}, "target": {"secretRef": {"name": "cellar-restore-target"}}}


@pytest.mark.parametrize(
    ("job", "kind", "spec", "outcome", "earlier"),
    [
        pytest.param(BackupJob(), "DatabaseBackup", BACKUP_SPEC, "BackupSucceeded", EARLIER_BACKUP, id="backup"),
        pytest.param(ArchiveJob(), "TableArchive", ARCHIVE_SPEC, "ArchiveSucceeded", EARLIER_ARCHIVE, id="archive"),
        pytest.param(RestoreJob(), "DatabaseRestore", RESTORE_SPEC, "Succeeded", EARLIER_RESTORE, id="restore"),
    ],
)
def test_sigterm_during_a_run_is_recorded_as_interrupted_through_the_runtime(
    job: Job,
    kind: str,
    spec: dict[str, Any],
    outcome: str,
    earlier: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime, "TERMINATION_LOG", tmp_path / "termination-log")
    transport = SigtermOnSecretRead(kind, earlier)
    transport.objects["orders"]["spec"] = spec
    transport.objects["nightly"] = {**transport.objects["orders"], "kind": "DatabaseBackup", "spec": BACKUP_SPEC}
    code = run_job(job, ["--name", "orders", "--namespace", "prod"], transport_factory=lambda _: transport)
    assert code == 143
    (failed,) = transport.patches  # SIGTERM came in the preflight: the failure is the run's one write
    assert _conditions(failed)[outcome] == ("False", "Interrupted")
    written = transport.status
    if "lastRun" in earlier:
        assert set(written["lastRun"]) == {"runId", "startTime", "completionTime", "reason", "message"}
        assert written["lastRun"]["reason"] == "Interrupted"
    else:  # a DatabaseRestore: its own fields, none of the earlier restore's key and bytes
        assert set(written) & {"key", "bytesRead"} == set()
    assert _events(transport) == [("Interrupted", "Warning", transport.events[0]["action"])]
