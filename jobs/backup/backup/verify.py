"""Restore tests: restore a backup into a scratch database and compare every table's row count."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace

from psycopg import sql

from common.db import connect, drop_database
from common.errors import InvalidSpec, RowCountMismatch
from common.failpoints import failpoint
from common.secrets import DatabaseSettings
from common.storage import ObjectStore
from jobs.backup.catalog import MANIFEST_DIR, QUARANTINE_DIR, Manifest
from jobs.backup.restore.directory import Staging, restore_directory
from jobs.backup.restore.plan import BackupSource, RestoreTarget, plan_restore
from jobs.backup.restore.stream import check_decryptable, restore_from_storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerificationResult:
    tables: int
    rows: int
    restored_with: str  # "pg_restore 15.19 into PostgreSQL 15.19"


@dataclass(frozen=True)
class ScratchLeft:
    """A scratch database the restore test could not drop in time, and why."""

    name: str
    why: str


def verify_backup(
    source: BackupSource,
    server: DatabaseSettings,
    scratch_name: str,
    *,
    left: list[ScratchLeft] | None = None,
    staging: Staging | None = None,
) -> VerificationResult:
    """Restore each database of the backup in turn into a new scratch database on `server` (the first named
    `scratch_name`), count every table's rows, drop it. A scratch database that cannot be dropped in time is
    added to `left`, also when the test fails. A directory dump is staged in `staging` first (spec.staging.path)."""
    manifest = source.manifest
    plan = plan_restore(server, manifest)
    check_decryptable(source, field="spec.encryption.identitySecretRef")
    tables = rows = 0
    left = [] if left is None else left
    for number, dump in enumerate(manifest.dumps):
        # The next database takes a name of its own while the one before is left behind.
        name = scratch_name if not left else f"{scratch_name[:58]}_{number}"
        scratch = RestoreTarget(replace(server, dbname=name), plan, ("--no-owner", "--no-privileges"))
        mismatches = _restore_and_count(
            source.for_database(dump.database), scratch, ScratchServer(server, left, staging)
        )
        if mismatches:
            shown = "; ".join(mismatches[:10]) + (f"; and {len(mismatches) - 10} more" if len(mismatches) > 10 else "")
            where = f" (database {dump.database})" if len(manifest.dumps) > 1 else ""
            raise RowCountMismatch(f"backup {manifest.backup_id}{where} restored with different row counts: {shown}")
        tables += len(dump.tables)
        rows += sum(t.rows for t in dump.tables)
    return VerificationResult(tables, rows, plan.describe())


@dataclass(frozen=True)
class ScratchServer:
    """Where a restore test makes its scratch databases, the list of those it could not drop, and the volume a
    directory dump is staged on."""

    server: DatabaseSettings
    left: list[ScratchLeft]
    staging: Staging | None


def _restore_and_count(source: BackupSource, scratch: RestoreTarget, on: ScratchServer) -> list[str]:
    """Restore the one dump of `source` into the scratch database (made on `on.server` here, dropped after);
    the tables whose rows differ."""
    name = scratch.database.dbname
    server, left = on.server, on.left
    if source.manifest.dump.directory and on.staging is None:
        raise InvalidSpec(
            f"backup {source.manifest.backup_id} is a directory dump: its restore test stages its files first; "
            "give a volume in spec.staging.path"
        )
    with connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        if on.staging is not None and source.manifest.dump.directory:
            restore_directory(source, scratch, on.staging, lambda _: None)
        else:
            restore_from_storage(source, scratch)
        failpoint("backup.scratch-restored")
        mismatches = []
        with connect(scratch.database) as conn:
            for table in source.manifest.dump.tables:
                query = sql.SQL("SELECT count(*) FROM {}.{}").format(
                    sql.Identifier(table.schema), sql.Identifier(table.name)
                )
                row = conn.execute(query).fetchone()
                restored = int(str(row[0])) if row else 0
                if restored != table.rows:
                    mismatches.append(f"{table.schema}.{table.name}: {restored} restored, {table.rows} in manifest")
        return mismatches
    finally:
        why = drop_database(server, name, wait_seconds=scratch_drop_wait())
        if why is not None:
            log.warning(
                "could not drop the scratch database; the next run drops it",
                extra={"database": name, "why": why},
            )
            left.append(ScratchLeft(name, why))


def scratch_drop_wait() -> float:
    """How long a restore test waits for others to leave its scratch database (CELLAR_SCRATCH_DROP_WAIT_SECONDS)."""
    try:
        return max(0.0, float(os.environ.get("CELLAR_SCRATCH_DROP_WAIT_SECONDS", "60")))
    except ValueError:
        return 60.0


def quarantine(store: ObjectStore, manifest: Manifest, why: str) -> str:
    """Move a manifest out of manifests/ so the backup no longer counts as complete; keep it for audit.

    The copy in rejected/ is what takes the backup out of the catalog (take_inventory), so an object lock
    that forbids deleting the manifest changes nothing: it stays until its lock ends, and a later run's
    retention deletes it as a leftover."""
    target = manifest.manifest_key.replace(f"/{MANIFEST_DIR}/", f"/{QUARANTINE_DIR}/", 1)
    if target == manifest.manifest_key:
        target = store.key(QUARANTINE_DIR, manifest.manifest_key.rsplit("/", 1)[-1])
    store.put_bytes(target, manifest.to_bytes())
    lock = store.delete(manifest.manifest_key)
    log.warning(
        "backup quarantined",
        extra={
            "manifest": manifest.manifest_key,
            "moved_to": target,
            "why": why,
            **({"manifest_kept": lock.describe()} if lock else {}),
        },
    )
    return target
