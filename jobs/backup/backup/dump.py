"""One consistent dump, streamed from pg_dump through compression (and age encryption, when the spec
asks for it) into a multipart upload.

Consistency: our own REPEATABLE READ transaction exports a snapshot that pg_dump imports
(`--snapshot`), and the row count of every table is taken in that same snapshot while pg_dump runs,
so the manifest's counts describe exactly the rows in the dump. Nothing touches local disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import psycopg

from common.db import RECOVERY_CONFLICT, connect, libpq_environment
from common.encryption import EXTENSION as ENCRYPTED_EXTENSION
from common.encryption import EncryptingWriter
from common.errors import DumpFailed, InsufficientPrivilege, PermanentError, RecoveryConflict
from common.failpoints import failpoint
from common.reasons import Reason
from common.secrets import DatabaseSettings
from common.storage import ObjectStore, Upload, UploadResult
from jobs.backup.backup.row_counts import RowCounter
from jobs.backup.catalog import DumpFile, TableCount
from jobs.backup.compression import compressor_for
from jobs.backup.pgtools import ClientTools, StderrTail, stop_process
from jobs.backup.settings import Compression, DumpOptions

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ServerFacts:
    version_num: int
    version: str
    standby: bool
    database_size: int


def cancelled_by_replay(source: DumpSource, stderr: str) -> bool:
    """Whether pg_dump failed because a hot standby's replay cancelled it: its own query, or the session that
    exported its snapshot before pg_dump imported it ("invalid snapshot identifier")."""
    return RECOVERY_CONFLICT in stderr or (source.standby and "invalid snapshot identifier" in stderr)


# Every kind of conflict with recovery a standby counts per database (PostgreSQL 9.1 and newer).
CONFLICTS_COUNTED = (
    "SELECT confl_tablespace + confl_lock + confl_snapshot + confl_bufferpin + confl_deadlock "
    "FROM pg_stat_database_conflicts WHERE datname = current_database()"
)


def recovery_conflicts(source: DumpSource) -> int | None:
    """The conflicts with recovery the standby has counted in the dumped database; None where it cannot say."""
    try:
        with connect(source.database, autocommit=True) as conn:
            row = conn.execute(CONFLICTS_COUNTED).fetchone()
    except psycopg.Error:
        return None
    counted = None if row is None else row[0]
    return counted if isinstance(counted, int) else None


def ended_by_replay(source: DumpSource, failed: DumpFailed, conflicts_before: int | None) -> bool:
    """Whether a dump that failed without saying why was a conflict with recovery all the same: replay ends a
    session that conflicts while idle in a transaction (FATAL), and pg_dump, busy writing, may then only report
    "server closed the connection unexpectedly". The standby's count of conflicts in the database says."""
    if not source.standby or conflicts_before is None or "server closed the connection" not in str(failed):
        return False
    after = recovery_conflicts(source)
    return after is not None and after > conflicts_before


def _dump_failure(source: DumpSource, code: int, stderr: StderrTail) -> Exception:
    said = f"{source.tools.describe('pg_dump')} exited with code {code} dumping PostgreSQL {source.server_version}"
    return dump_failure(source, said, stderr.text(), stderr.error_lines())


def dump_failure(source: DumpSource, said: str, stderr: str, error_lines: str) -> Exception:
    """What a pg_dump that failed (`said`) failed with: a recovery conflict (retried), a privilege the role lacks
    (permanent, naming the GRANT), or DumpFailed."""
    if cancelled_by_replay(source, stderr):
        return RecoveryConflict(f"{said}: {error_lines}")
    if "permission denied for" in stderr:
        user = source.database.user
        return InsufficientPrivilege(
            f"{said}: {error_lines}; role {user} may not read all it dumps: GRANT pg_read_all_data TO "
            f"{user} (PostgreSQL 14+; on a managed server as its admin role), or GRANT SELECT on what it names"
        )
    return DumpFailed(f"{said}: {error_lines}")


def server_facts(conn: psycopg.Connection[tuple[object, ...]]) -> ServerFacts:
    row = conn.execute(
        "SELECT current_setting('server_version_num')::int, current_setting('server_version'), "
        "pg_is_in_recovery(), pg_database_size(current_database())"
    ).fetchone()
    assert row is not None  # a SELECT without FROM always returns one row
    return ServerFacts(int(str(row[0])), str(row[1]), bool(row[2]), int(str(row[3])))


def export_snapshot(conn: psycopg.Connection[tuple[object, ...]]) -> str | None:
    """Open a REPEATABLE READ transaction and export its snapshot for pg_dump (None if refused)."""
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        return str(row[0]) if row else None
    except psycopg.Error as exc:  # a standby may refuse; counts are then taken beside the dump
        log.warning(
            "cannot export a snapshot; row counts are taken in a separate snapshot", extra={"error": str(exc).strip()}
        )
        conn.rollback()
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return None


def hold_snapshot_open(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Let the snapshot's transaction live as long as pg_dump runs, whatever the role's or database's
    timeouts say: it sits idle while pg_dump streams (idle_in_transaction_session_timeout), and lasts
    the whole dump (transaction_timeout, PostgreSQL 17 and newer). pg_dump sets the same for itself."""
    conn.execute("SET idle_in_transaction_session_timeout = 0")
    if conn.info.server_version >= 170000:
        conn.execute("SET transaction_timeout = 0")
    conn.commit()


def pump(descriptor: int, sink: Callable[[bytes], None], on_progress: Callable[[int], None]) -> int:
    """Copy a pipe into `sink` in 1 MiB reads until EOF; report the byte count about once a second."""
    total = 0
    last_report = time.monotonic()
    while chunk := os.read(descriptor, CHUNK):
        total += len(chunk)
        sink(chunk)
        if time.monotonic() - last_report > 1:
            last_report = time.monotonic()
            on_progress(total)
    return total


class CompressedUpload:
    """What a dump's bytes go through on their way to storage: compression, age encryption to
    `recipients` when there are any, the multipart upload. finish() ends the compressed (and encrypted)
    stream; complete() makes the object visible."""

    def __init__(self, upload: Upload, compression: Compression, recipients: Sequence[str]) -> None:
        self._upload = upload
        self._compressor = compressor_for(compression)
        self._encryptor = EncryptingWriter(recipients, upload.write) if recipients else None
        self._output = self._encryptor.write if self._encryptor is not None else upload.write

    def write(self, chunk: bytes) -> None:
        self._output(self._compressor.compress(chunk))

    def finish(self) -> None:
        self._output(self._compressor.flush())
        if self._encryptor is not None:
            self._encryptor.close()  # age's last chunk, which marks the end of the file

    def abort(self) -> None:
        if self._encryptor is not None:
            self._encryptor.abort()  # before the upload is aborted: its thread writes to it

    def complete(self) -> UploadResult:
        return self._upload.complete()


@dataclass(frozen=True)
class DumpSource:
    """What a dump reads: the database (its sessions carry its settings' application_name) and the client tools
    for its server."""

    database: DatabaseSettings
    tools: ClientTools
    server_version: str
    standby: bool = False  # a hot standby, which may cancel the dump for a conflict with recovery

    def environment(self, program: str) -> dict[str, str]:
        """The connection in libpq's variables for `program`, whose sessions say so in their application_name."""
        return {
            **os.environ,
            **libpq_environment(self.database, application_name=f"{self.database.application_name}-{program}"),
        }


@dataclass(frozen=True)
class SealedObject:
    """Where a dump's bytes go and how they are sealed: the object's key in the store, the compression, and
    the age recipients they are encrypted to (none: not encrypted)."""

    store: ObjectStore
    key: str
    compression: Compression
    recipients: Sequence[str] = ()
    parts_in_flight: int = 2  # of the multipart upload: memory is (1 + this) parts

    def suffix(self) -> str:
        """How each object's name ends: the compression's extension, then .age when encrypted."""
        return self.compression.extension + (ENCRYPTED_EXTENSION if self.recipients else "")


@contextlib.contextmanager
def compressed_upload(into: SealedObject) -> Iterator[CompressedUpload]:
    """A CompressedUpload of the object; on any error the upload is aborted and nothing becomes visible."""
    with into.store.open_upload(into.key, concurrency=into.parts_in_flight) as upload:
        writer = CompressedUpload(upload, into.compression, into.recipients)
        try:
            yield writer
        except BaseException:
            writer.abort()
            raise


@dataclass
class DumpResult:
    """A dump in storage: one object (`upload`), or a directory dump's objects (`files`, upload None)."""

    upload: UploadResult | None
    bytes_raw: int
    tables: list[TableCount]
    counts_in_dump_snapshot: bool
    files: tuple[DumpFile, ...] = ()

    @property
    def bytes_stored(self) -> int:
        return self.upload.size if self.upload is not None else sum(f.bytes_stored for f in self.files)

    @property
    def sha256(self) -> str:
        """The object's SHA-256; "" for a directory dump (each file has its own)."""
        return self.upload.sha256 if self.upload is not None else ""


def dump_to_storage(
    source: DumpSource, into: SealedObject, options: DumpOptions, *, on_progress: Callable[[int], None]
) -> DumpResult:
    """Dump with the source's pg_dump, compress, encrypt to the recipients (age) when there are any, upload;
    the object becomes visible only after pg_dump exited 0."""
    tools = source.tools
    snapshot_conn = connect(source.database)
    try:
        hold_snapshot_open(snapshot_conn)
        snapshot = export_snapshot(snapshot_conn)
        argv = [
            tools.path("pg_dump"),
            "--format=custom",
            "--compress=0",
            "--no-password",
            "--lock-wait-timeout=300000",
            *options.pg_dump_arguments(),
        ]
        if snapshot:
            argv.append(f"--snapshot={snapshot}")
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=source.environment("pg_dump")
        )
        assert process.stdout is not None
        assert process.stderr is not None
        stderr = StderrTail(process.stderr)
        counter = RowCounter(snapshot_conn, options)
        try:
            with compressed_upload(into) as upload:

                def sink(chunk: bytes) -> None:
                    counter.start()
                    upload.write(chunk)
                    failpoint("backup.dump-streaming")

                raw = pump(process.stdout.fileno(), sink, on_progress)
                code = process.wait()
                if code != 0:
                    raise _dump_failure(source, code, stderr)
                upload.finish()
                tables = counter.result()
                result = upload.complete()
        finally:
            stop_process(process)
            counter.stop()
        on_progress(raw)
        return DumpResult(result, raw, tables, snapshot is not None)
    except psycopg.Error as exc:  # the snapshot's session; on a standby, replay may have ended it
        if RECOVERY_CONFLICT in str(exc):
            raise RecoveryConflict(f"the standby ended the dump's snapshot: {' '.join(str(exc).split())}") from exc
        raise
    finally:
        with contextlib.suppress(psycopg.Error):  # a session replay (or the network) ended has nothing to undo
            snapshot_conn.rollback()
        snapshot_conn.close()


@dataclass(frozen=True)
class GlobalsResult:
    upload: UploadResult
    bytes_raw: int


def dump_globals(source: DumpSource, into: SealedObject, *, no_role_passwords: bool) -> GlobalsResult:
    """The server's roles, memberships, role settings and tablespaces (`pg_dumpall --globals-only`), as
    SQL, compressed (and encrypted) into the object like the dump."""
    tools, database = source.tools, source.database
    argv = [tools.path("pg_dumpall"), "--globals-only", "--no-password", f"--database={database.dbname}"]
    if no_role_passwords:
        argv.append("--no-role-passwords")
    env = source.environment("pg_dumpall")
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert process.stdout is not None
    assert process.stderr is not None
    stderr = StderrTail(process.stderr)
    try:
        with compressed_upload(into) as upload:
            raw = pump(process.stdout.fileno(), upload.write, lambda _: None)
            code = process.wait()
            if code != 0:
                detail = stderr.error_lines()
                if "pg_authid" in detail:
                    raise PermanentError(
                        f"{tools.describe('pg_dumpall')} --globals-only cannot read role passwords (pg_authid) as "
                        f"{database.user}: connect as a superuser, or set spec.globals.noRolePasswords: true "
                        f"({detail})",
                        reason=Reason.INSUFFICIENT_PRIVILEGE,
                    )
                raise DumpFailed(f"{tools.describe('pg_dumpall')} --globals-only exited with code {code}: {detail}")
            upload.finish()
            return GlobalsResult(upload.complete(), raw)
    finally:
        stop_process(process)
