"""One run's objects: each chosen database's dump, in its own snapshot and object, and the globals.
A run is a backup only when all of them were written: a failure removes what the run wrote (discard)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

from common.db import backoff_seconds
from common.encryption import EXTENSION as ENCRYPTED_EXTENSION
from common.errors import CellarError, DumpFailed, RecoveryConflict, RetryableError
from common.progress import ProgressReporter
from common.reasons import Reason
from common.run_status import RunStatus
from common.runtime import RunContext
from common.storage import ObjectStore
from jobs.backup.backup.databases import ChosenDatabase, dump_key_name
from jobs.backup.backup.directory import DirectoryTarget, dump_directory
from jobs.backup.backup.dump import (
    DumpResult,
    DumpSource,
    SealedObject,
    dump_globals,
    dump_to_storage,
    ended_by_replay,
    recovery_conflicts,
)
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
    """The key of a database's dump; with spec.databases each has its own (database None: the prefix they share).
    A directory dump's key is the prefix its files' objects share (ending in /)."""
    suffix = _stored_suffix(settings, checked)
    ending = ".dir" if settings.directory else ".pgdump"
    if settings.databases is None:
        key = store.key(DATA_DIR, f"{identifier}{ending}")
    elif database is None:
        return store.key(DATA_DIR, f"{identifier}.db.")
    else:
        key = store.key(DATA_DIR, dump_key_name(identifier, database).removesuffix(".pgdump") + ending)
    return key + "/" if settings.directory else key + suffix


def dump_source(checked: Preflight, database: str) -> DumpSource:
    """Database `database` of the server preflight checked, with the tools it chose for that server."""
    database_settings = replace(checked.database, dbname=database)
    return DumpSource(database_settings, checked.tools, checked.server.version, checked.server.standby)


@dataclass(frozen=True)
class RunDumps:
    """What every database's dump of one run shares: the store, the spec, what preflight found, the backup id,
    the keys written so far (for discard), and the run's progress."""

    store: ObjectStore
    settings: BackupSettings
    checked: Preflight
    identifier: str
    written: list[str]
    progress: SharedProgress


class SharedProgress:
    """Bytes dumped by several databases at once, reported as one sum."""

    def __init__(self, reporter: ProgressReporter) -> None:
        self._reporter = reporter
        self._done: dict[str, int] = {}
        self._lock = threading.Lock()

    def of(self, database: str) -> Callable[[int], None]:
        def update(done: int) -> None:
            with self._lock:
                self._done[database] = done
                self._reporter.update(sum(self._done.values()))

        return update


def dump_databases(
    ctx: RunContext,
    store: ObjectStore,
    settings: BackupSettings,
    checked: Preflight,
    identifier: str,
    written: list[str],
) -> list[DatabaseDump]:
    """Dump each chosen database, each in its own snapshot, into its own object (or directory): one at a time,
    or spec.databases.parallelism at once. `written` collects the keys as they are started, so that a failed
    run can remove them. The first failure stops the run: no database starts after it, those under way end."""
    progress = ProgressReporter(
        "bytes", sum(d.size for d in checked.databases), RunStatus.of(ctx, BACKUP_RUNS).progressed
    )
    run = RunDumps(store, settings, checked, identifier, written, SharedProgress(progress))
    at_once = settings.databases.parallelism if settings.databases is not None else 1
    if at_once == 1 or len(checked.databases) == 1:
        return [_dump_one(run, chosen) for chosen in checked.databases]
    failed = threading.Event()

    def dump(chosen: ChosenDatabase) -> DatabaseDump | None:
        if failed.is_set():
            return None  # the run failed already: no new database starts
        try:
            return _dump_one(run, chosen)
        except BaseException:
            failed.set()
            raise

    with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="database-dump") as pool:
        futures = [pool.submit(dump, chosen) for chosen in checked.databases]
        wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            future.cancel()
    errors = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]
    return [dumped for f in futures if (dumped := f.result()) is not None]


def _dump_one(run: RunDumps, chosen: ChosenDatabase) -> DatabaseDump:
    settings, checked = run.settings, run.checked
    key = data_key_for(run.store, settings, checked, run.identifier, chosen.name)
    if not settings.directory:
        run.written.append(key)
    log.info("dumping database", extra={"database": chosen.name, "key": key, "database_bytes": chosen.size})
    into = SealedObject(run.store, key, settings.compression, checked.recipients)
    try:
        dumped = _dump_retrying_conflicts(
            DumpAttempt(dump_source(checked, chosen.name), into, run.written, run.progress.of(chosen.name)),
            settings,
            staging_for(checked, run.identifier, chosen.name),
        )
    except CellarError as error:
        if settings.databases is not None:
            error.message = f"database {chosen.name}: {error.message}; no backup was published"
            error.args = (error.message,)
        raise
    return DatabaseDump(
        chosen.name,
        key,
        dumped.bytes_raw,
        dumped.bytes_stored,
        dumped.sha256,
        dumped.tables,
        dumped.counts_in_dump_snapshot,
        chosen.owner if settings.databases is not None else "",
        dumped.files,
    )


def staging_for(checked: Preflight, identifier: str, database: str) -> Path | None:
    """Where pg_dump writes one database's directory (it makes it); None: the dump is one stream."""
    root = checked.staging
    return None if root is None else root / f"{identifier}.{quote(database, safe='')}"


@dataclass(frozen=True)
class DumpAttempt:
    """One database's dump: what it reads, where its object (or directory's objects) go, the keys written so far,
    and its progress."""

    source: DumpSource
    into: SealedObject
    written: list[str]
    on_progress: Callable[[int], None]


def _dump_once(attempt: DumpAttempt, settings: BackupSettings, staging: Path | None) -> DumpResult:
    source = attempt.source
    conflicts_before = recovery_conflicts(source) if source.standby else None
    mine: list[str] = []  # this try's files (other databases' dumps may add to attempt.written meanwhile)
    try:
        if staging is None:
            return dump_to_storage(source, attempt.into, settings.dump, on_progress=attempt.on_progress)
        target = DirectoryTarget(staging, attempt.into, settings.parallelism)
        return dump_directory(source, target, settings.dump, written=mine, on_progress=attempt.on_progress)
    except DumpFailed as failed:
        conflict = isinstance(failed, RecoveryConflict) or ended_by_replay(source, failed, conflicts_before)
        if not conflict:
            raise
        discard(attempt.into.store, mine)  # the next try writes its own files
        mine.clear()
        if isinstance(failed, RecoveryConflict):
            raise
        raise RecoveryConflict(f"{failed} (the standby counted a conflict with recovery meanwhile)") from failed
    finally:
        attempt.written.extend(mine)  # for the run's discard, should it fail


def _dump_retrying_conflicts(attempt: DumpAttempt, settings: BackupSettings, staging: Path | None) -> DumpResult:
    """The dump, tried again (a fresh snapshot, a fresh upload) when a hot standby cancelled it for a
    conflict with recovery; StandbyConflict once it has every time. Nothing of a cancelled try is visible."""
    source = attempt.source
    for number in range(1, STANDBY_CONFLICT_ATTEMPTS + 1):
        try:
            return _dump_once(attempt, settings, staging)
        except RecoveryConflict as conflict:
            if number == STANDBY_CONFLICT_ATTEMPTS:
                raise RetryableError(
                    f"{source.database.describe()} is a hot standby that cancelled the dump {number} times for "
                    "conflicts with recovery (replay removed rows the dump was reading). Set hot_standby_feedback = "
                    "on on the standby (the primary then keeps those rows until the dump ends), or raise its "
                    "max_standby_streaming_delay above the dump's duration (replay waits for it), or dump the "
                    f"primary. Last: {conflict}",
                    reason=Reason.STANDBY_CONFLICT,
                ) from conflict
            pause = backoff_seconds(number, cap=30.0, first=2.0)
            log.warning(
                "the standby cancelled the dump for a conflict with recovery; dumping again",
                extra={"attempt": number, "of": STANDBY_CONFLICT_ATTEMPTS, "retry_in_seconds": round(pause, 1)},
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
