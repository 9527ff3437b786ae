"""Streaming restore: storage -> SHA-256 check -> decryption -> decompression -> pg_restore, with
nothing on disk.

pg_restore runs with --single-transaction and the last piece of the stream is held back until the
whole object's SHA-256 has matched the manifest. On a mismatch pg_restore is killed before it can
commit, so a corrupted backup never lands in the target database. Into a server older than the tools that
can read the backup (a dump of 17 or 18 into 16 or older), pg_restore writes SQL (`-f -`) instead, which
goes without the settings the server does not know into the server's psql, in one transaction: the same
hold-back keeps it from committing before the checksum matched. An encrypted backup's identity is
checked on the object's header (check_decryptable) before the caller writes anything; a chunk that
fails age's authentication later is a corrupted object like any other.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from common.encryption import HEADER_PROBE_BYTES, CorruptedCiphertext, decrypt_stream
from common.errors import CellarError, ChecksumMismatch, DecryptionFailed, RestoreFailed
from jobs.backup.compression import Decompressor, decompressor_for
from jobs.backup.pgtools import StderrTail, stop_process
from jobs.backup.restore.directory import fetch_toc, list_directory
from jobs.backup.restore.plan import BackupSource, RestorePlan, RestoreTarget
from jobs.backup.restore.sql import SqlRestore

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024
# The end of the archive pg_restore must not see before the checksum matched. 64 KiB covers the
# archive's end marker and the tail of its last data block whatever the compressor's framing.
HOLD_BACK = 64 * 1024
PREFETCH_CHUNKS = 8  # of CHUNK each: how far the download may run ahead of pg_restore


def check_decryptable(source: BackupSource, *, field: str) -> None:
    """Before anything is written: an encrypted backup needs an identity, and one of those given must
    open its header (the first HEADER_PROBE_BYTES bytes, read on their own). `field` is where the spec
    names the identity."""
    manifest, identities = source.manifest, source.identities
    if manifest.encryption is None:
        return
    if identities is None:
        raise DecryptionFailed(
            f"backup {manifest.backup_id} is encrypted ({manifest.encryption.format}, to "
            f"{', '.join(manifest.encryption.recipients)}); name the Secret holding an identity of one of "
            f"these recipients in {field}"
        )
    dump = manifest.dumps[0]
    first = dump.files[0].key if dump.files else dump.data_key  # a directory dump: its first file's object
    head = source.store.get_range(first, 0, HEADER_PROBE_BYTES)
    with contextlib.suppress(CorruptedCiphertext):  # the header opened; the probe ends before the object
        decrypt_stream([head], identities, lambda _: None, what=first)


class HeldBackSink:
    """Decompresses what it is given into pg_restore's stdin, always keeping the last HOLD_BACK bytes."""

    def __init__(self, decompressor: Decompressor, stdin: Any) -> None:
        self._decompressor = decompressor
        self._stdin = stdin
        self.held_back = bytearray()
        self.restored = 0

    def __call__(self, chunk: bytes) -> None:
        data = self._decompressor.decompress(chunk)
        if len(data) < HOLD_BACK:
            self.held_back += data
            if len(self.held_back) > HOLD_BACK:
                release = len(self.held_back) - HOLD_BACK
                self._stdin.write(self.held_back[:release])
                del self.held_back[:release]
                self.restored += release
            return
        # A large piece goes out as it is but for its last HOLD_BACK bytes, without copying it around.
        view = memoryview(data)
        self._stdin.write(self.held_back)
        self._stdin.write(view[:-HOLD_BACK])
        self.restored += len(self.held_back) + len(data) - HOLD_BACK
        self.held_back = bytearray(view[-HOLD_BACK:])


class StoredObject:
    """The backup's object as it streams in, with the SHA-256 and size of what came so far. A backup of
    several databases is read one database at a time (Manifest.for_database)."""

    def __init__(self, source: BackupSource, on_progress: Callable[[int], None]) -> None:
        self._store, self._dump, self._on_progress = source.store, source.manifest.dump, on_progress
        self._digest = hashlib.sha256()
        self._stream: Iterator[bytes] | None = None
        self.read = 0

    def chunks(self) -> Iterator[bytes]:
        """The object's bytes, once; a reader that stops early may finish the download with drain()."""
        if self._stream is None:
            self._stream = self._download()
        return self._stream

    def _download(self) -> Iterator[bytes]:
        """The object's chunks, read ahead on a thread of its own (at most PREFETCH_CHUNKS), so that the
        download overlaps the decompression and the writes into pg_restore."""
        chunks = self._store.read_chunks(self._dump.data_key, CHUNK)
        fetched: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=PREFETCH_CHUNKS)
        stop = threading.Event()

        def fetch() -> None:
            try:
                for chunk in chunks:
                    if stop.is_set():
                        return
                    fetched.put(chunk)
            except BaseException as exc:  # noqa: BLE001 (handed to the reader, which raises it)
                fetched.put(exc)
                return
            fetched.put(None)

        threading.Thread(target=fetch, name="restore-download", daemon=True).start()
        try:
            while (item := fetched.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                self._digest.update(item)
                self.read += len(item)
                self._on_progress(self.read)
                yield item
        finally:
            stop.set()
            with contextlib.suppress(queue.Empty):  # free a fetch waiting on a full queue
                while True:
                    fetched.get_nowait()

    def drain(self) -> None:
        """Read what is left of the object, for its checksum only."""
        for _ in self.chunks():
            pass

    def check(self) -> None:
        """The whole object matched the manifest, or ChecksumMismatch."""
        dump, digest = self._dump, self._digest.hexdigest()
        if self.read != dump.bytes_stored or digest != dump.sha256:
            raise ChecksumMismatch(
                f"{dump.data_key}: SHA-256 {digest} ({self.read} bytes) does not match the manifest's "
                f"{dump.sha256} ({dump.bytes_stored} bytes); the object is corrupted and was not restored"
            )


def decode_into(stored: StoredObject, source: BackupSource, sink: Callable[[bytes], None]) -> None:
    """Stream the object, decrypted when it is encrypted, into `sink`; errors of the bytes themselves
    (a chunk that fails age's authentication, a frame that does not decompress) are ChecksumMismatch."""
    manifest, identities = source.manifest, source.identities
    try:
        if manifest.encryption is None:
            for chunk in stored.chunks():
                sink(chunk)
        elif identities is None:
            raise DecryptionFailed(f"backup {manifest.backup_id} is encrypted and no identity was given")
        else:
            decrypt_stream(stored.chunks(), identities, sink, what=manifest.data_key)
    except CorruptedCiphertext as exc:
        raise ChecksumMismatch(f"{exc}; the object is corrupted and was not restored") from None
    except (CellarError, BrokenPipeError):
        raise
    except Exception as exc:  # a decompressor error means the bytes are not what was written
        raise ChecksumMismatch(f"{manifest.data_key} cannot be decompressed ({exc}): the object is corrupted") from exc


class _Decompressing:
    """Decompresses what it is given into a pipe, as it comes (the table-of-contents pass)."""

    def __init__(self, decompressor: Decompressor, stdin: Any) -> None:
        self._decompressor = decompressor
        self._stdin = stdin

    def __call__(self, chunk: bytes) -> None:
        self._stdin.write(self._decompressor.decompress(chunk))


def read_toc(source: BackupSource, plan: RestorePlan) -> str:
    """The backup's table of contents with dependencies (`pg_restore -l -v`), and the whole object's
    SHA-256 checked against the manifest (ChecksumMismatch).

    A custom-format archive starts with its table of contents, so pg_restore exits after the first few
    KiB; the rest is read for the checksum only. A partial restore needs the check up front: pg_restore
    commits once it has restored what the list names, which may be before the end of the stream. A directory
    dump's toc.dat is read alone (its other files are checked when they are staged, before pg_restore runs)."""
    return read_head(source, plan, ["--list", "--verbose"], checksum=True)


def read_head(source: BackupSource, plan: RestorePlan, arguments: list[str], *, checksum: bool) -> str:
    """What pg_restore with `arguments` prints from the archive's head, reading it on stdin: the table of
    contents (`--list`), or the SQL of entries that carry no data (`-f - -L list`), which it writes from the
    table of contents alone. With `checksum` the rest of the object is read and checked against the
    manifest; without, the download stops where pg_restore stopped reading (the restore checks it later).
    Of a directory dump, only its toc.dat is fetched (checked) and read."""
    if source.manifest.dump.directory:
        with tempfile.TemporaryDirectory(prefix="cellar-toc-") as scratch:
            fetch_toc(source, Path(scratch) / "dump")
            return list_directory(plan, Path(scratch) / "dump", arguments)
    argv = [plan.tools.path("pg_restore"), *arguments]
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    stderr = StderrTail(process.stderr)
    stdout = process.stdout
    listing: list[bytes] = []  # read on a thread: a long listing would fill the pipe while we write
    reader = threading.Thread(target=lambda: listing.append(stdout.read()), daemon=True)
    reader.start()
    stored = StoredObject(source, lambda _: None)
    try:
        try:
            decode_into(stored, source, _Decompressing(decompressor_for(source.manifest.compression), process.stdin))
            process.stdin.close()
        except BrokenPipeError:
            pass  # pg_restore read what it needed and exited
        if checksum:
            stored.drain()
            stored.check()
        code = process.wait()
        reader.join()
        if code != 0:
            raise RestoreFailed(
                f"{plan.tools.describe('pg_restore')} {' '.join(arguments)} exited with code {code}: "
                f"{stderr.error_lines()}"
            )
        return b"".join(listing).decode("utf-8", errors="replace")
    finally:
        stop_process(process)


class RestoreProcess(Protocol):
    """What restore_from_storage streams the archive into: pg_restore connected to the server, or SqlRestore."""

    @property
    def stdin(self) -> Any: ...

    def finish(self) -> None:
        """Wait for the restore to end; RestoreFailed where it failed."""
        ...

    def stop(self) -> None:
        """Kill what still runs; never commits."""
        ...


class PgRestore:
    """pg_restore --single-transaction connected to the server, reading the archive on stdin."""

    def __init__(self, target: RestoreTarget):
        self.plan = target.plan
        argv, env = target.pg_restore(["--single-transaction"])
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        assert self.process.stderr is not None
        self.errors = StderrTail(self.process.stderr)

    @property
    def stdin(self) -> Any:
        return self.process.stdin

    def finish(self) -> None:
        code = self.process.wait()
        if code != 0:
            raise RestoreFailed(f"{self.plan.describe()} exited with code {code}: {self.errors.error_lines()}")

    def stop(self) -> None:
        stop_process(self.process)


@dataclass(frozen=True)
class RestoreResult:
    bytes_read: int
    bytes_restored: int


def restore_from_storage(
    source: BackupSource,
    target: RestoreTarget,
    *,
    on_progress: Callable[[int], None] = lambda _: None,
    verified: bool = False,
) -> RestoreResult:
    """Stream the backup into pg_restore; `source.identities` decrypt it when it is encrypted (check_decryptable
    has said they open it). `verified`: the object's checksum was checked already (read_toc, for a
    partial restore, where pg_restore may finish and commit before the end of the stream)."""
    manifest, plan = source.manifest, target.plan
    process: RestoreProcess = SqlRestore(target) if plan.through_sql else PgRestore(target)
    sink = HeldBackSink(decompressor_for(manifest.compression), process.stdin)
    stored = StoredObject(source, on_progress)
    try:
        try:
            decode_into(stored, source, sink)
        except BrokenPipeError:
            process.finish()  # it stopped reading: a failure raises here
            if verified:
                return RestoreResult(stored.read, sink.restored)  # it restored all that its list names
            raise RestoreFailed(f"{plan.describe()} stopped before the end of the backup") from None
        stored.check()
        try:
            process.stdin.write(sink.held_back)
            sink.restored += len(sink.held_back)
            process.stdin.close()
        except BrokenPipeError:
            pass
        process.finish()
        return RestoreResult(stored.read, sink.restored)
    finally:
        # Stopped before it read the end of the archive, the restore's transaction stays uncommitted.
        process.stop()
