"""The store verbs every provider gives the jobs (S3 in common.storage.s3, Azure Blob Storage in
common.storage.azure, Google Cloud Storage in common.storage.gcs), and the records they answer with. The jobs
see only these: each provider's SDK stays inside its module, and every failure leaves as one of cellar's
reasons."""

from __future__ import annotations

import hashlib
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from common.errors import CellarError, VerificationFailed
from common.storage_spec import StorageSpec

log = logging.getLogger("common.storage")

MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024
# The part size doubles every max_parts / GROWTH_STEPS parts: with 8 MiB parts and 10,000 parts that
# covers about 8 TiB, past S3's 5 TiB object limit, while the first 8 GiB use 8 MiB parts.
GROWTH_STEPS = 10


def part_size_for(part_number: int, base_size: int, max_parts: int, largest: int = MAX_PART_SIZE) -> int:
    """Size of part `part_number` (1-based): `base_size`, doubled every max_parts/GROWTH_STEPS parts."""
    step = max(1, max_parts // GROWTH_STEPS)
    return min(largest, max(MIN_PART_SIZE, base_size) << ((part_number - 1) // step))


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    """`data` in pieces of at most `size` bytes: a reader holds what it asked for, whatever the SDK fetched."""
    with memoryview(data) as view:
        for offset in range(0, len(data), max(1, size)):
            yield bytes(view[offset : offset + size])


def stored_differs(url: str, stored_size: int, expected_size: int, checksum: str) -> VerificationFailed:
    return VerificationFailed(
        f"{url}: the stored object does not match what was uploaded "
        f"(size {stored_size} of {expected_size}, checksum {checksum})"
    )


@dataclass(frozen=True)
class StoredObject:
    """What the store says it holds under a key."""

    size: int
    etag: str
    sha256: str | None  # base64, as x-amz-checksum-sha256; None where the store keeps none


@dataclass(frozen=True)
class ListedObject:
    """One object of a listing."""

    key: str
    size: int
    last_modified: datetime


@dataclass(frozen=True)
class PendingUpload:
    """A multipart upload that was started and neither completed nor aborted."""

    key: str
    upload_id: str
    initiated: datetime


@dataclass(frozen=True)
class UploadResult:
    key: str
    size: int
    sha256: str
    parts: int


@dataclass(frozen=True)
class Lock:
    """Why the store keeps an object cellar would delete: its retention date, or a legal hold."""

    until: datetime | None
    legal_hold: bool = False

    def describe(self) -> str:
        if self.legal_hold:
            return "kept by a legal hold (remove it to let cellar delete the object)"
        assert self.until is not None
        return f"kept until {self.until.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')} by object lock"


class Upload(ABC):
    """A stream of unknown length written as one object with bounded memory; nothing is visible until
    complete(). Use as a context manager: leaving it without complete() aborts."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._size = 0
        self._finished = False

    @property
    def bytes_written(self) -> int:
        return self._size

    def __enter__(self) -> Upload:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._finished:
            self.abort()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._finished:
            raise RuntimeError("write after the upload was completed or aborted")
        self._hash.update(data)
        self._size += len(data)
        self._write(data)

    def complete(self) -> UploadResult:
        """Send what is buffered and make the object visible; only now does it exist."""
        if self._finished:
            raise RuntimeError("the upload was already completed or aborted")
        parts = self._complete()
        self._finished = True
        return UploadResult(key=self.key, size=self._size, sha256=self._hash.hexdigest(), parts=parts)

    def abort(self) -> None:
        """Discard what was sent so that no partial object ever becomes visible. Never raises."""
        self._finished = True
        self._abort()

    key: str

    @abstractmethod
    def _write(self, data: bytes | bytearray | memoryview) -> None: ...

    @abstractmethod
    def _complete(self) -> int:
        """Make the object visible; the number of parts it was sent in."""

    @abstractmethod
    def _abort(self) -> None: ...


class PartedUpload(Upload):
    """An upload sent in numbered parts (S3 parts, Azure blocks), up to `concurrency` at a time, whose size
    grows with their count (part_size_for) so that `max_parts` hold any stream. Memory: the part being filled
    plus the parts in flight."""

    def __init__(
        self, key: str, *, part_size: int, max_parts: int, largest: int, concurrency: int, thread_name: str
    ) -> None:
        super().__init__()
        self.key = key
        self._part_size, self._max_parts, self._largest = part_size, max_parts, largest
        self._buffer = bytearray()
        self._parts: list[Future[Any]] = []
        self._pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix=thread_name)
        self._in_flight = threading.BoundedSemaphore(max(1, concurrency))

    def _next_part_size(self) -> int:
        return part_size_for(len(self._parts) + 1, self._part_size, self._max_parts, self._largest)

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data
        while len(self._buffer) >= self._next_part_size():
            size = self._next_part_size()
            with memoryview(self._buffer) as view:
                part = bytes(view[:size])  # one copy: a bytearray slice would make two
            del self._buffer[:size]
            self._send(part)

    def _send(self, body: bytes) -> None:
        number = len(self._parts) + 1
        self._before_part(number)
        for sent in self._parts:
            error = sent.exception() if sent.done() else None
            if isinstance(error, Exception):
                raise self._part_failed(error)  # an earlier part's failure stops the stream
        self._in_flight.acquire()
        future = self._pool.submit(self._send_part, number, body)
        future.add_done_callback(lambda _: self._in_flight.release())
        self._parts.append(future)

    def _sent_parts(self) -> list[Any]:
        """Send what is buffered as the last part and wait for every part: what each one's sending returned."""
        if self._buffer:
            self._send(bytes(self._buffer))
            self._buffer.clear()
        return [sent.result() for sent in self._parts]

    def _stop_sending(self) -> None:
        """Cancel the parts not sent yet and wait for those on their way: none lands after this."""
        for sent in self._parts:
            sent.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._buffer.clear()

    def _before_part(self, number: int) -> None:
        """Called before part `number` is handed to a thread (S3 starts its multipart upload here)."""

    @abstractmethod
    def _send_part(self, number: int, body: bytes) -> Any:
        """Send part `number`, on a thread of the pool."""

    @abstractmethod
    def _part_failed(self, error: Exception) -> CellarError:
        """A part's failure as cellar's error."""


class ObjectStore(ABC):
    """A bucket (or container) and prefix of one provider, with the verbs jobs need. Every verb raises
    cellar's errors only."""

    scheme = ""  # of the URLs in messages: s3, azure, gs

    def __init__(self, spec: StorageSpec, location: str | None = None) -> None:
        self.spec = spec
        self.bucket = spec.bucket
        self._location = location or spec.bucket  # after the scheme in url(): the bucket, or account/container

    def key(self, *parts: str) -> str:
        """A key under the resource's prefix."""
        return "/".join(p.strip("/") for p in (self.spec.prefix, *parts) if p)

    def url(self, key: str = "") -> str:
        """Where `key` (default: the bucket) is, for messages: s3://bucket/key, azure://account/container/key,
        gs://bucket/key."""
        return f"{self.scheme}://{self._location}/{key}" if key else f"{self.scheme}://{self._location}"

    def delete_leftover(self, key: str) -> bool:
        """Delete a crashed run's leftover; one an object lock still holds stays, logged, and goes in the
        first run after its lock ends. Whether it was deleted."""
        lock = self.delete(key)
        if lock is not None:
            log.info("leftover kept by object lock", extra={"key": key, "lock": lock.describe()})
        return lock is None

    @abstractmethod
    def put_verified(self, key: str, body: bytes, sha256_hex: str) -> None:
        """PUT `body` with a checksum the store checks on the way in, and make sure, from what the store
        answers, that it holds exactly `body`; VerificationFailed where it does not."""

    @abstractmethod
    def check_access(self) -> None:
        """Fail early, with a clear message, when the bucket is missing or the credentials are refused."""

    @abstractmethod
    def open_upload(self, key: str, *, content_type: str = "application/octet-stream", concurrency: int = 2) -> Upload:
        """A streaming upload of `key`, at most `concurrency` parts in flight."""

    @abstractmethod
    def put_bytes(self, key: str, body: bytes, *, content_type: str = "application/json") -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes of the object from `start` (fewer where it ends first)."""

    @abstractmethod
    def read_chunks(self, key: str, chunk_size: int) -> Iterator[bytes]:
        """The object's bytes as they arrive, about `chunk_size` at a time; a failure on the way (the
        connection dropped, the body cut short) is cellar's error, like one before the first byte."""

    @abstractmethod
    def stat(self, key: str) -> StoredObject:
        """Size, ETag and checksum of what the store holds under `key`."""

    @abstractmethod
    def pending_uploads(self, key_prefix: str) -> list[PendingUpload]:
        """Uploads under `key_prefix` left open by a killed run, which cost storage until aborted."""

    @abstractmethod
    def abort_upload(self, upload: PendingUpload) -> None: ...

    @abstractmethod
    def get_if_exists(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and a version token for put_if, or None where there is no such key."""

    @abstractmethod
    def put_if(self, key: str, body: bytes, *, etag: str | None) -> bool:
        """A conditional write: where `etag` is None only if `key` does not exist yet, else only if it is still
        the version get_if_exists gave that token. False where the condition failed (another writer got there
        first)."""

    @abstractmethod
    def list_objects(self, prefix: str) -> Iterator[ListedObject]: ...

    @abstractmethod
    def delete(self, key: str) -> Lock | None:
        """Delete `key` (a missing key is no error). A version the store keeps because a lock holds it stays,
        and its Lock is returned. None: deleted."""

    @abstractmethod
    def lock_of(self, key: str, version_id: str | None = None) -> Lock | None:
        """The lock that holds a version (default: the current one) now, if any."""
