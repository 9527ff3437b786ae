"""How a DatabaseBackup's status reads: Ready from the newest good backup's age, sizes for people."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Self

from common.conditions import Condition, ConditionType, format_time
from common.reasons import Reason
from common.run_status import RunShape
from common.status import RunRecord, StatusRecord
from jobs.backup.catalog import Manifest


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def ready_condition(
    newest: Manifest | None, stale_after: timedelta, now: datetime, failure: tuple[Reason, str] | None = None
) -> Condition:
    """Ready: the last run did not fail and the newest complete backup is younger than staleAfter."""
    if failure is not None:
        reason, message = failure
        return Condition(ConditionType.READY, "False", reason, message)
    if newest is None:
        return Condition(ConditionType.READY, "False", Reason.NO_BACKUP, "no complete backup in storage yet")
    age = now - newest.completed_at
    if age > stale_after:
        return Condition(
            ConditionType.READY,
            "False",
            Reason.STALE,
            f"the newest backup ({newest.backup_id}) is {_hours(age)} old, "
            f"more than staleAfter ({_hours(stale_after)})",
        )
    return Condition(
        ConditionType.READY,
        "True",
        Reason.COMPLETED,
        f"newest backup {newest.backup_id} completed {format_time(newest.completed_at)}; stale after "
        f"{format_time(newest.completed_at + stale_after)}",
    )


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f}h"


@dataclass(frozen=True)
class BackupRun(RunRecord):
    """A DatabaseBackup's `lastRun`."""

    written_to = (("databasebackups.yaml", "lastRun"),)

    key: str | None = None


@dataclass(frozen=True)
class SuccessfulBackup(StatusRecord):
    """`lastSuccessfulBackup`. Written as a merge patch: a field left None keeps what status has."""

    written_to = (("databasebackups.yaml", "lastSuccessfulBackup"),)

    key: str
    manifest_key: str | None = None
    databases: list[str] | None = None
    size_bytes: int | None = None
    raw_size_bytes: int | None = None
    size: str | None = None
    sha256: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    duration_seconds: float | None = None
    verified: bool | None = None
    server_version: str | None = None
    pg_dump_version: str | None = None


@dataclass(frozen=True)
class Verification(StatusRecord):
    """`lastVerification`: the last restore test."""

    written_to = (("databasebackups.yaml", "lastVerification"),)

    time: str
    key: str
    result: str  # Passed or Failed
    message: str
    passed: bool  # result as a boolean: what kube-state-metrics can turn into a number

    @classmethod
    def of(cls, time: str, key: str, passed: bool, message: str) -> Verification:
        return cls(time, key, "Passed" if passed else "Failed", message, passed)


@dataclass(frozen=True)
class RestoreOutcome(StatusRecord):
    """A DatabaseRestore's own status fields (beside its conditions): the run of the generation it restores."""

    written_to = (("databaserestores.yaml", ""),)
    written_whole = True

    key: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    bytes_read: int | None = None

    @classmethod
    def first(cls, run_id: str, start_time: str) -> RestoreOutcome:
        """The record of a run that has not found its backup yet."""
        return cls(start_time=start_time)

    def ended(self, at: str, reason: Reason, message: str) -> Self:
        return replace(self, completion_time=at)  # the reason and message are in the Succeeded condition


# A DatabaseBackup's runs: Progressing while one runs, BackupSucceeded and Ready when it ends, `lastRun`.
BACKUP_RUNS = RunShape(
    "Backup", ConditionType.BACKUP_SUCCEEDED, progressing=True, ready=True, progress=True, first_record=BackupRun
)
# A restore test of an existing backup: Verified, and `lastVerification` (beside a backup run's status).
VERIFY_RUNS = RunShape("Verify", ConditionType.VERIFIED)
# A DatabaseRestore: Succeeded (Unknown while it runs), and its own fields at the top of its status.
RESTORE_RUNS = RunShape("Restore", ConditionType.SUCCEEDED, progress=True, first_record=RestoreOutcome.first)


def backup_fields(
    manifest: Manifest, duration_seconds: float, verified: bool, stale_after: timedelta
) -> dict[str, Any]:
    return {
        "lastSuccessfulBackup": SuccessfulBackup(
            key=manifest.data_key,
            manifest_key=manifest.manifest_key,
            databases=manifest.databases,
            size_bytes=manifest.bytes_stored,
            raw_size_bytes=manifest.bytes_raw,
            size=human_size(manifest.bytes_stored),
            sha256=manifest.dumps[0].sha256 if len(manifest.dumps) == 1 else "",
            start_time=manifest.start_time,
            completion_time=manifest.end_time,
            duration_seconds=round(duration_seconds, 3),
            verified=verified,
            server_version=manifest.server_version,
            pg_dump_version=manifest.pg_dump_version,
        ).to_status(),
        "freshUntil": format_time(manifest.completed_at + stale_after),
    }


@dataclass(frozen=True)
class LeftoverDatabase(StatusRecord):
    """An item of `leftoverDatabases`: a restore test's scratch database that could not be dropped in time."""

    written_to = (("databasebackups.yaml", "leftoverDatabases[]"),)

    name: str
    server: str
    since: str
    why: str

    @classmethod
    def from_status(cls, item: dict[str, Any]) -> LeftoverDatabase:
        return cls(
            str(item.get("name", "")), str(item.get("server", "")), str(item.get("since", "")), str(item.get("why", ""))
        )
