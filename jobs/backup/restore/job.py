"""The DatabaseRestore run: find the backup, prepare the target, stream it in, report `Succeeded`."""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from common.conditions import ConditionType, format_time, is_condition_true
from common.db import connect
from common.encryption import resolve_identities
from common.errors import CellarError, InsufficientPrivilege, InvalidSpec, NotFound, PermanentError
from common.kube import DATABASE_BACKUP, DATABASE_RESTORE, ResourceRef
from common.ownership import Area, Owner, readable_by, take_over_from
from common.progress import ProgressReporter
from common.reasons import Reason
from common.run_status import RunStatus
from common.runtime import RunContext
from common.secrets import DatabaseSettings
from jobs.backup.backup.preflight import open_storage
from jobs.backup.catalog import Manifest
from jobs.backup.inventory import find_backup
from jobs.backup.privileges import can_become, role_facts
from jobs.backup.restore.directory import Staging, restore_directory
from jobs.backup.restore.grants import Skipped, plan_skips
from jobs.backup.restore.partial import SelectedRestore, check_target, choose_entries
from jobs.backup.restore.plan import BackupSource, RestorePlan, RestoreTarget, plan_restore
from jobs.backup.restore.roles import apply_globals
from jobs.backup.restore.staged import restore_staged
from jobs.backup.restore.stream import RestoreResult, check_decryptable, read_head, restore_from_storage
from jobs.backup.restore.targets import (
    check_target_databases,
    create_database,
    describe_targets,
    drop_created,
    restore_targets,
)
from jobs.backup.settings import RestoreSettings, parse_backup_spec, parse_restore_spec
from jobs.backup.status import RESTORE_RUNS, RestoreOutcome
from jobs.backup.toc import parse_toc

log = logging.getLogger(__name__)
APPLICATION = "cellar-restore"


@dataclass(frozen=True)
class RestoreRequest:
    """One DatabaseRestore, resolved before anything is written: the backup, where each of its databases goes,
    the plan into that server, the spec's settings, and a partial restore's entries."""

    source: BackupSource
    server: DatabaseSettings  # a database on the target server to connect to (`postgres` with createDatabase)
    plan: RestorePlan
    targets: list[tuple[Manifest, DatabaseSettings]]
    settings: RestoreSettings
    selected: SelectedRestore | None = None
    skipped: dict[str, Skipped] = field(default_factory=dict)  # by database: what a non-superuser leaves out

    def into(self, database: DatabaseSettings, options: Sequence[str] = ()) -> RestoreTarget:
        return RestoreTarget(database, self.plan, tuple(options))

    def pg_restore_options(self, list_file: Path | None, skipped: Skipped | None = None) -> list[str]:
        options = ["--no-owner"] if self.settings.no_owner else []
        options += [o for o in (skipped.options() if skipped else []) if o not in options]
        if self.settings.clean:
            options += ["--clean", "--if-exists"]
        return options + ([f"--use-list={list_file}"] if list_file is not None else [])


def _restore(
    request: RestoreRequest, manifest: Manifest, database: DatabaseSettings, on_progress: Callable[[int], None]
) -> tuple[RestoreResult, str]:
    """Create the target if asked, restore one database of the backup from the stream or from a staged copy,
    and drop a database it created again on any failure. Returns the result and how it was restored."""
    settings, selected = request.settings, request.selected
    source = replace(request.source, manifest=manifest)
    skipped = request.skipped.get(manifest.dump.database)
    with tempfile.TemporaryDirectory(prefix="cellar-restore-") as scratch:  # in /tmp: the Pod's emptyDir
        list_file = _list_file(Path(scratch), selected, skipped)
        target = request.into(database, request.pg_restore_options(list_file, skipped))
        if settings.create_database:
            create_database(database, "" if settings.no_owner else manifest.dump.owner)
        try:
            if manifest.dump.directory:
                assert settings.staging_path is not None  # _resolve refused a directory dump without staging
                done = restore_directory(
                    source, target, Staging(settings.staging_path, settings.parallelism), on_progress
                )
                how = "--single-transaction" if settings.parallelism == 1 else f"--jobs={settings.parallelism}"
                return RestoreResult(done.bytes_read, done.bytes_restored), (
                    f"pg_restore {how} from the directory staged in {settings.staging_path}"
                )
            if settings.staging_path is not None:
                staged = restore_staged(
                    source, target, staging=settings.staging_path, jobs=settings.parallelism, on_progress=on_progress
                )
                return staged, f"pg_restore --jobs={settings.parallelism} from a copy staged in {settings.staging_path}"
            streamed = restore_from_storage(source, target, on_progress=on_progress, verified=selected is not None)
            return streamed, "streaming"
        except BaseException:
            if settings.create_database:  # leave nothing half-made behind
                drop_created(database)
            raise


def _list_file(scratch: Path, selected: SelectedRestore | None, skipped: Skipped | None) -> Path | None:
    """pg_restore's -L list: the selected entries (spec.select), without the grant entries a non-superuser
    cannot restore; None when it restores the whole table of contents."""
    leave_out = set(skipped.grants) if skipped is not None else set()
    if selected is None and not leave_out:
        return None
    lines = selected.toc.entries if selected is not None else (skipped.entries if skipped else [])
    path = scratch / "selected.list"
    path.write_text("".join(e.line + "\n" for e in lines if e.dump_id not in leave_out), encoding="utf-8")
    return path


def restore_all(request: RestoreRequest, progress: ProgressReporter) -> tuple[int, str]:
    """Restore each database in turn; with createDatabase a failure drops the ones restored before it too
    (all or nothing). The bytes read, and how it restored."""
    bytes_read, how = 0, ""
    restored: list[DatabaseSettings] = []
    try:
        for view, into in request.targets:
            log.info("restoring database", extra={"key": view.data_key, "into": into.describe()})
            result, how = _restore(request, view, into, progress.after(bytes_read))
            bytes_read += result.bytes_read
            restored.append(into)
    except BaseException:
        if request.settings.create_database:
            for into in restored:
                drop_created(into)
        raise
    return bytes_read, how


def check_may_create(request: RestoreRequest) -> None:
    """With createDatabase, a role that is neither superuser nor CREATEDB is refused before anything is written."""
    if not request.settings.create_database:
        return
    with connect(request.server) as conn:
        role = role_facts(conn)
    if not (role.superuser or role.createdb):
        raise InsufficientPrivilege(
            f"spec.createDatabase: role {role.name} may not create databases on {request.server.describe()}: "
            f"ALTER ROLE {role.name} CREATEDB (on a managed server, as its admin role), or create the database "
            "first and set createDatabase: false"
        )


def plan_role_skips(request: RestoreRequest) -> dict[str, Skipped]:
    """For a restoring role that is no superuser (a managed server's), per database, the ownership and grants
    it cannot restore (restore.grants), asked after the backup's roles were applied; {} for a superuser."""
    settings = request.settings
    with connect(request.server) as conn:
        role = role_facts(conn)
        if role.superuser:
            return {}
        found: dict[str, Skipped] = {}
        for view, _ in request.targets:
            source = replace(request.source, manifest=view)
            entries = (
                request.selected.toc.entries
                if request.selected is not None
                else parse_toc(read_head(source, request.plan, ["--list", "--verbose"], checksum=False))
            )
            skipped = plan_skips(conn, source, request.plan, entries, no_owner=settings.no_owner)
            owner = view.dump.owner
            if settings.create_database and owner and not settings.no_owner and owner in can_become(conn, {owner}):
                skipped.database_owner = owner
            if skipped.describe():
                log.warning(
                    "the restoring role is not a superuser: what it cannot restore is left out",
                    extra={"database": view.dump.database, "role": role.name, "left_out": skipped.describe()},
                )
            found[view.dump.database] = skipped
    return found


def describe_skips(skipped: dict[str, Skipped]) -> str:
    """What the message says of what a non-superuser left out: "" when nothing."""
    parts = [
        (f"{name}: " if len(skipped) > 1 else "") + what for name, one in skipped.items() if (what := one.describe())
    ]
    return f"; as a role that is no superuser, {'; '.join(parts)}" if parts else ""


def check_directory_restore(manifest: Manifest, plan: RestorePlan, settings: RestoreSettings) -> None:
    """A directory dump (spec.parallelism of the DatabaseBackup) is staged on a volume and restored by pg_restore
    connected to the target: refused up front without a volume, or into a server only SQL can reach."""
    if settings.staging_path is None:
        raise InvalidSpec(
            f"backup {manifest.backup_id} is a directory dump (its DatabaseBackup has spec.parallelism): its files "
            "are staged before pg_restore reads them; give a volume in spec.staging.path (and spec.parallelism "
            "with createDatabase: true to restore with pg_restore --jobs)"
        )
    if plan.through_sql:
        raise PermanentError(
            f"backup {manifest.backup_id} is a directory dump, restored by {plan.tools.describe('pg_restore')} "
            f"connected to the target, which cannot connect to PostgreSQL {plan.server_version}; restore it into a "
            "server of its own major or newer",
            reason=Reason.TARGET_TOO_OLD,
        )


class RestoreJob:
    name = "restore"
    kind = DATABASE_RESTORE
    application_name = APPLICATION
    description = "Restore a cellar backup into a PostgreSQL database, as a DatabaseRestore says."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, ctx: RunContext, args: argparse.Namespace) -> str:
        conditions = (ctx.resource.get("status") or {}).get("conditions") or []
        observed = (ctx.resource.get("status") or {}).get("observedGeneration")
        if is_condition_true(conditions, ConditionType.SUCCEEDED) and observed == ctx.generation:
            return "already restored for this generation; nothing to do"
        request = self._resolve(ctx, parse_restore_spec(ctx.spec))
        manifest, plan, selected = request.source.manifest, request.plan, request.selected
        what = f"{selected.describe()} of " if selected else ""
        into_what = describe_targets(request.targets)
        if ctx.dry_run:
            return f"dry run: would restore {what}{manifest.backup_id} into {into_what} with {plan.describe()}"
        outcome = RestoreOutcome(key=manifest.data_key, start_time=format_time(datetime.now(UTC)))
        status = RunStatus.of(ctx, RESTORE_RUNS)
        status.started(
            f"restoring {manifest.backup_id} into {into_what} with {plan.describe()}",
            f"restore of {manifest.backup_id} into {into_what} started",
            outcome,
        )
        roles = self._apply_globals(request)
        request = replace(request, skipped=plan_role_skips(request))
        progress = ProgressReporter("bytes", sum(view.bytes_stored for view, _ in request.targets), status.progressed)
        bytes_read, how = restore_all(request, progress)
        message = (
            f"restored {what}{manifest.backup_id} ({bytes_read} bytes, SHA-256 verified) into "
            f"{into_what} with {plan.describe()}, {how}{roles}{describe_skips(request.skipped)}"
        )
        read = replace(outcome, bytes_read=bytes_read).ended(format_time(datetime.now(UTC)), Reason.COMPLETED, message)
        status.succeeded(Reason.COMPLETED, message, read)
        return message

    @staticmethod
    def _resolve(ctx: RunContext, settings: RestoreSettings) -> RestoreRequest:
        """Everything the restore needs, checked before anything is written: the backup and its key, the target
        server and the tools into it, which database goes where, a partial restore's entries."""
        try:
            backup_resource = ctx.kube.get(ResourceRef(DATABASE_BACKUP, ctx.ref.namespace, settings.backup_name))
        except NotFound as exc:
            raise InvalidSpec(f"spec.backup.name: {exc}") from exc
        store = open_storage(ctx, parse_backup_spec(backup_resource.get("spec") or {}))
        store.check_access()
        backup_owner = Owner.of(DATABASE_BACKUP.kind, ctx.ref.namespace, settings.backup_name, backup_resource)
        readable = readable_by(Area.of_backups(store), backup_owner, take_over_from(backup_resource))
        manifest = find_backup(store, readable, settings.backup_key)
        target = ctx.secrets.database(settings.target)
        # With createDatabase the target does not exist yet: ask its server through `postgres`.
        server = replace(target, dbname="postgres") if settings.create_database else target
        plan = plan_restore(server, manifest)
        if plan.through_sql and settings.staging_path is not None:
            raise PermanentError(
                f"spec.parallelism: {plan.describe()}: a parallel restore into a server older than the backup's "
                f"tools cannot run ({plan.tools.describe('pg_restore')} cannot connect to PostgreSQL "
                f"{plan.server_version} itself); leave parallelism and staging out to restore through SQL",
                reason=Reason.TARGET_TOO_OLD,
            )
        if any(d.directory for d in manifest.dumps):
            check_directory_restore(manifest, plan, settings)
        identities = resolve_identities(ctx.secrets, settings.identity) if settings.identity else None
        source = BackupSource(store, manifest, identities)
        check_decryptable(source, field="spec.decryption.identitySecretRef")
        if settings.globals and manifest.globals is None:
            raise InvalidSpec(
                f"spec.globals: backup {manifest.backup_id} holds no roles or tablespaces; turn on "
                "spec.globals.enabled in the DatabaseBackup for the next backups, or leave globals out"
            )
        targets = restore_targets(manifest, target, settings)
        if manifest.server_wide:
            check_target_databases(server, [t for _, t in targets], created=settings.create_database)
        selected = None
        if settings.selection is not None:
            (one, into), *_ = targets
            selected = choose_entries(replace(source, manifest=one), plan, settings.selection)
            selected = check_target(into, selected, clean=settings.clean, created=settings.create_database)
        request = RestoreRequest(source, server, plan, targets, settings, selected)
        check_may_create(request)
        return request

    @staticmethod
    def _apply_globals(request: RestoreRequest) -> str:
        """The backup's roles and tablespaces first, when the spec asks; what the message says of them."""
        if not request.settings.globals:
            return ""
        applied = apply_globals(request.source, request.into(request.server))
        log.info("roles and tablespaces applied", extra={"statements": applied.statements, "errors": applied.errors})
        roles = f"; roles and tablespaces applied first ({applied.statements} statements"
        return roles + (f", {len(applied.errors)} failed: {'; '.join(applied.errors[:5])})" if applied.errors else ")")

    def record_failure(self, ctx: RunContext, error: CellarError) -> None:
        RunStatus.of(ctx, RESTORE_RUNS).failed(error)
