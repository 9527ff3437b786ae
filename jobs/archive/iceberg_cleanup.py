"""Snapshot expiry and orphan files of an archive's Iceberg table.

Expiry removes snapshots older than spec.iceberg.maintenance.snapshotRetention from the table's metadata (one
catalog commit); the current snapshot always stays, and so does every snapshot of a cellar batch the ledger has
not recorded: the next archive run needs it to find that batch's rows (iceberg_batches.resolve_unrecorded).

Files are deleted only after that commit, and only those that no snapshot left, no metadata file of the table's
log and no statistics file references, found by listing the table's location in the store. Those younger than the
grace period stay: a writer's files are unreferenced until its commit. So a kill at any point leaves the table
whole: at worst files no snapshot needs, which the next run deletes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from common.errors import CellarError, PermanentError, RetryableError
from common.failpoints import failpoint
from common.reasons import Reason
from common.storage import ObjectStore
from jobs.archive.iceberg import BATCH_PROPERTY, RELATION_PROPERTY, IcebergTable

log = logging.getLogger(__name__)

MANIFEST_READERS = 8  # manifests read at once while collecting the referenced files
BEFORE_DELETES = "archive.iceberg-cleanup-before-deletes"
LISTING_ATTEMPTS = 3  # times the referenced files are collected again when another writer commits meanwhile


@dataclass(frozen=True)
class CleanupScope:
    """`recorded`: the batch ids the ledger holds; `now`: the run's clock for retention and grace."""

    iceberg: IcebergTable
    store: ObjectStore
    recorded: set[str]
    now: datetime
    retention: timedelta
    grace: timedelta


@dataclass
class Cleaned:
    snapshots_expired: int = 0
    kept_unrecorded: int = 0  # old snapshots kept because the ledger has not recorded their batch yet
    files_deleted: int = 0
    files_kept_young: int = 0  # unreferenced, but younger than the grace period
    files_locked: int = 0  # unreferenced, but an object lock holds them


def expirable(table: Any, scope: CleanupScope, cleaned: Cleaned) -> list[int]:
    """The ids of the snapshots to expire: older than the retention, not a branch's or tag's head (the current
    one is main's), not a batch of this source the ledger lacks, and not another source's batch (its own
    maintenance knows its ledger)."""
    protected = {ref.snapshot_id for ref in table.metadata.refs.values()}
    cutoff_ms = int((scope.now - scope.retention).timestamp() * 1000)
    chosen = []
    for snapshot in table.metadata.snapshots:
        if snapshot.timestamp_ms >= cutoff_ms or snapshot.snapshot_id in protected:
            continue
        summary = snapshot.summary
        batch = summary.get(BATCH_PROPERTY) if summary is not None else None
        if batch:
            if summary.get(RELATION_PROPERTY) != scope.iceberg.relation:
                continue
            if batch not in scope.recorded:
                cleaned.kept_unrecorded += 1
                continue
        chosen.append(snapshot.snapshot_id)
    return chosen


def expire(scope: CleanupScope, cleaned: Cleaned) -> None:
    """One catalog commit that removes the expirable snapshots from the table's metadata (no file is deleted)."""
    table = scope.iceberg.load()
    chosen = expirable(table, scope, cleaned)
    if not chosen:
        return
    table.maintenance.expire_snapshots().by_ids(chosen).commit()
    cleaned.snapshots_expired = len(chosen)
    log.info("Iceberg snapshots expired", extra={"snapshots": len(chosen), "kept_unrecorded": cleaned.kept_unrecorded})


def _manifest_files(io: Any, manifest: Any) -> list[str]:
    return [str(entry.data_file.file_path) for entry in manifest.fetch_manifest_entry(io, discard_deleted=True)]


def referenced_files(table: Any) -> set[str]:
    """Every path the table's metadata references: the current and logged metadata files, statistics files, and
    each snapshot's manifest list, manifests and the data (and delete) files they hold."""
    metadata, io = table.metadata, table.io
    paths = {str(table.metadata_location), *(str(e.metadata_file) for e in metadata.metadata_log)}
    paths |= {str(s.statistics_path) for s in metadata.statistics}
    paths |= {str(s.statistics_path) for s in getattr(metadata, "partition_statistics", [])}
    manifests: dict[str, Any] = {}
    # Each snapshot's manifest list and each manifest is a GET: read side by side, not one after another.
    with ThreadPoolExecutor(MANIFEST_READERS, thread_name_prefix="iceberg-manifests") as pool:
        lists = pool.map(lambda snapshot: snapshot.manifests(io), metadata.snapshots)
        for snapshot, listed in zip(metadata.snapshots, lists, strict=True):
            paths.add(str(snapshot.manifest_list))
            for manifest in listed:
                manifests.setdefault(str(manifest.manifest_path), manifest)
        paths |= set(manifests)
        for files in pool.map(lambda m: _manifest_files(io, m), manifests.values()):
            paths.update(files)
    return paths


def _store_key(path: str, bucket: str) -> str | None:
    """The store's key of a file path of the table (s3://bucket/key), or None where it is in another bucket."""
    for scheme in ("s3://", "s3a://", "s3n://"):
        if path.startswith(f"{scheme}{bucket}/"):
            return path[len(scheme) + len(bucket) + 1 :]
    return None


def orphans(scope: CleanupScope, cleaned: Cleaned) -> list[str]:
    """The keys under the table's location that nothing references and that are older than the grace period.
    Collected again where another writer committed while the store was listed."""
    store = scope.store
    for _ in range(LISTING_ATTEMPTS):
        table = scope.iceberg.load()
        prefix = _store_key(str(table.metadata.location).rstrip("/") + "/", store.bucket)
        if prefix is None:
            log.warning(
                "the Iceberg table's location is not in spec.storage's bucket; its orphans stay",
                extra={"location": table.metadata.location},
            )
            return []
        referenced = {k for k in (_store_key(p, store.bucket) for p in referenced_files(table)) if k}
        listed = [o for o in store.list_objects(prefix) if o.key not in referenced]
        if scope.iceberg.load().metadata_location == table.metadata_location:
            break
    else:
        raise RetryableError(
            f"the Iceberg table {scope.iceberg.iceberg.identifier} changed under each of {LISTING_ATTEMPTS} "
            "listings of its files (other writers); nothing was deleted, the next run tries again",
            reason=Reason.CATALOG_CONFLICT,
        )
    young = [o for o in listed if o.last_modified > scope.now - scope.grace]
    cleaned.files_kept_young = len(young)
    return sorted(o.key for o in listed if o.last_modified <= scope.now - scope.grace)


def delete_files(store: ObjectStore, keys: Iterable[str], cleaned: Cleaned) -> None:
    """Delete what no snapshot references; the first delete the store refuses stops the run with the reason (the
    catalog is already consistent: the files left are the next run's orphans)."""
    keys = list(keys)
    for done, key in enumerate(keys):
        try:
            lock = store.delete(key)
        except CellarError as exc:
            left = len(keys) - done
            detail = (
                f"the store refused to delete {store.url(key)}, a file no snapshot of the Iceberg table references "
                f"({exc}); the catalog's commit came first, so the table is whole, and {left} unreferenced files "
                "stay until a run may delete them"
            )
            if isinstance(exc, RetryableError):
                raise RetryableError(detail, reason=exc.reason) from None
            raise PermanentError(
                f"{detail}: allow the credentials to delete objects under the archive's prefix "
                "(s3:DeleteObject), or set spec.iceberg.maintenance.enabled: false",
                reason=Reason.DELETE_REFUSED,
            ) from None
        if lock is None:
            cleaned.files_deleted += 1
        else:
            cleaned.files_locked += 1


def clean(scope: CleanupScope) -> Cleaned:
    """Expire, then delete what nothing references any more (the order the module doc gives)."""
    cleaned = Cleaned()
    expire(scope, cleaned)
    unreferenced = orphans(scope, cleaned)
    failpoint(BEFORE_DELETES)
    delete_files(scope.store, unreferenced, cleaned)
    if unreferenced:
        log.info("unreferenced Iceberg files deleted", extra={"files": cleaned.files_deleted})
    return cleaned
