"""A restore from a copy of the dump staged on a volume, for `pg_restore --jobs` (spec.parallelism)."""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Callable

from common.errors import PermanentError, RestoreFailed
from common.reasons import Reason
from jobs.backup.compression import decompressor_for
from jobs.backup.restore.directory import staging_with_room
from jobs.backup.restore.plan import BackupSource, RestoreTarget
from jobs.backup.restore.stream import RestoreResult, StoredObject, decode_into


def restore_staged(
    source: BackupSource,
    target: RestoreTarget,
    *,
    staging: str,
    jobs: int,
    on_progress: Callable[[int], None] = lambda _: None,
) -> RestoreResult:
    """Download, decrypt and decompress the dump into a file under `staging`, check the object's SHA-256,
    then `pg_restore --jobs`; the file is removed whatever happens.

    The free space is checked before the download (InsufficientSpace). pg_restore -j cannot run in one
    transaction: callers restore into a database made for it, and drop it again on failure.
    """
    manifest = source.manifest
    directory = staging_with_room(
        staging,
        manifest.bytes_raw,
        f"the staged dump of {manifest.backup_id}",
        ", or leave parallelism and staging out to restore from the stream",
    )
    staged = directory / f"cellar-{manifest.backup_id}.pgdump"
    stored = StoredObject(source, on_progress)
    try:
        try:
            with staged.open("wb") as out:
                decompressor = decompressor_for(manifest.compression)

                def write(chunk: bytes) -> None:
                    out.write(decompressor.decompress(chunk))

                decode_into(stored, source, write)
        except OSError as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            raise PermanentError(
                f"writing the staged dump to {staging} failed ({exc.strerror}); nothing was restored",
                reason=Reason.INSUFFICIENT_SPACE if exc.errno == errno.ENOSPC else Reason.INVALID_SPEC,
            ) from None
        stored.check()  # before pg_restore reads a byte of it
        argv, env = target.pg_restore([f"--jobs={jobs}", str(staged)])
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, check=False
        )
        if done.returncode != 0:
            lines = [line for line in done.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
            raise RestoreFailed(
                f"{target.plan.describe()} (--jobs={jobs}) exited with code {done.returncode}: {' '.join(lines[-5:])}"
            )
        return RestoreResult(stored.read, staged.stat().st_size)
    finally:
        staged.unlink(missing_ok=True)
