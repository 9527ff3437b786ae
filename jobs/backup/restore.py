"""Streaming restore: storage -> SHA-256 check -> decompression -> pg_restore, with nothing on disk.

pg_restore runs with --single-transaction and the last piece of the stream is held back until the
whole object's SHA-256 has matched the manifest. On a mismatch pg_restore is killed before it can
commit, so a corrupted backup never lands in the target database.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from common.config import DatabaseSettings
from common.db import connect, libpq_environment
from common.errors import CellarError, PermanentError
from common.reasons import Reason
from common.storage import ObjectStore, translate_storage_error
from jobs.backup.catalog import Manifest
from jobs.backup.compression import decompressor_for
from jobs.backup.pgtools import ClientTools, StderrTail, stop_process, tools_for_restore

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024
# The end of the archive pg_restore must not see before the checksum matched. 64 KiB covers the
# archive's end marker and the tail of its last data block whatever the compressor's framing.
HOLD_BACK = 64 * 1024


class BackupUnsound(PermanentError):
    """The backup itself is bad (not the server or the tools): it must no longer count as a backup."""


class ChecksumMismatch(BackupUnsound):
    reason = Reason.CHECKSUM_MISMATCH


class RestoreFailed(PermanentError):
    reason = Reason.RESTORE_FAILED


@dataclass(frozen=True)
class RestorePlan:
    """Which client tools restore a backup into which server."""

    tools: ClientTools
    server_version: str

    def describe(self) -> str:
        return f"{self.tools.describe('pg_restore')} into PostgreSQL {self.server_version}"


def plan_restore(server: DatabaseSettings, manifest: Manifest, *, application_name: str) -> RestorePlan:
    """Ask the target server its version and choose the tools (pgtools.tools_for_restore), before
    anything is written; `server` names any database on it the role may connect to."""
    with connect(server, application_name=application_name) as conn:  # libpq reports the version at login
        version_num, version = conn.info.server_version, conn.info.parameter_status("server_version") or ""
    tools = tools_for_restore(version_num, version, manifest.pg_dump_version, manifest.server_version)
    return RestorePlan(tools, version)


@dataclass(frozen=True)
class RestoreResult:
    bytes_read: int
    bytes_restored: int


def restore_from_storage(
    store: ObjectStore,
    manifest: Manifest,
    target: DatabaseSettings,
    plan: RestorePlan,
    *,
    options: Sequence[str] = (),
    application_name: str,
    on_progress: Callable[[int], None] = lambda _: None,
) -> RestoreResult:
    argv = [
        plan.tools.path("pg_restore"),
        "--single-transaction",
        "--exit-on-error",
        "--no-password",
        f"--dbname={target.dbname}",
        *options,
    ]
    env = {**os.environ, **libpq_environment(target, application_name=application_name)}
    env.pop("PGDATABASE", None)
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert process.stdin is not None
    assert process.stderr is not None
    stderr = StderrTail(process.stderr)
    digest = hashlib.sha256()
    decompressor = decompressor_for(manifest.compression)
    read = restored = 0
    held_back = bytearray()
    try:
        try:
            body = store.client.get_object(Bucket=store.bucket, Key=manifest.data_key)["Body"]
            for chunk in body.iter_chunks(CHUNK):
                digest.update(chunk)
                read += len(chunk)
                held_back += decompressor.decompress(chunk)
                if len(held_back) > HOLD_BACK:
                    release = len(held_back) - HOLD_BACK
                    process.stdin.write(held_back[:release])
                    del held_back[:release]
                    restored += release
                on_progress(read)
        except (ClientError, BotoCoreError) as exc:
            raise translate_storage_error(exc, "cannot read", store.bucket, manifest.data_key) from None
        except BrokenPipeError:
            code = process.wait()
            raise RestoreFailed(f"{plan.describe()} exited with code {code}: {stderr.error_lines()}") from None
        except Exception as exc:  # a decompressor error means the bytes are not what was written
            if isinstance(exc, CellarError):
                raise
            raise ChecksumMismatch(
                f"{manifest.data_key} cannot be decompressed ({exc}): the object is corrupted"
            ) from exc
        if read != manifest.bytes_stored or digest.hexdigest() != manifest.sha256:
            raise ChecksumMismatch(
                f"{manifest.data_key}: SHA-256 {digest.hexdigest()} ({read} bytes) does not match the manifest's "
                f"{manifest.sha256} ({manifest.bytes_stored} bytes); the object is corrupted and was not "
                "restored"
            )
        try:
            process.stdin.write(held_back)
            restored += len(held_back)
            process.stdin.close()
        except BrokenPipeError:
            pass
        code = process.wait()
        if code != 0:
            raise RestoreFailed(f"{plan.describe()} exited with code {code}: {stderr.error_lines()}")
        return RestoreResult(read, restored)
    finally:
        # Killing pg_restore before it read the end of the archive leaves its transaction uncommitted.
        stop_process(process)
