"""Which backups a retention policy keeps: a pure function, so a whole calendar can be tested.

Semantics follow restic/K8up (`keep-last`, `keep-daily`, ...): a backup kept by any rule stays;
daily/weekly/monthly keep the newest backup of each of the last N periods that have a backup. The
newest complete backup is always kept, whatever the policy says.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from jobs.backup.catalog import Manifest
from jobs.backup.settings import RetentionPolicy


def _newest_per_period(backups: Sequence[Manifest], count: int, period: Callable[[datetime], object]) -> set[str]:
    kept: set[str] = set()
    seen: list[object] = []
    for manifest in backups:  # newest first
        bucket = period(manifest.completed_at)
        if bucket in seen:
            continue
        if len(seen) >= count:
            break
        seen.append(bucket)
        kept.add(manifest.backup_id)
    return kept


def backups_to_keep(backups: Sequence[Manifest], policy: RetentionPolicy, now: datetime) -> set[str]:
    """Ids of the backups `policy` keeps; `backups` must be complete ones, newest first."""
    return set(retention_reasons(backups, policy, now))


def retention_reasons(backups: Sequence[Manifest], policy: RetentionPolicy, now: datetime) -> dict[str, list[str]]:
    """The backups `policy` keeps, each with the rules that keep it (`newest`, `keepLast`, `maxAge`,
    `keepDaily`, `keepWeekly`, `keepMonthly`, or `no rule set`); `backups` complete, newest first."""
    if not backups:
        return {}
    if not policy.deletes_anything:
        return {b.backup_id: ["no rule set"] for b in backups}
    reasons: dict[str, list[str]] = {backups[0].backup_id: ["newest"]}

    def keep(ids: set[str], rule: str) -> None:
        for backup in backups:  # newest first, so each list reads in the same order
            if backup.backup_id in ids:
                reasons.setdefault(backup.backup_id, []).append(rule)

    if policy.keep_last:
        keep({b.backup_id for b in backups[: policy.keep_last]}, "keepLast")
    if policy.max_age is not None:
        max_age = policy.max_age
        keep({b.backup_id for b in backups if now - b.completed_at < max_age}, "maxAge")
    if policy.keep_daily:
        keep(_newest_per_period(backups, policy.keep_daily, lambda t: t.date()), "keepDaily")
    if policy.keep_weekly:
        keep(_newest_per_period(backups, policy.keep_weekly, lambda t: t.isocalendar()[:2]), "keepWeekly")
    if policy.keep_monthly:
        keep(_newest_per_period(backups, policy.keep_monthly, lambda t: (t.year, t.month)), "keepMonthly")
    return reasons
