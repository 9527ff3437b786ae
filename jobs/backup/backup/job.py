"""The backup run, top to bottom: settings, preflight, dump, publish, verify, retention, status."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from common.conditions import Condition, ConditionType, format_time
from common.db import drop_database
from common.encryption import FORMAT as ENCRYPTION_FORMAT
from common.encryption import Identities, fingerprint
from common.errors import BackupUnsound, CellarError
from common.failpoints import failpoint
from common.kube import DATABASE_BACKUP
from common.reasons import Reason
from common.run_status import RunStatus
from common.runtime import RunContext
from common.secrets import DatabaseSettings
from common.storage import ObjectStore
from jobs.backup.backup.dumps import data_key_for, discard, dump_databases, dump_server_globals
from jobs.backup.backup.preflight import APPLICATION, Preflight, describe_choice, preflight, released_on_failure
from jobs.backup.backup.retention import RetentionOutcome, apply_retention
from jobs.backup.backup.verify import ScratchLeft, VerificationResult, quarantine, verify_backup
from jobs.backup.catalog import (
    MANIFEST_DIR,
    QUARANTINE_DIR,
    Encryption,
    Manifest,
    backup_id,
)
from jobs.backup.inventory import find_backup, take_inventory
from jobs.backup.restore.directory import Staging
from jobs.backup.restore.plan import BackupSource
from jobs.backup.settings import BackupSettings, RetentionPolicy, parse_backup_spec
from jobs.backup.status import (
    BACKUP_RUNS,
    VERIFY_RUNS,
    BackupRun,
    LeftoverDatabase,
    SuccessfulBackup,
    Verification,
    backup_fields,
    human_size,
    ready_condition,
)

log = logging.getLogger(__name__)


def restore_test(
    ctx: RunContext,
    store: ObjectStore,
    manifest: Manifest,
    database: DatabaseSettings,
    settings: BackupSettings,
    identities: Identities | None,
) -> tuple[VerificationResult, str]:
    """Restore-test `manifest` on `database`'s server (the source's, or spec.verify.target's). A failure is
    recorded in status before it is raised, and a backup found unsound (BackupUnsound) is quarantined first.
    Returns the result and a note on scratch databases left behind ("" when none), which the next run drops."""
    still_left = _drop_earlier_leftovers(ctx, database, settings)
    scratch = f"{settings.scratch_prefix}{ctx.run_id}"[:63]
    left: list[ScratchLeft] = []
    try:
        staging = Staging(settings.staging_path, settings.parallelism) if settings.staging_path else None
        result = verify_backup(BackupSource(store, manifest, identities), database, scratch, left=left, staging=staging)
    except CellarError as error:
        if isinstance(error, BackupUnsound):
            quarantine(store, manifest, str(error))
            error.message += f" (its manifest was moved to {QUARANTINE_DIR}/; the backup no longer counts)"
        error.message += _left_note(left)
        ctx.update_status(
            [Condition(ConditionType.VERIFIED, "False", error.reason, str(error))],
            fields={
                "lastVerification": Verification.of(
                    format_time(datetime.now(UTC)), manifest.data_key, False, str(error)
                ).to_status(),
                **_leftover_field(ctx, still_left, left, database),
            },
        )
        raise
    log.info(
        "restore test passed",
        extra={"tables": result.tables, "rows": result.rows, "restored_with": result.restored_with},
    )
    fields = _leftover_field(ctx, still_left, left, database)
    if fields:
        ctx.update_status(fields=fields)
    return result, _left_note(left)


def _drop_earlier_leftovers(
    ctx: RunContext, server: DatabaseSettings, settings: BackupSettings
) -> list[LeftoverDatabase]:
    """Drop the scratch databases earlier runs recorded as left (status.leftoverDatabases); those still there."""
    recorded = (ctx.resource.get("status") or {}).get("leftoverDatabases") or []
    still: list[LeftoverDatabase] = []
    for item in recorded:
        leftover = LeftoverDatabase.from_status(item)
        if not leftover.name.startswith(settings.scratch_prefix):  # never drop what a restore test did not make
            continue
        why = drop_database(server, leftover.name, wait_seconds=5)
        if why is None:
            log.info("dropped a scratch database an earlier run left", extra={"database": leftover.name})
        else:
            still.append(replace(leftover, why=why))
    return still


def _leftover_field(
    ctx: RunContext, still: list[LeftoverDatabase], left: list[ScratchLeft], server: DatabaseSettings
) -> dict[str, Any]:
    """status.leftoverDatabases as it is now: {} when it had none and has none."""
    now = format_time(datetime.now(UTC))
    items = still + [LeftoverDatabase(s.name, server.describe(), now, s.why) for s in left]
    had = (ctx.resource.get("status") or {}).get("leftoverDatabases")
    if not items and not had:
        return {}
    return {"leftoverDatabases": [item.to_status() for item in items] or None}


def _left_note(left: list[ScratchLeft]) -> str:
    return "".join(f"; scratch database {s.name} could not be dropped ({s.why}): the next run drops it" for s in left)


def _dry_run(settings: BackupSettings, checked: Preflight) -> str:
    """What a dry run checked, and what retention would delete; nothing is written."""
    store, facts, tools = checked.store, checked.server, checked.tools
    planned = apply_retention(store, checked.claimed.readable, _as_dry_run(settings.retention), datetime.now(UTC))
    return (
        f"dry run: resource, Secrets, {checked.database.describe()} ({facts.version}), {store.url()} "
        f"and {tools.describe('pg_dump')} all usable; {len(planned.inventory.backups)} complete backups; "
        f"retention would delete {len(planned.deleted)} objects"
        + (f"; would dump {describe_choice(settings, checked)}" if settings.databases else "")
    )


def _unreadable_here(settings: BackupSettings, checked: Preflight) -> str:
    """What the message adds when the backups are encrypted to an identity the cluster does not hold."""
    if not checked.recipients or (settings.encryption is not None and settings.encryption.identity is not None):
        return ""
    log.warning(
        "backups are encrypted to recipients whose identity is not in the cluster; no restore test can read them",
        extra={"recipients": [fingerprint(r) for r in checked.recipients]},
    )
    return (
        "; encrypted with no identity in the cluster (spec.encryption.identitySecretRef), so no restore "
        "test can read these backups: only the holder of the identity can"
    )


def _publish(
    ctx: RunContext, settings: BackupSettings, checked: Preflight, identifier: str, started: datetime
) -> Manifest:
    """Dump every chosen database (and the globals), then write the manifest: the backup exists from then on.
    A failure before the manifest removes what the run wrote."""
    store, facts = checked.store, checked.server
    written: list[str] = []
    try:
        dumps = dump_databases(ctx, store, settings, checked, identifier, written)
        globals_object = (
            dump_server_globals(store, settings, checked, identifier, written) if settings.globals else None
        )
    except BaseException:
        discard(store, written)  # a run is a backup only when every database it names was dumped
        raise
    manifest = Manifest(
        backup_id=identifier,
        dumps=dumps,
        server_version=facts.version,
        pg_dump_version=checked.tools.describe("pg_dump"),
        start_time=format_time(started),
        end_time=format_time(datetime.now(UTC)),
        compression=settings.compression.algorithm,
        compression_level=settings.compression.level,
        generation=ctx.generation,
        resource=f"{ctx.ref.namespace}/{ctx.ref.name}",
        run_id=ctx.run_id,
        standby=facts.standby,
        encryption=(
            Encryption(ENCRYPTION_FORMAT, tuple(fingerprint(r) for r in checked.recipients))
            if checked.recipients
            else None
        ),
        globals=globals_object,
        server_wide=settings.databases is not None,
        manifest_key=store.key(MANIFEST_DIR, f"{identifier}.json"),
    )
    failpoint("backup.before-manifest")
    store.put_bytes(manifest.manifest_key, manifest.to_bytes())  # the backup exists from here on
    log.info(
        "backup published",
        extra={
            "manifest": manifest.manifest_key,
            "databases": manifest.databases,
            "bytes_raw": manifest.bytes_raw,
            "bytes_stored": manifest.bytes_stored,
            "seconds": round((datetime.now(UTC) - started).total_seconds(), 3),
            "tables": sum(len(d.tables) for d in dumps),
        },
    )
    return manifest


def _restore_test_condition(
    ctx: RunContext, settings: BackupSettings, checked: Preflight, manifest: Manifest
) -> Condition:
    """Restore-test the new backup (spec.verify); the Verified condition it passed with."""
    tested, left_note = restore_test(
        ctx, checked.store, manifest, checked.restore_test_server, settings, checked.identities
    )
    return Condition(
        ConditionType.VERIFIED,
        "True",
        Reason.RESTORE_TEST_PASSED,
        f"backup {manifest.backup_id} ({manifest.describe_databases()}) restored with {tested.restored_with} "
        f"and every table's row count matched{left_note}",
    )


def _retain(
    args: argparse.Namespace, settings: BackupSettings, checked: Preflight, identifier: str
) -> RetentionOutcome:
    """Apply the retention policy (the run's own backup first among equal times), unless --skip-retention."""
    readable = checked.claimed.readable
    if args.skip_retention:
        return RetentionOutcome(take_inventory(checked.store, readable, newest=identifier), [], {})
    return apply_retention(checked.store, readable, settings.retention, datetime.now(UTC), newest=identifier)


def _summary(
    settings: BackupSettings, checked: Preflight, manifest: Manifest, duration: float, retained: RetentionOutcome
) -> str:
    return (
        f"backup {manifest.backup_id} of {manifest.describe_databases()} on PostgreSQL {checked.server.version} with "
        f"{checked.tools.describe('pg_dump')}: "
        f"{human_size(manifest.bytes_stored)} stored "
        f"({human_size(manifest.bytes_raw)} raw, {settings.compression.algorithm}"
        f"{f', age-encrypted to {len(checked.recipients)} recipients' if checked.recipients else ''}"
        f"{', ' + manifest.globals.describe() if manifest.globals else ''}) "
        f"in {duration:.1f}s; "
        f"{len(retained.deleted)} old objects deleted"
        + (f"; {retained.describe_locked()}" if retained.locked else "")
        + _passwords_note(manifest)
        + "".join(f"; {note}" for note in checked.notes)
    )


def _passwords_note(manifest: Manifest) -> str:
    """Why the roles went without passwords, when the spec did not ask for that."""
    because = manifest.globals.without_passwords_because if manifest.globals else ""
    return f"; roles without passwords: {because}" if because else ""


class BackupJob:
    name = "backup"
    kind = DATABASE_BACKUP
    application_name = APPLICATION
    description = "Back up one PostgreSQL database to S3-compatible storage, as its DatabaseBackup says."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--skip-retention", action="store_true", help="write a backup, delete nothing")

    def run(self, ctx: RunContext, args: argparse.Namespace) -> str:
        settings = parse_backup_spec(ctx.spec)
        checked = preflight(ctx, settings, restore_test=settings.verify)
        with released_on_failure(ctx, checked):
            return self._back_up(ctx, args, settings, checked)

    def _back_up(self, ctx: RunContext, args: argparse.Namespace, settings: BackupSettings, checked: Preflight) -> str:
        if ctx.dry_run:
            return _dry_run(settings, checked)
        unreadable_here = _unreadable_here(settings, checked)
        started = datetime.now(UTC)
        clock = time.monotonic()
        identifier = backup_id(started, ctx.run_id)
        what = describe_choice(settings, checked)
        key = data_key_for(checked.store, settings, checked, identifier, None)
        run = BackupRun(ctx.run_id, format_time(started), key=key)
        status = RunStatus.of(ctx, BACKUP_RUNS)
        status.started(f"dumping {what} to {run.key}", f"backup {identifier} of {what} started", run)
        manifest = _publish(ctx, settings, checked, identifier, started)
        duration = time.monotonic() - clock
        verified = _restore_test_condition(ctx, settings, checked, manifest) if settings.verify else None
        retained = _retain(args, settings, checked, identifier)
        message = _summary(settings, checked, manifest, duration, retained) + unreadable_here
        fields = {
            **backup_fields(manifest, duration, verified is not None, settings.stale_after),
            "backupsKept": len(retained.inventory.backups),
        }
        if verified is not None:
            fields["lastVerification"] = Verification.of(
                format_time(datetime.now(UTC)), manifest.data_key, True, "row counts matched"
            ).to_status()
        status.succeeded(
            Reason.COMPLETED,
            message,
            replace(run, duration_seconds=round(duration, 3)).ended(
                format_time(datetime.now(UTC)), Reason.COMPLETED, message
            ),
            # Ready says whether the newest backup is fresh, not only that this run went well.
            conditions=[
                ready_condition(manifest, settings.stale_after, datetime.now(UTC)),
                *([verified] if verified is not None else []),
            ],
            fields=fields,
        )
        return message

    def record_failure(self, ctx: RunContext, error: CellarError) -> None:
        RunStatus.of(ctx, BACKUP_RUNS).failed(error)


class VerifyJob:
    """A restore test of an existing backup (the newest by default): schedule it to test restores."""

    name = "verify"
    kind = DATABASE_BACKUP
    application_name = APPLICATION
    description = "Restore a backup into a scratch database and compare every table's row count."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--key", help="the backup to test (data key or backup id); default: the newest")

    def run(self, ctx: RunContext, args: argparse.Namespace) -> str:
        settings = parse_backup_spec(ctx.spec)
        checked = preflight(ctx, settings, restore_test=True, dumping=False)
        with released_on_failure(ctx, checked):
            return self._verify(ctx, args, settings, checked)

    def _verify(self, ctx: RunContext, args: argparse.Namespace, settings: BackupSettings, checked: Preflight) -> str:
        store = checked.store
        manifest = find_backup(store, checked.claimed.readable, args.key)
        if ctx.dry_run:
            return f"dry run: would restore-test {manifest.backup_id} into a scratch database"
        tested, left_note = restore_test(
            ctx, store, manifest, checked.restore_test_server, settings, checked.identities
        )
        message = (
            f"backup {manifest.backup_id} restored with {tested.restored_with} and every table's row count matched"
            f"{left_note}"
        )
        fields: dict[str, Any] = {
            "lastVerification": Verification.of(
                format_time(datetime.now(UTC)), manifest.data_key, True, message
            ).to_status()
        }
        last = (ctx.resource.get("status") or {}).get("lastSuccessfulBackup") or {}
        if last.get("key") == manifest.data_key:  # a merge patch: the rest of it stays
            fields["lastSuccessfulBackup"] = SuccessfulBackup(manifest.data_key, verified=True).to_status()
        RunStatus.of(ctx, VERIFY_RUNS).succeeded(Reason.RESTORE_TEST_PASSED, message, fields=fields)
        return message

    def record_failure(self, ctx: RunContext, error: CellarError) -> None:
        unsound = [Condition(ConditionType.READY, "False", error.reason, str(error))]
        RunStatus.of(ctx, VERIFY_RUNS).failed(error, unsound if isinstance(error, BackupUnsound) else [])


def _as_dry_run(policy: RetentionPolicy) -> RetentionPolicy:
    return replace(policy, dry_run=True)
