"""A parallel dump (spec.parallelism): `pg_dump --format=directory --jobs=N` into a staging volume, each file
compressed, encrypted (age) when the spec asks, and uploaded as its own object: the upload follows the file
while pg_dump writes it, and its object is completed as soon as the file is complete; the file is then deleted
from staging, so that the volume holds a window of the dump, not all of it.

When a file is complete: pg_dump's workers write each table's file whole and close it before they take the next
table, and no file is opened again once closed; toc.dat is written last, by the leader, as it exits. A data file
is complete when, at two polls in a row, it had the same size and no process of pg_dump's tree (the leader and
its forked workers, read from /proc/<pid>/fd) held it open; its upload then reads it to its end and completes
the object. toc.dat and whatever is left are taken after pg_dump exited 0. The run's snapshot and failures are
those of the streamed dump (dump.py); its row counts are read from the files as they are uploaded
(file_counts.py), not by counting each table again.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import psycopg

from common.db import RECOVERY_CONFLICT, connect
from common.errors import DumpFailed, PermanentError, RecoveryConflict
from common.failpoints import failpoint
from common.reasons import Reason
from jobs.backup.backup.dump import (
    CHUNK,
    DumpResult,
    DumpSource,
    SealedObject,
    compressed_upload,
    dump_failure,
    export_snapshot,
    hold_snapshot_open,
)
from jobs.backup.backup.file_counts import LineTally, counts_from_files, table_of_contents, tally_for
from jobs.backup.catalog import DumpFile
from jobs.backup.pgtools import StderrTail, stop_process
from jobs.backup.settings import DumpOptions

log = logging.getLogger(__name__)
POLL_SECONDS = 0.2
TOC = "toc.dat"  # written last, by pg_dump's leader as it exits
ENOSPC_TEXT = "No space left on device"


@dataclass(frozen=True)
class DirectoryTarget:
    """Where a directory dump goes: `staging`, the directory pg_dump makes and writes (removed afterwards);
    `into`, whose key is the prefix every file's object starts with; `jobs`, pg_dump's workers and the most
    files uploaded at once."""

    staging: Path
    into: SealedObject
    jobs: int

    def key_of(self, name: str) -> str:
        return f"{self.into.key}{name}{self.into.suffix()}"


def file_sizes(directory: Path) -> dict[str, int]:
    """The files in `directory` and their sizes; one an upload deletes meanwhile is left out."""
    sizes = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file():
                    sizes[entry.name] = entry.stat().st_size
    return sizes


def processes_of(pid: int) -> list[int]:
    """`pid` and every process descended from it (pg_dump's forked workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                # pid (comm) state ppid ...: comm may hold spaces and parentheses, so read after the last ')'
                parent = int(stat.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # it ended while we looked
        children.setdefault(parent, []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(children.get(current, []))
    return found


def open_paths(pid: int) -> set[str]:
    """The files that `pid` and its descendants hold open."""
    paths = set()
    for process in processes_of(pid):
        directory = f"/proc/{process}/fd"
        try:
            descriptors = os.listdir(directory)
        except OSError:
            continue
        for descriptor in descriptors:
            with contextlib.suppress(OSError):
                paths.add(os.readlink(f"{directory}/{descriptor}"))
    return paths


@dataclass
class CompletionWatch:
    """Tells which files of pg_dump's directory are complete (see the module's docstring)."""

    directory: Path
    pid: int
    _sizes: dict[str, int] = field(default_factory=dict)  # each closed file's size at the last poll
    seen: set[str] = field(default_factory=set)  # every file but toc.dat the last poll listed

    def complete(self) -> list[Path]:
        """Files that were closed and of the same size at this poll and the one before."""
        listed = file_sizes(self.directory)  # before the descriptors
        self.seen = {name for name in listed if name != TOC}
        held = open_paths(self.pid)
        base = os.path.realpath(self.directory)
        ready, sizes = [], {}
        for name, size in listed.items():
            if name == TOC or os.path.join(base, name) in held:
                continue
            if self._sizes.get(name) == size:
                ready.append(self.directory / name)
            sizes[name] = size
        self._sizes = sizes
        return ready


class FileUploads:
    """Uploads pg_dump's files at most `jobs` at a time, each compressed (and encrypted) on its own: an upload
    starts when its file is first seen and follows it as pg_dump writes (so compression and the upload overlap
    the dump), and ends once the file is complete (`mark_complete`) and read to its end; the file is deleted
    from staging once its object is complete. `written` collects every key as its upload starts; `tallies`, the
    lines of each data file read (file_counts.py)."""

    def __init__(self, target: DirectoryTarget, written: list[str], on_progress: Callable[[int], None]) -> None:
        self._target = target
        # One zstd thread a file (the files are the parallelism) and one part in flight a file: memory is
        # jobs x 2 parts, about what one stream's upload holds at jobs=2.
        self._sealed = replace(target.into, compression=replace(target.into.compression, workers=1), parts_in_flight=1)
        self._written = written
        self._on_progress = on_progress
        self._pool = ThreadPoolExecutor(max_workers=target.jobs, thread_name_prefix="directory-upload")
        self._futures: dict[str, Future[DumpFile]] = {}
        self._lock = threading.Lock()
        self._complete: set[str] = set()
        self._everything_complete = False  # pg_dump exited 0: no file grows any more
        self._grown = threading.Condition()
        self._stop = threading.Event()
        self.tallies: dict[str, LineTally] = {}
        self.raw = 0
        self.peak_staged = 0  # the most bytes staging held at a poll (what the benchmark reports)

    def submit(self, path: Path) -> None:
        if path.name in self._futures:
            return
        key = self._target.key_of(path.name)
        log.debug("file seen; uploading it as pg_dump writes it", extra={"file": path.name})
        self._written.append(key)
        tally = tally_for(path.name)
        if tally is not None:
            self.tallies[path.name] = tally
        self._futures[path.name] = self._pool.submit(self._upload, path, key, tally)

    def mark_complete(self, paths: list[Path], *, everything: bool = False) -> None:
        """These files are complete (CompletionWatch); `everything`: pg_dump exited 0, so all of them are."""
        with self._grown:
            self._complete.update(p.name for p in paths)
            self._everything_complete = self._everything_complete or everything
            self._grown.notify_all()

    def _is_complete(self, name: str) -> bool:
        with self._grown:
            return self._everything_complete or name in self._complete

    def _upload(self, path: Path, key: str, tally: LineTally | None) -> DumpFile:
        raw = 0
        with compressed_upload(replace(self._sealed, key=key)) as upload, path.open("rb") as source:
            while not self._stop.is_set():
                complete = self._is_complete(path.name)  # before the read: then an empty read is the end
                chunk = source.read(CHUNK)
                if chunk:
                    raw += len(chunk)
                    upload.write(chunk)
                    if tally is not None:
                        tally.add(chunk)
                elif complete:
                    break
                else:
                    with self._grown:
                        self._grown.wait(POLL_SECONDS)
            if self._stop.is_set():
                raise DumpFailed(f"the dump failed while {path.name} was being uploaded; its upload was abandoned")
            upload.finish()
            result = upload.complete()
        path.unlink()
        failpoint("backup.directory-file-uploaded")
        with self._lock:
            self.raw += raw
            self._on_progress(self.raw)
        return DumpFile(path.name, key, raw, result.size, result.sha256)

    def first_error(self) -> BaseException | None:
        for future in self._futures.values():
            if future.done() and future.exception() is not None:
                return future.exception()
        return None

    def note_staged(self, directory: Path) -> None:
        self.peak_staged = max(self.peak_staged, sum(file_sizes(directory).values()))

    def results(self) -> tuple[DumpFile, ...]:
        """Every file's object once all are complete (sorted by name); the first failure otherwise."""
        files = [future.result() for future in self._futures.values()]
        return tuple(sorted(files, key=lambda f: f.name))

    def close(self) -> None:
        """Drop what has not started; wait for the uploads under way (a failed run discards their objects)."""
        self._stop.set()  # an upload following a file that will never be complete gives up
        for future in self._futures.values():
            future.cancel()
        with self._grown:
            self._grown.notify_all()
        self._pool.shutdown(wait=True)


def dump_directory(
    source: DumpSource,
    target: DirectoryTarget,
    options: DumpOptions,
    *,
    written: list[str],
    on_progress: Callable[[int], None],
) -> DumpResult:
    """pg_dump --format=directory --jobs into staging in the run's snapshot; each file uploaded as it is complete,
    its rows counted as it is read. Staging is emptied whatever happens; a failure leaves objects named in `written`
    for the caller to discard. The counts are those of the dump's files, also on a standby that refused to export
    a snapshot (a streamed dump's are then taken in a snapshot of their own)."""
    snapshot_conn = connect(source.database)
    try:
        hold_snapshot_open(snapshot_conn)
        snapshot = export_snapshot(snapshot_conn)
        uploads = FileUploads(target, written, on_progress)
        try:
            with _pg_dump(source, target, options, snapshot) as (process, stderr):
                _watch(process, target, uploads)
                code = process.wait()
                if code != 0:
                    raise _failure(source, target, code, stderr.text(), stderr.error_lines())
            contents = table_of_contents(source.tools, target.staging)  # before toc.dat's upload deletes it
            uploads.mark_complete([], everything=True)
            for path in sorted(target.staging.iterdir()):  # toc.dat, and whatever the polls had not seen
                uploads.submit(path)
            files = uploads.results()
            tables = counts_from_files(snapshot_conn, options, contents, uploads.tallies)
        finally:
            uploads.close()
            shutil.rmtree(target.staging, ignore_errors=True)
        log.info(
            "directory dump uploaded",
            extra={"files": len(files), "bytes_raw": uploads.raw, "peak_staged_bytes": uploads.peak_staged},
        )
        return DumpResult(None, uploads.raw, tables, True, files)  # the counts are the files'
    except psycopg.Error as exc:  # the snapshot's session; on a standby, replay may have ended it
        if RECOVERY_CONFLICT in str(exc):
            raise RecoveryConflict(f"the standby ended the dump's snapshot: {' '.join(str(exc).split())}") from exc
        raise
    finally:
        with contextlib.suppress(psycopg.Error):
            snapshot_conn.rollback()
        snapshot_conn.close()


@contextlib.contextmanager
def _pg_dump(
    source: DumpSource, target: DirectoryTarget, options: DumpOptions, snapshot: str | None
) -> Iterator[tuple[subprocess.Popen[bytes], StderrTail]]:
    argv = [
        source.tools.path("pg_dump"),
        "--format=directory",
        f"--jobs={target.jobs}",
        f"--file={target.staging}",
        "--compress=0",  # cellar compresses each file: one format for every major (docs/design.md)
        "--no-password",
        "--lock-wait-timeout=300000",
        *options.pg_dump_arguments(),
        *([f"--snapshot={snapshot}"] if snapshot else []),
    ]
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=source.environment("pg_dump"),
    )
    assert process.stderr is not None
    try:
        yield process, StderrTail(process.stderr)
    finally:
        stop_process(process)


def _watch(process: subprocess.Popen[bytes], target: DirectoryTarget, uploads: FileUploads) -> None:
    """Until pg_dump exits: hand each complete file to the uploads; stop at the first failed upload."""
    watch = CompletionWatch(target.staging, process.pid)
    while process.poll() is None:
        error = uploads.first_error()
        if error is not None:
            raise error
        uploads.mark_complete(watch.complete())
        uploads.note_staged(target.staging)
        for name in sorted(watch.seen):
            uploads.submit(target.staging / name)
        time.sleep(POLL_SECONDS)
    uploads.note_staged(target.staging)


def _failure(source: DumpSource, target: DirectoryTarget, code: int, stderr: str, lines: str) -> Exception:
    what = f"{source.tools.describe('pg_dump')} --jobs={target.jobs} exited with code {code} dumping PostgreSQL "
    if ENOSPC_TEXT in stderr:
        return PermanentError(
            f"{what}{source.server_version}: the staging volume {target.staging.parent} filled up ({lines}). "
            "Give it more room (the chart's staging.sizeLimit, or a larger PVC in staging.claimName), or lower "
            "spec.parallelism; nothing was published",
            reason=Reason.INSUFFICIENT_SPACE,
        )
    return dump_failure(source, f"{what}{source.server_version}", stderr, lines)


def staging_error(staging: str, exc: OSError) -> PermanentError:
    """A staging volume that cannot be written (spec.staging.path)."""
    return PermanentError(
        f"spec.staging.path: {staging} is not usable ({exc.strerror}); mount a writable volume there "
        "(the chart's staging: entry)",
        reason=Reason.INSUFFICIENT_SPACE if exc.errno == errno.ENOSPC else Reason.INVALID_SPEC,
    )
