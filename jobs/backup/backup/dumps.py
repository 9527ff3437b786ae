"""One run's objects: each chosen database's dump, in its own snapshot and object, and the globals.
A run is a backup only when all of them were written: a failure removes what the run wrote (discard)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from common.db import backoff_seconds
from common.encryption import EXTENSION as ENCRYPTED_EXTENSION
from common.errors import CellarError, RecoveryConflict, RetryableError
from common.progress import ProgressReporter
from common.reasons import Reason
from common.run_status import RunStatus
from common.runtime import RunContext
from common.storage import ObjectStore
from jobs.backup.backup.databases import dump_key_name
from jobs.backup.backup.dump import DumpResult, DumpSource, SealedObject, dump_globals, dump_to_storage
from jobs.backup.backup.preflight import Preflight
from jobs.backup.catalog import DATA_DIR, DatabaseDump, GlobalsObject
from jobs.backup.settings import BackupSettings
from jobs.backup.status import BACKUP_RUNS

log = logging.getLogger(__name__)
STANDBY_CONFLICT_ATTEMPTS = 3  # dumps a hot standby may cancel in one run before it fails with StandbyConflict


def _stored_suffix(settings: BackupSettings, checked: Preflight) -> str:
    """How every object of a run ends: its compression's extension, then .age when encrypted."""
    return settings.compression.extension + (ENCRYPTED_EXTENSION if checked.recipients else "")


def data_key_for(
    store: ObjectStore, settings: BackupSettings, checked: Preflight, identifier: str, database: str | None
) -> str:
    """The key of a database's dump; with spec.databases each has its own (database None: the prefix they share)."""
    suffix = _stored_suffix(settings, checked)
    if settings.databases is None:
        return store.key(DATA_DIR, f"{identifier}.pgdump{suffix}")
    if database is None:
        return store.key(DATA_DIR, f"{identifier}.db.")
    return store.key(DATA_DIR, dump_key_name(identifier, database) + suffix)


def dump_source(checked: Preflight, database: str) -> DumpSource:
    """Database `database` of the server preflight checked, with the tools it chose for that server."""
    database_settings = replace(checked.database, dbname=database)
    return DumpSource(database_settings, checked.tools, checked.server.version, checked.server.standby)


def dump_databases(
    ctx: RunContext,
    store: ObjectStore,
    settings: BackupSettings,
    checked: Preflight,
    identifier: str,
    written: list[str],
) -> list[DatabaseDump]:
    """Dump each chosen database in turn, each in its own snapshot, into its own object; `written` collects
    the keys as they are started, so that a failed run can remove them. The first failure stops the run."""
    progress = ProgressReporter(
        "bytes", sum(d.size for d in checked.databases), RunStatus.of(ctx, BACKUP_RUNS).progressed
    )
    dumps: list[DatabaseDump] = []
    done = 0
    for chosen in checked.databases:
        key = data_key_for(store, settings, checked, identifier, chosen.name)
        written.append(key)
        log.info("dumping database", extra={"database": chosen.name, "key": key, "database_bytes": chosen.size})
        try:
            dumped = _dump_retrying_conflicts(
                dump_source(checked, chosen.name),
                SealedObject(store, key, settings.compression, checked.recipients),
                settings,
                progress.after(done),
            )
        except CellarError as error:
            if settings.databases is not None:
                error.message = f"database {chosen.name}: {error.message}; no backup was published"
                error.args = (error.message,)
            raise
        done += dumped.bytes_raw
        dumps.append(
            DatabaseDump(
                chosen.name,
                key,
                dumped.bytes_raw,
                dumped.upload.size,
                dumped.upload.sha256,
                dumped.tables,
                dumped.counts_in_dump_snapshot,
                chosen.owner if settings.databases is not None else "",
            )
        )
    return dumps


def _dump_retrying_conflicts(
    source: DumpSource, into: SealedObject, settings: BackupSettings, on_progress: Callable[[int], None]
) -> DumpResult:
    """dump_to_storage, tried again (a fresh snapshot, a fresh upload) when a hot standby cancelled it for a
    conflict with recovery; StandbyConflict once it has every time. Nothing of a cancelled try is visible."""
    for attempt in range(1, STANDBY_CONFLICT_ATTEMPTS + 1):
        try:
            return dump_to_storage(source, into, settings.dump, on_progress=on_progress)
        except RecoveryConflict as conflict:
            if attempt == STANDBY_CONFLICT_ATTEMPTS:
                raise RetryableError(
                    f"{source.database.describe()} is a hot standby that cancelled the dump {attempt} times for "
                    "conflicts with recovery (replay removed rows the dump was reading). Set hot_standby_feedback = "
                    "on on the standby (the primary then keeps those rows until the dump ends), or raise its "
                    "max_standby_streaming_delay above the dump's duration (replay waits for it), or dump the "
                    f"primary. Last: {conflict}",
                    reason=Reason.STANDBY_CONFLICT,
                ) from conflict
            pause = backoff_seconds(attempt, cap=30.0, first=2.0)
            log.warning(
                "the standby cancelled the dump for a conflict with recovery; dumping again",
                extra={"attempt": attempt, "of": STANDBY_CONFLICT_ATTEMPTS, "retry_in_seconds": round(pause, 1)},
            )
            time.sleep(pause)
    raise AssertionError("unreachable")  # the loop returns or raises


def dump_server_globals(
    store: ObjectStore, settings: BackupSettings, checked: Preflight, identifier: str, written: list[str]
) -> GlobalsObject:
    assert settings.globals is not None
    key = store.key(DATA_DIR, f"{identifier}.globals.sql{_stored_suffix(settings, checked)}")
    written.append(key)
    # pg_authid, where the passwords are, is a superuser's to read: any other role (a managed server's admin
    # included) dumps the roles from pg_roles, without them, rather than fail.
    because = "" if settings.globals.no_role_passwords else checked.role_passwords_left_out
    no_role_passwords = settings.globals.no_role_passwords or bool(because)
    if because:
        log.warning("the roles are backed up without their passwords", extra={"why": because})
    dumped = dump_globals(
        dump_source(checked, checked.database.dbname),
        SealedObject(store, key, settings.compression, checked.recipients),
        no_role_passwords=no_role_passwords,
    )
    return GlobalsObject(key, dumped.bytes_raw, dumped.upload.size, dumped.upload.sha256, no_role_passwords, because)


def discard(store: ObjectStore, keys: list[str]) -> None:
    """Remove the objects a failed run published before it failed (a dump whose upload was aborted is not
    there; deleting it changes nothing). What cannot be removed now is a leftover retention removes."""
    for key in keys:
        try:
            store.delete_leftover(key)
        except CellarError as exc:
            log.warning("could not remove a failed run's object", extra={"key": key, "error": str(exc)})
