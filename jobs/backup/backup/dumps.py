"""One run's objects: each chosen database's dump, in its own snapshot and object, and the globals.
A run is a backup only when all of them were written: a failure removes what the run wrote (discard)."""

from __future__ import annotations

import logging
from dataclasses import replace

from common.encryption import EXTENSION as ENCRYPTED_EXTENSION
from common.errors import CellarError
from common.progress import ProgressReporter
from common.run_status import RunStatus
from common.runtime import RunContext
from common.storage import ObjectStore
from jobs.backup.backup.databases import dump_key_name
from jobs.backup.backup.dump import DumpSource, SealedObject, dump_globals, dump_to_storage
from jobs.backup.backup.preflight import APPLICATION, Preflight
from jobs.backup.catalog import DATA_DIR, DatabaseDump, GlobalsObject
from jobs.backup.settings import BackupSettings
from jobs.backup.status import BACKUP_RUNS

log = logging.getLogger(__name__)


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
    return DumpSource(replace(checked.database, dbname=database), checked.tools, checked.server.version, APPLICATION)


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
            dumped = dump_to_storage(
                dump_source(checked, chosen.name),
                SealedObject(store, key, settings.compression, checked.recipients),
                settings.dump,
                on_progress=progress.after(done),
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


def dump_server_globals(
    store: ObjectStore, settings: BackupSettings, checked: Preflight, identifier: str, written: list[str]
) -> GlobalsObject:
    assert settings.globals is not None
    key = store.key(DATA_DIR, f"{identifier}.globals.sql{_stored_suffix(settings, checked)}")
    written.append(key)
    dumped = dump_globals(
        dump_source(checked, checked.database.dbname),
        SealedObject(store, key, settings.compression, checked.recipients),
        no_role_passwords=settings.globals.no_role_passwords,
    )
    return GlobalsObject(
        key, dumped.bytes_raw, dumped.upload.size, dumped.upload.sha256, settings.globals.no_role_passwords
    )


def discard(store: ObjectStore, keys: list[str]) -> None:
    """Remove the objects a failed run published before it failed (a dump whose upload was aborted is not
    there; deleting it changes nothing). What cannot be removed now is a leftover retention removes."""
    for key in keys:
        try:
            store.delete_leftover(key)
        except CellarError as exc:
            log.warning("could not remove a failed run's object", extra={"key": key, "error": str(exc)})
