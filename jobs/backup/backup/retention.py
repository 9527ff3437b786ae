"""Which backups a retention policy keeps (pure functions, so a whole calendar can be tested), and
applying it to storage (apply_retention).

Semantics follow restic/K8up (`keep-last`, `keep-daily`, ...): a backup kept by any rule stays;
daily/weekly/monthly keep the newest backup of each of the last N periods that have a backup. The
newest complete backup is always kept, whatever the policy says.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from common.failpoints import failpoint
from common.storage import ObjectStore
from jobs.backup.catalog import DATA_DIR, Manifest
from jobs.backup.inventory import Inventory, take_inventory
from jobs.backup.settings import RetentionPolicy

log = logging.getLogger(__name__)


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


@dataclass
class RetentionOutcome:
    """What retention left: the complete backups, the keys it deleted (or, in a dry run, would), and the
    backups it let go but an object lock keeps, with until when."""

    inventory: Inventory
    deleted: list[str]
    locked: dict[str, str]  # backup id -> "kept until ... by object lock"

    def describe_locked(self) -> str:
        return "; ".join(f"backup {backup} {why}" for backup, why in sorted(self.locked.items()))


def apply_retention(
    store: ObjectStore, readable: frozenset[str], policy: RetentionPolicy, now: datetime, *, newest: str | None = None
) -> RetentionOutcome:
    """Delete what the policy lets go, and leftovers older than its safety window. A manifest goes before
    its object, so a crash in between leaves an orphan object (cleaned later), never a manifest without
    its data. A backup whose manifest an object lock still holds stays a complete backup, and is deleted
    by the first run after its lock ends."""
    inventory = take_inventory(store, readable, newest=newest)
    keep = backups_to_keep(inventory.backups, policy, now)
    doomed = [m for m in inventory.backups if m.backup_id not in keep]
    cutoff = now - policy.incomplete_after
    leftovers = [o.key for o in inventory.orphan_data + inventory.broken_manifests if o.last_modified < cutoff]
    outcome = RetentionOutcome(inventory, [], {})
    if policy.dry_run:
        outcome.deleted = [key for m in doomed for key in (m.manifest_key, *m.object_keys)] + leftovers
        log.info("retention dry run: would delete", extra={"keys": outcome.deleted})
        return outcome
    for manifest in doomed:
        for key in (manifest.manifest_key, *manifest.object_keys):
            lock = store.delete(key)
            if lock is not None:  # the manifest: the backup stays whole; its object: a leftover for later
                if key == manifest.manifest_key:
                    outcome.locked[manifest.backup_id] = lock.describe()
                break
            outcome.deleted.append(key)
            failpoint("backup.retention")
    outcome.deleted += [key for key in leftovers if store.delete_leftover(key)]
    if outcome.deleted:
        log.info("retention deleted", extra={"keys": outcome.deleted})
    if outcome.locked:
        log.info("retention let these backups go, but object lock keeps them", extra={"backups": outcome.locked})
    abort_stale_uploads(store, cutoff)
    inventory.backups = [m for m in inventory.backups if m.backup_id in keep or m.backup_id in outcome.locked]
    return outcome


def abort_stale_uploads(store: ObjectStore, cutoff: datetime) -> None:
    """Multipart uploads a killed run left open (SIGKILL gives no chance to abort) are aborted here."""
    for upload in store.pending_uploads(store.key(DATA_DIR) + "/"):
        if upload.initiated < cutoff:
            store.abort_upload(upload)
            log.info("aborted a stale multipart upload", extra={"key": upload.key})
