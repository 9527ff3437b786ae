"""How a DatabaseBackup's status reads: Ready from the newest good backup's age, sizes for people."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from common.conditions import Condition, format_time
from common.reasons import Reason
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
        return Condition("Ready", "False", reason, message)
    if newest is None:
        return Condition("Ready", "False", Reason.NO_BACKUP, "no complete backup in storage yet")
    age = now - newest.completed_at
    if age > stale_after:
        return Condition(
            "Ready",
            "False",
            Reason.STALE,
            f"the newest backup ({newest.backup_id}) is {_hours(age)} old, "
            f"more than staleAfter ({_hours(stale_after)})",
        )
    return Condition(
        "Ready",
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
