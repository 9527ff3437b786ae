"""How a DatabaseBackup's status reads: Ready from the newest good backup's age, sizes for people."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from common.conditions import Condition, format_time
from common.reasons import Reason
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


def backup_fields(
    manifest: Manifest, duration_seconds: float, verified: bool, stale_after: timedelta
) -> dict[str, Any]:
    return {
        "lastSuccessfulBackup": {
            "key": manifest.data_key,
            "manifestKey": manifest.manifest_key,
            "sizeBytes": manifest.bytes_stored,
            "size": human_size(manifest.bytes_stored),
            "sha256": manifest.sha256,
            "startTime": manifest.start_time,
            "completionTime": manifest.end_time,
            "durationSeconds": round(duration_seconds, 3),
            "verified": verified,
            "serverVersion": manifest.server_version,
            "pgDumpVersion": manifest.pg_dump_version,
        },
        "freshUntil": format_time(manifest.completed_at + stale_after),
    }
