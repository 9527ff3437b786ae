"""S3-compatible object storage: a client from the resource's settings and a streaming writer.

`StreamingUpload` takes a stream of unknown length and uploads it as one multipart upload with
bounded memory. The part size grows with the part count, so a multi-terabyte stream still fits in
`max_parts` parts (10,000 on AWS). It hashes what it writes with SHA-256 and aborts the multipart
upload on any failure, so a partial object never becomes visible. A stream smaller than one part is
sent with a single PutObject.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from common.config import StorageCredentials, StorageSpec
from common.errors import CellarError, ConnectionFailed, Forbidden, PermanentError, RetryableError
from common.reasons import Reason
from common.redact import redact

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = Any

log = logging.getLogger(__name__)

MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024
# The part size doubles every max_parts / GROWTH_STEPS parts: with 8 MiB parts and 10,000 parts that
# covers about 8 TiB, past S3's 5 TiB object limit, while the first 8 GiB use 8 MiB parts.
GROWTH_STEPS = 10


RETRY_ATTEMPTS = 5
RETRIED_STATUSES = (429, 500, 502, 503, 504)


def build_client(spec: StorageSpec, credentials: StorageCredentials, *, concurrency: int = 16) -> S3Client:
    """A boto3 S3 client for AWS, MinIO, Ceph RGW or IBM COS, configured from the spec.

    `concurrency`: the most requests the caller makes at once. The client keeps that many connections
    open; with fewer, each request beyond them opens a connection, closes it afterwards, and urllib3
    logs "Connection pool is full, discarding connection" for it.
    """
    checksum_mode: Literal["when_supported", "when_required"] = (
        "when_required" if spec.checksum_when_required else "when_supported"
    )
    config = Config(
        region_name=spec.region,
        s3={"addressing_style": "path" if spec.force_path_style else "auto"},
        retries={"max_attempts": RETRY_ATTEMPTS, "mode": "standard"},
        request_checksum_calculation=checksum_mode,
        response_checksum_validation=checksum_mode,
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=concurrency,
    )
    verify: bool | str | None = None
    if spec.insecure_skip_tls_verify:
        verify = False
    elif credentials.ca_bundle_pem:
        with tempfile.NamedTemporaryFile("w", prefix="cellar-s3-ca-", suffix=".pem", delete=False) as ca:
            ca.write(credentials.ca_bundle_pem)
        verify = ca.name
    session = boto3.session.Session()
    client = session.client(
        "s3",
        endpoint_url=spec.endpoint,
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
        aws_session_token=credentials.session_token,
        config=config,
        verify=verify,
    )
    client.meta.events.register_last("needs-retry.s3", log_retryable_failure)
    return client


def log_retryable_failure(
    response: Any = None, caught_exception: Exception | None = None, attempts: int = 0, operation: Any = None, **_: Any
) -> None:
    """Say in the log what botocore is about to retry (its standard mode retries throttling, 5xx and
    dropped connections up to 5 attempts, with jittered backoff): one line per failed attempt."""
    if caught_exception is not None:
        what = type(caught_exception).__name__
    elif response is not None and int(response[0].status_code) in RETRIED_STATUSES:
        what = f"{response[0].status_code} {(response[1].get('Error') or {}).get('Code', '')}".strip()
    else:
        return
    log.warning(
        "storage request failed; retrying" if attempts < RETRY_ATTEMPTS else "storage request failed; no attempts left",
        extra={"operation": getattr(operation, "name", ""), "attempt": attempts, "of": RETRY_ATTEMPTS, "error": what},
    )


def translate_storage_error(exc: Exception, action: str, bucket: str, key: str = "") -> CellarError:
    """A storage failure as a cellar error whose message says what to fix."""
    where = f"s3://{bucket}/{key}" if key else f"bucket {bucket!r}"
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        detail = redact(str(exc.response.get("Error", {}).get("Message", "") or code))
        if code in ("NoSuchBucket",) or (status == 404 and not key):
            return PermanentError(
                f"{action} {where}: the bucket does not exist; create it or fix spec.storage.bucket",
                reason=Reason.BUCKET_NOT_FOUND,
            )
        if (
            code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled")
            or status == 403
        ):
            return Forbidden(
                f"{action} {where}: access denied ({code}: {detail}); check the access keys "
                "in the storage Secret and the bucket policy",
                reason=Reason.STORAGE_ACCESS_DENIED,
            )
        if status >= 500 or code in ("SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError"):
            return RetryableError(
                f"{action} {where}: the store is failing ({code}: {detail})", reason=Reason.UPLOAD_FAILED
            )
        return PermanentError(f"{action} {where}: {code}: {detail}", reason=Reason.UPLOAD_REJECTED)
    if isinstance(exc, BotoCoreError):
        return ConnectionFailed(
            f"{action} {where}: cannot reach the object store: {redact(str(exc))}", reason=Reason.STORAGE_UNAVAILABLE
        )
    return RetryableError(f"{action} {where}: {redact(str(exc))}", reason=Reason.UPLOAD_FAILED)


@dataclass(frozen=True)
class UploadResult:
    key: str
    size: int
    sha256: str
    parts: int


class ObjectStore:
    """A bucket and prefix, with the operations jobs need."""

    def __init__(self, client: S3Client, spec: StorageSpec) -> None:
        self.client = client
        self.spec = spec
        self.bucket = spec.bucket

    def key(self, *parts: str) -> str:
        """A key under the resource's prefix."""
        return "/".join(p.strip("/") for p in (self.spec.prefix, *parts) if p)

    def write_arguments(self) -> dict[str, Any]:
        """Encryption, storage class and object lock for every object written (call it per object: the
        lock's retention runs from now)."""
        arguments: dict[str, Any] = {}
        lock = self.spec.object_lock
        if lock is not None:
            arguments["ObjectLockMode"] = lock.mode
            arguments["ObjectLockRetainUntilDate"] = datetime.now(UTC) + lock.retain_for
            if lock.legal_hold:
                arguments["ObjectLockLegalHoldStatus"] = "ON"
        if self.spec.sse_algorithm:
            arguments["ServerSideEncryption"] = self.spec.sse_algorithm
        if self.spec.sse_kms_key_id:
            arguments["SSEKMSKeyId"] = self.spec.sse_kms_key_id
        if self.spec.storage_class:
            arguments["StorageClass"] = self.spec.storage_class
        return arguments

    def check_access(self) -> None:
        """Fail early, with a clear message, when the bucket is missing, the keys are wrong, or the spec
        asks for object lock on a bucket without it."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise translate_storage_error(exc, "cannot access", self.bucket) from None
        if self.spec.object_lock is not None:
            self._check_object_lock()

    def _check_object_lock(self) -> None:
        action = "cannot read the object lock configuration of"
        try:
            found = self.client.get_object_lock_configuration(Bucket=self.bucket)
            enabled = found.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ObjectLockConfigurationNotFoundError":
                raise translate_storage_error(exc, action, self.bucket) from None
            enabled = False
        except BotoCoreError as exc:
            raise translate_storage_error(exc, action, self.bucket) from None
        if not enabled:
            raise PermanentError(
                f"bucket {self.bucket!r} does not have S3 Object Lock enabled, which spec.storage.objectLock needs. "
                "Object lock can only be turned on when a bucket is created (aws s3api create-bucket "
                "--object-lock-enabled-for-bucket, or mc mb --with-lock): use such a bucket, or remove objectLock",
                reason=Reason.OBJECT_LOCK_DISABLED,
            )

    def open_upload(
        self, key: str, *, content_type: str = "application/octet-stream", concurrency: int = 2
    ) -> StreamingUpload:
        return StreamingUpload(
            self.client,
            self.bucket,
            key,
            part_size=self.spec.part_size,
            max_parts=self.spec.max_parts,
            extra_arguments=self.write_arguments(),
            content_type=content_type,
            checksums=not self.spec.checksum_when_required,
            concurrency=concurrency,
        )

    def put_bytes(self, key: str, body: bytes, *, content_type: str = "application/json") -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, **self.write_arguments()
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate_storage_error(exc, "cannot write", self.bucket, key) from None

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise translate_storage_error(exc, "cannot read", self.bucket, key) from None

    def get_if_exists(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag, or None where there is no such key."""
        try:
            found = self.client.get_object(Bucket=self.bucket, Key=key)
            return found["Body"].read(), str(found["ETag"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise translate_storage_error(exc, "cannot read", self.bucket, key) from None
        except BotoCoreError as exc:
            raise translate_storage_error(exc, "cannot read", self.bucket, key) from None

    def put_if(self, key: str, body: bytes, *, etag: str | None) -> bool:
        """A conditional write: where `etag` is None only if `key` does not exist yet, else only if it still has
        that ETag. False where the condition failed (another writer got there first). Locked like every object
        cellar writes (spec.storage.objectLock): a lock holds versions, so a later conditional write still goes."""
        locked = self.write_arguments()
        try:
            if etag is None:
                self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentType="application/json", IfNoneMatch="*", **locked
                )
            else:
                self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentType="application/json", IfMatch=etag, **locked
                )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            # 412: the condition failed; 409 ConditionalRequestConflict: a concurrent conditional write won.
            if status in (409, 412) or error.get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise translate_storage_error(exc, "cannot write", self.bucket, key) from None
        except BotoCoreError as exc:
            raise translate_storage_error(exc, "cannot write", self.bucket, key) from None
        return True

    def list_objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                yield from page.get("Contents", [])  # type: ignore[misc]
        except (ClientError, BotoCoreError) as exc:
            raise translate_storage_error(exc, "cannot list", self.bucket, prefix) from None

    def delete(self, key: str) -> Lock | None:
        """Delete `key`. With spec.storage.objectLock every version of it goes (a plain delete would only
        hide a locked object behind a delete marker); a version that the store refuses to delete because
        its lock holds it is kept, and its Lock returned. None: deleted."""
        if self.spec.object_lock is None:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=key)
            except (ClientError, BotoCoreError) as exc:
                raise translate_storage_error(exc, "cannot delete", self.bucket, key) from None
            return None
        for version_id in self._versions(key):
            try:
                self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=version_id)
            except ClientError as exc:
                # AWS refuses with 403 AccessDenied, MinIO with 400 InvalidRequest ("Object is WORM
                # protected"): whatever the code, a lock found on the version is the reason.
                lock = self.lock_of(key, version_id)
                if lock is not None:
                    return lock
                raise translate_storage_error(exc, "cannot delete", self.bucket, key) from None
            except BotoCoreError as exc:
                raise translate_storage_error(exc, "cannot delete", self.bucket, key) from None
        return None

    def delete_leftover(self, key: str) -> bool:
        """Delete a crashed run's leftover; one an object lock still holds stays, logged, and goes in the
        first run after its lock ends. Whether it was deleted."""
        lock = self.delete(key)
        if lock is not None:
            log.info("leftover kept by object lock", extra={"key": key, "lock": lock.describe()})
        return lock is None

    def _versions(self, key: str) -> list[str]:
        """The version ids (and delete markers) of exactly `key`, oldest first."""
        found: list[str] = []
        try:
            pages = self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=key)
            for page in pages:
                entries = [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
                found += [str(e["VersionId"]) for e in entries if e["Key"] == key]
        except (ClientError, BotoCoreError) as exc:
            raise translate_storage_error(exc, "cannot list the versions of", self.bucket, key) from None
        return found[::-1]

    def lock_of(self, key: str, version_id: str | None = None) -> Lock | None:
        """The lock that holds a version (default: the current one) now, if any."""
        try:
            if version_id:
                head = self.client.head_object(Bucket=self.bucket, Key=key, VersionId=version_id)
            else:
                head = self.client.head_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError):
            return None
        until = head.get("ObjectLockRetainUntilDate")
        legal_hold = head.get("ObjectLockLegalHoldStatus") == "ON"
        if legal_hold or (until is not None and until > datetime.now(UTC)):
            return Lock(until, legal_hold)
        return None


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


def part_size_for(part_number: int, base_size: int, max_parts: int) -> int:
    """Size of part `part_number` (1-based): `base_size`, doubled every max_parts/GROWTH_STEPS parts."""
    step = max(1, max_parts // GROWTH_STEPS)
    return min(MAX_PART_SIZE, max(MIN_PART_SIZE, base_size) << ((part_number - 1) // step))


class StreamingUpload:
    """Upload a stream of unknown length; use as a context manager so that failures abort.

    Memory: the part being filled plus up to `concurrency` parts in flight.
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        key: str,
        *,
        part_size: int,
        max_parts: int,
        extra_arguments: dict[str, Any] | None = None,
        content_type: str = "application/octet-stream",
        checksums: bool = True,
        concurrency: int = 2,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key
        self.base_part_size = part_size
        self.max_parts = max_parts
        self.extra_arguments = dict(extra_arguments or {})
        self.content_type = content_type
        self.checksums = checksums
        self._hash = hashlib.sha256()
        self._buffer = bytearray()
        self._size = 0
        self._upload_id: str | None = None
        self._parts: list[Future[dict[str, Any]]] = []
        self._pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="s3-part")
        self._in_flight = threading.BoundedSemaphore(max(1, concurrency))
        self._finished = False

    @property
    def bytes_written(self) -> int:
        return self._size

    def __enter__(self) -> StreamingUpload:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._finished:
            self.abort()

    def _current_part_size(self) -> int:
        return part_size_for(len(self._parts) + 1, self.base_part_size, self.max_parts)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._finished:
            raise RuntimeError("write after the upload was completed or aborted")
        self._hash.update(data)
        self._size += len(data)
        self._buffer += data
        while len(self._buffer) >= self._current_part_size():
            size = self._current_part_size()
            with memoryview(self._buffer) as view:
                part = bytes(view[:size])  # one copy: a bytearray slice would make two
            del self._buffer[:size]
            self._send_part(part)

    def _start(self) -> str:
        if self._upload_id is None:
            arguments: dict[str, Any] = {
                "Bucket": self.bucket,
                "Key": self.key,
                "ContentType": self.content_type,
                **self.extra_arguments,
            }
            if self.checksums:
                arguments["ChecksumAlgorithm"] = "CRC32"
            try:
                self._upload_id = self.client.create_multipart_upload(**arguments)["UploadId"]
            except (ClientError, BotoCoreError) as exc:
                raise translate_storage_error(exc, "cannot start the upload of", self.bucket, self.key) from None
        return self._upload_id

    def _send_part(self, body: bytes) -> None:
        upload_id = self._start()
        number = len(self._parts) + 1
        if number > self.max_parts:
            raise PermanentError(
                f"s3://{self.bucket}/{self.key}: more than {self.max_parts} parts; raise "
                "spec.storage.partSizeMiB or maxParts",
                reason=Reason.UPLOAD_REJECTED,
            )
        self._raise_failed_parts()
        self._in_flight.acquire()
        future = self._pool.submit(self._upload_part, upload_id, number, body)
        future.add_done_callback(lambda _: self._in_flight.release())
        self._parts.append(future)

    def _upload_part(self, upload_id: str, number: int, body: bytes) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self.key,
            "UploadId": upload_id,
            "PartNumber": number,
            "Body": body,
        }
        if self.checksums:
            arguments["ChecksumAlgorithm"] = "CRC32"
        response = self.client.upload_part(**arguments)
        part: dict[str, Any] = {"PartNumber": number, "ETag": response["ETag"]}
        if self.checksums and response.get("ChecksumCRC32"):
            part["ChecksumCRC32"] = response["ChecksumCRC32"]
        return part

    def _raise_failed_parts(self) -> None:
        for future in self._parts:
            if future.done() and future.exception() is not None:
                error = future.exception()
                if isinstance(error, Exception):
                    raise translate_storage_error(error, "cannot upload a part of", self.bucket, self.key)

    def complete(self) -> UploadResult:
        """Send what is buffered and make the object visible; only now does it exist."""
        if self._finished:
            raise RuntimeError("the upload was already completed or aborted")
        try:
            if self._upload_id is None:
                # Smaller than one part: one PutObject, no multipart upload to leave behind.
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self.key,
                    Body=bytes(self._buffer),
                    ContentType=self.content_type,
                    **self.extra_arguments,
                )
                parts = 1
            else:
                if self._buffer:
                    self._send_part(bytes(self._buffer))
                    self._buffer.clear()
                completed = [future.result() for future in self._parts]
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": completed},  # type: ignore[typeddict-item]
                )
                parts = len(completed)
        except (ClientError, BotoCoreError) as exc:
            raise translate_storage_error(exc, "cannot complete the upload of", self.bucket, self.key) from None
        self._finished = True
        self._pool.shutdown(wait=True)
        return UploadResult(key=self.key, size=self._size, sha256=self._hash.hexdigest(), parts=parts)

    def abort(self) -> None:
        """Abort the multipart upload so no partial object ever becomes visible. Never raises."""
        self._finished = True
        for future in self._parts:
            future.cancel()
        # A part still being sent could land after the abort and keep the upload alive: wait first.
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._buffer.clear()
        if self._upload_id is None:
            return
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id)
            log.info("aborted multipart upload", extra={"key": self.key, "bytes_discarded": self._size})
        except Exception as exc:  # noqa: BLE001 (abort is cleanup on an error path; report, don't mask)
            log.error(
                "could not abort multipart upload; a bucket lifecycle rule "
                "(AbortIncompleteMultipartUpload) will remove it",
                extra={"key": self.key, "error": redact(str(exc))},
            )
