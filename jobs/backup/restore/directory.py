"""Restoring a directory dump (a backup taken with spec.parallelism): every file downloaded, its SHA-256
checked, decrypted and decompressed into a staging directory, then `pg_restore --jobs` of that directory.
pg_restore reads nothing before every file matched the manifest, so a corrupted backup restores nothing."""

from __future__ import annotations

import errno
import hashlib
import shutil
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import quote

from common.encryption import CorruptedCiphertext, decrypt_stream
from common.errors import CellarError, ChecksumMismatch, DecryptionFailed, PermanentError, RestoreFailed
from common.reasons import Reason
from jobs.backup.catalog import DumpFile, Manifest
from jobs.backup.compression import decompressor_for
from jobs.backup.restore.plan import BackupSource, RestorePlan, RestoreTarget
from jobs.backup.status import human_size

CHUNK = 1024 * 1024
STAGING_MARGIN = 64 * 1024 * 1024  # beyond the files themselves: the filesystem's own overhead, and slack
TOC = "toc.dat"


@dataclass(frozen=True)
class Staging:
    """Where a restore stages a directory dump, and how many files (and pg_restore workers) go at once."""

    path: str
    jobs: int


def staging_with_room(staging: str, needed: int, what: str, advice: str = "") -> Path:
    """The staging directory, once it is usable and has room for `needed` bytes of `what` and the filesystem's
    slack (InsufficientSpace before any download when it has not); `advice` ends the message."""
    directory = Path(staging)
    try:
        free = shutil.disk_usage(directory).free
    except OSError as exc:
        raise PermanentError(
            f"spec.staging.path: {staging} is not usable ({exc.strerror}); mount a volume there",
            reason=Reason.INVALID_SPEC,
        ) from None
    needed += STAGING_MARGIN
    if free < needed:
        raise PermanentError(
            f"{staging} has {human_size(free)} free; {what} needs {human_size(needed)}. Give a larger volume{advice}",
            reason=Reason.INSUFFICIENT_SPACE,
        )
    return directory


def staged_directory(staging: Staging, manifest: Manifest) -> Path:
    """The directory the backup's files go into, once the volume is usable and has room for them all
    (InsufficientSpace before any download when it has not)."""
    root = staging_with_room(staging.path, manifest.dump.bytes_raw, f"the staged directory of {manifest.backup_id}")
    return root / f"cellar-{manifest.backup_id}.{quote(manifest.dump.database, safe='')}.dir"


class _Progress:
    def __init__(self, report: Callable[[int], None]) -> None:
        self.read = 0
        self._report = report

    def add(self, count: int) -> None:
        self.read += count  # from several threads: an estimate for progress only (the GIL keeps it whole)
        self._report(self.read)


def _fetch(source: BackupSource, described: DumpFile, into: Path, progress: _Progress) -> None:
    """One file: downloaded, decrypted when encrypted, decompressed into `into`; its object's SHA-256 and size
    checked against the manifest (ChecksumMismatch)."""
    manifest = source.manifest
    digest = hashlib.sha256()
    read = 0

    def chunks() -> Iterator[bytes]:
        nonlocal read
        for chunk in source.store.read_chunks(described.key, CHUNK):
            digest.update(chunk)
            read += len(chunk)
            progress.add(len(chunk))
            yield chunk

    decompressor = decompressor_for(manifest.compression)
    with into.open("wb") as out:
        _decode(source, described, chunks(), lambda chunk: _write(out, decompressor.decompress(chunk), into))
    if read != described.bytes_stored or digest.hexdigest() != described.sha256:
        raise ChecksumMismatch(
            f"{described.key}: SHA-256 {digest.hexdigest()} ({read} bytes) does not match the manifest's "
            f"{described.sha256} ({described.bytes_stored} bytes); the object is corrupted and nothing was restored"
        )


def _write(out: IO[bytes], data: bytes, path: Path) -> None:
    try:
        out.write(data)
    except OSError as exc:
        raise PermanentError(
            f"writing the staged file {path} failed ({exc.strerror}); nothing was restored",
            reason=Reason.INSUFFICIENT_SPACE if exc.errno == errno.ENOSPC else Reason.INVALID_SPEC,
        ) from None


def _decode(source: BackupSource, described: DumpFile, chunks: Iterator[bytes], sink: Callable[[bytes], None]) -> None:
    try:
        if source.manifest.encryption is None:
            for chunk in chunks:
                sink(chunk)
        elif source.identities is None:
            raise DecryptionFailed(f"backup {source.manifest.backup_id} is encrypted and no identity was given")
        else:
            decrypt_stream(chunks, source.identities, sink, what=described.key)
    except CorruptedCiphertext as exc:
        raise ChecksumMismatch(f"{exc}; the object is corrupted and nothing was restored") from None
    except CellarError:
        raise
    except Exception as exc:  # a decompressor error means the bytes are not what was written
        raise ChecksumMismatch(f"{described.key} cannot be decompressed ({exc}): the object is corrupted") from exc


def download(source: BackupSource, directory: Path, jobs: int, on_progress: Callable[[int], None]) -> int:
    """Every file of the backup's one dump into `directory` (made here), `jobs` at a time, each checked;
    the bytes read. The first failure stops the rest."""
    directory.mkdir(parents=True, exist_ok=False)
    progress = _Progress(on_progress)
    files = source.manifest.dump.files
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="directory-download") as pool:
        futures = [pool.submit(_fetch, source, f, directory / f.name, progress) for f in files]
        for future in futures:
            error = future.exception()
            if error is not None:
                for other in futures:
                    other.cancel()
                raise error
    return sum(f.bytes_stored for f in files)


def fetch_toc(source: BackupSource, directory: Path) -> None:
    """Only the table of contents (toc.dat), checked: what `pg_restore --list` of the directory reads."""
    toc = next((f for f in source.manifest.dump.files if f.name == TOC), None)
    if toc is None:
        raise ChecksumMismatch(f"backup {source.manifest.backup_id} lists no {TOC}: it is not a whole directory dump")
    directory.mkdir(parents=True, exist_ok=True)
    _fetch(source, toc, directory / TOC, _Progress(lambda _: None))


def list_directory(plan: RestorePlan, directory: Path, arguments: list[str]) -> str:
    """What pg_restore with `arguments` (--list, or -f - -L of entries without data) prints of a directory dump,
    reading its toc.dat only."""
    done = subprocess.run(
        [plan.tools.path("pg_restore"), *arguments, str(directory)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise RestoreFailed(
            f"{plan.tools.describe('pg_restore')} {' '.join(arguments)} exited with code {done.returncode}: "
            f"{done.stderr.decode('utf-8', 'replace').strip()[-500:]}"
        )
    return done.stdout.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class DirectoryRestore:
    bytes_read: int
    bytes_restored: int


def restore_directory(
    source: BackupSource, target: RestoreTarget, staging: Staging, on_progress: Callable[[int], None]
) -> DirectoryRestore:
    """Download and check every file into staging, then pg_restore --jobs (with one job: --single-transaction,
    so a failure leaves nothing); the staged directory is removed whatever happens."""
    manifest = source.manifest
    directory = staged_directory(staging, manifest)
    shutil.rmtree(directory, ignore_errors=True)  # a killed restore's copy
    try:
        read = download(source, directory, staging.jobs, on_progress)
        jobs = ["--single-transaction"] if staging.jobs == 1 else [f"--jobs={staging.jobs}"]
        argv, env = target.pg_restore([*jobs, str(directory)])
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, check=False
        )
        if done.returncode != 0:
            lines = [line for line in done.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
            raise RestoreFailed(
                f"{target.plan.describe()} ({' '.join(jobs)}) exited with code {done.returncode}: "
                f"{' '.join(lines[-5:])}"
            )
        return DirectoryRestore(read, manifest.dump.bytes_raw)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
