"""The DatabaseRestore run: find the backup, prepare the target, stream it in, report `Succeeded`."""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from common.conditions import Condition, format_time, is_condition_true
from common.config import DatabaseSettings, resolve_database_settings
from common.db import connect
from common.encryption import resolve_identities
from common.errors import CellarError, InvalidSpec, NotFound, PermanentError
from common.kube import DATABASE_BACKUP, DATABASE_RESTORE, ResourceRef
from common.progress import ProgressReporter
from common.reasons import Reason
from common.runtime import RunContext
from jobs.backup.catalog import find_backup
from jobs.backup.job import open_storage
from jobs.backup.restore import check_decryptable, plan_restore, restore_from_storage
from jobs.backup.settings import parse_backup_spec, parse_restore_spec
from jobs.backup.status import RestoreOutcome

log = logging.getLogger(__name__)
APPLICATION = "cellar-restore"


def create_database(target: DatabaseSettings) -> None:
    """CREATE DATABASE on the target's server, connecting to its `postgres` maintenance database."""
    maintenance = replace(target, dbname="postgres")
    with connect(maintenance, application_name=APPLICATION, autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.dbname)))
        except psycopg.errors.DuplicateDatabase:
            raise PermanentError(
                f"spec.createDatabase: database {target.dbname!r} already exists; restore into a new name, or "
                "set createDatabase: false (and clean: true to replace what the dump contains)",
                reason=Reason.TARGET_EXISTS,
            ) from None


def drop_database(target: DatabaseSettings) -> None:
    maintenance = replace(target, dbname="postgres")
    with connect(maintenance, application_name=APPLICATION, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target.dbname)))


class RestoreJob:
    name = "restore"
    kind = DATABASE_RESTORE
    description = "Restore a cellar backup into a PostgreSQL database, as a DatabaseRestore says."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, ctx: RunContext, args: argparse.Namespace) -> str:
        conditions = (ctx.resource.get("status") or {}).get("conditions") or []
        observed = (ctx.resource.get("status") or {}).get("observedGeneration")
        if is_condition_true(conditions, "Succeeded") and observed == ctx.generation:
            return "already restored for this generation; nothing to do"
        settings = parse_restore_spec(ctx.spec)
        try:
            backup_resource = ctx.kube.get(ResourceRef(DATABASE_BACKUP, ctx.ref.namespace, settings.backup_name))
        except NotFound as exc:
            raise InvalidSpec(f"spec.backup.name: {exc}") from exc
        store = open_storage(ctx, parse_backup_spec(backup_resource.get("spec") or {}))
        store.check_access()
        manifest = find_backup(store, settings.backup_key)
        target = resolve_database_settings(ctx.kube, ctx.ref.namespace, settings.target)
        # With createDatabase the target does not exist yet: ask its server through `postgres`.
        server = replace(target, dbname="postgres") if settings.create_database else target
        plan = plan_restore(server, manifest, application_name=APPLICATION)
        identities = resolve_identities(ctx.kube, ctx.ref.namespace, settings.identity) if settings.identity else None
        check_decryptable(store, manifest, identities, field="spec.decryption.identitySecretRef")
        if ctx.dry_run:
            return f"dry run: would restore {manifest.backup_id} into {target.describe()} with {plan.describe()}"

        started = datetime.now(UTC)
        ctx.update_status(
            [
                Condition(
                    "Succeeded",
                    "Unknown",
                    Reason.RUNNING,
                    f"restoring {manifest.backup_id} into {target.describe()} with {plan.describe()}",
                )
            ],
            fields=RestoreOutcome(key=manifest.data_key, start_time=format_time(started)).to_status(),
        )
        ctx.event(Reason.STARTED, f"restore of {manifest.backup_id} into {target.describe()} started", action="Restore")
        options = ["--no-owner"] if settings.no_owner else []
        if settings.clean:
            options += ["--clean", "--if-exists"]
        if settings.create_database:
            create_database(target)
        progress = ProgressReporter(
            "bytes", manifest.bytes_stored, lambda figures: ctx.update_status(fields={"progress": figures})
        )
        try:
            result = restore_from_storage(
                store,
                manifest,
                target,
                plan,
                options=options,
                application_name=APPLICATION,
                on_progress=progress.update,
                identities=identities,
            )
        except BaseException:
            if settings.create_database:  # leave nothing half-made behind
                drop_database(target)
            raise
        message = (
            f"restored {manifest.backup_id} ({result.bytes_read} bytes, SHA-256 verified) into {target.describe()} "
            f"with {plan.describe()}"
        )
        ctx.update_status(
            [Condition("Succeeded", "True", Reason.COMPLETED, message)],
            fields={
                **RestoreOutcome(
                    completion_time=format_time(datetime.now(UTC)), bytes_read=result.bytes_read
                ).to_status(),
                "progress": None,
            },
        )
        ctx.event(Reason.COMPLETED, message, action="Restore")
        return message

    def record_failure(self, ctx: RunContext, error: CellarError) -> None:
        ctx.update_status(
            [Condition("Succeeded", "False", error.reason, str(error))],
            fields={**RestoreOutcome(completion_time=format_time(datetime.now(UTC))).to_status(), "progress": None},
        )
        ctx.event(error.reason, str(error), action="Restore", warning=True)
