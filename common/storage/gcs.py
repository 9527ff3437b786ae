"""GcsStore: the store verbs on a Google Cloud Storage bucket (google-cloud-storage, JSON API).

A stream is uploaded as one resumable upload in chunks of spec.storage.partSizeMiB with a CRC32C the client
checks against the one the service computed; the object exists only once the last chunk is in, and an
abandoned upload is cancelled (its session would otherwise expire after a week). Single objects go in one
request with their MD5 and CRC32C, which the service checks. Conditional writes use generations. Throttling
(429), 5xx and dropped connections are retried with backoff, each retry logged; what is left leaves as one of
cellar's reasons.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import google.auth
import requests
from google.api_core import exceptions as api
from google.api_core.retry import Retry
from google.auth import exceptions as auth
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
from google.cloud.storage.fileio import BlobWriter
from google.oauth2 import service_account

from common.errors import (
    CellarError,
    ConnectionFailed,
    Forbidden,
    InvalidSpec,
    PermanentError,
    RetryableError,
    VerificationFailed,
)
from common.reasons import Reason
from common.redact import redact, register_secret
from common.secrets import StorageCredentials
from common.storage.base import (
    ListedObject,
    Lock,
    ObjectStore,
    PendingUpload,
    StoredObject,
    Upload,
    pieces,
    stored_differs,
)
from common.storage_spec import StorageSpec

log = logging.getLogger("common.storage")

SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
RETRIED_STATUSES = (408, 429, 500, 502, 503, 504)
# Resumable chunks must be multiples of 256 KiB.
CHUNK_QUANTUM = 256 * 1024


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, api.TooManyRequests | api.InternalServerError | api.BadGateway | api.ServiceUnavailable):
        return True
    if isinstance(exc, api.GatewayTimeout):
        return True
    if isinstance(exc, InvalidResponse):
        return int(getattr(exc.response, "status_code", 0) or 0) in RETRIED_STATUSES
    return isinstance(exc, requests.ConnectionError | requests.Timeout | auth.TransportError | ConnectionError)


def _log_retry(exc: Exception) -> None:
    log.warning("storage request failed; retrying", extra={"operation": "gcs", "error": _describe(exc)})


RETRY = Retry(predicate=_retryable, initial=0.5, maximum=8.0, multiplier=2.0, timeout=60.0, on_error=_log_retry)


def _describe(exc: Exception) -> str:
    if isinstance(exc, api.GoogleAPICallError):
        return f"{exc.code} {redact(exc.message)}"
    if isinstance(exc, InvalidResponse):
        return f"{getattr(exc.response, 'status_code', '')} {redact(str(exc))}"
    return f"{type(exc).__name__}: {redact(str(exc))}"


def _bucket_missing(exc: Exception) -> bool:
    """A 404 for the bucket, not the object: GCS says "The specified bucket does not exist."."""
    message = exc.message if isinstance(exc, api.GoogleAPICallError) else str(exc)
    return "bucket does not exist" in message.lower()


def translate_gcs_error(exc: Exception, action: str, where: str, *, bucket_only: bool = False) -> CellarError:
    """A GCS failure as cellar's error, with what to fix. `where`: gs://bucket[/key]; `bucket_only`: a 404
    can only mean the bucket."""
    status = exc.code if isinstance(exc, api.GoogleAPICallError) else 0
    if isinstance(exc, InvalidResponse):
        status = int(getattr(exc.response, "status_code", 0) or 0)
    detail = _describe(exc)
    if status == 404 and (bucket_only or _bucket_missing(exc)):
        return PermanentError(
            f"{action} {where}: the bucket does not exist; create it or fix spec.storage.gcs.bucket",
            reason=Reason.BUCKET_NOT_FOUND,
        )
    if status in (401, 403) or isinstance(exc, auth.RefreshError | auth.DefaultCredentialsError):
        return Forbidden(
            f"{action} {where}: access denied ({detail}); check the service account key in the storage Secret, "
            "or the workload identity's IAM binding (roles/storage.objectAdmin on the bucket)",
            reason=Reason.STORAGE_ACCESS_DENIED,
        )
    if isinstance(exc, requests.ConnectionError | requests.Timeout | auth.TransportError | ConnectionError):
        return ConnectionFailed(
            f"{action} {where}: cannot reach Google Cloud Storage: {detail}", reason=Reason.STORAGE_UNAVAILABLE
        )
    if status in RETRIED_STATUSES:
        return RetryableError(f"{action} {where}: the store is failing ({detail})", reason=Reason.UPLOAD_FAILED)
    if isinstance(exc, DataCorruption):
        return VerificationFailed(f"{action} {where}: the stored object does not match what was uploaded ({detail})")
    return PermanentError(f"{action} {where}: {detail}", reason=Reason.UPLOAD_REJECTED)


STORE_ERRORS = (
    api.GoogleAPICallError,
    InvalidResponse,
    requests.RequestException,
    auth.GoogleAuthError,
    ConnectionError,
)


def gcs_credentials(spec: StorageSpec, credentials: StorageCredentials) -> tuple[Credentials, str]:
    """Credentials and the project they belong to (the client wants one; buckets are named globally); the Iceberg
    archive's FileIO (gcsfs) signs in with the same."""
    gcs = spec.gcs
    assert gcs is not None
    if gcs.anonymous:
        return AnonymousCredentials(), "cellar"  # type: ignore[no-untyped-call]
    if gcs.workload_identity:
        # GKE workload identity: the metadata server answers for the Pod's Kubernetes ServiceAccount.
        try:
            found, project = google.auth.default(scopes=SCOPES)
        except auth.DefaultCredentialsError as exc:
            raise Forbidden(
                f"spec.storage.gcs.credentials.workloadIdentity: no Application Default Credentials ({exc}). On "
                "GKE, enable Workload Identity on the node pool and annotate the ServiceAccount with "
                "iam.gke.io/gcp-service-account (chart: serviceAccountAnnotations)",
                reason=Reason.STORAGE_ACCESS_DENIED,
            ) from None
        return found, project or "cellar"
    field = gcs.service_account_key.field if gcs.service_account_key else "spec.storage.gcs.credentials"
    try:
        info = json.loads(credentials.gcs_service_account_json or "")
        register_secret(str(info.get("private_key", "")) or None)
        key = service_account.Credentials.from_service_account_info(info, scopes=SCOPES)  # type: ignore[no-untyped-call]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InvalidSpec(
            f"{field}: the Secret key does not hold a service account key (the JSON file `gcloud iam "
            f"service-accounts keys create` writes): {type(exc).__name__}"
        ) from None
    return key, str(info.get("project_id") or "cellar")


class GcsStore(ObjectStore):
    """A Google Cloud Storage bucket and prefix."""

    scheme = "gs"

    def __init__(self, client: storage.Client, spec: StorageSpec) -> None:
        super().__init__(spec)
        self._client = client
        self._bucket = client.bucket(spec.bucket)

    @classmethod
    def connect(cls, spec: StorageSpec, credentials: StorageCredentials) -> GcsStore:
        assert spec.gcs is not None
        found, project = gcs_credentials(spec, credentials)
        options = {"api_endpoint": spec.gcs.endpoint} if spec.gcs.endpoint else None
        return cls(storage.Client(project=project, credentials=found, client_options=options), spec)

    @contextmanager
    def _translated(self, action: str, key: str = "", *, bucket_only: bool = False) -> Iterator[None]:
        try:
            yield
        except STORE_ERRORS as exc:
            raise translate_gcs_error(exc, action, self.url(key), bucket_only=bucket_only) from None

    def check_access(self) -> None:
        with self._translated("cannot access", bucket_only=True):
            # Listing needs storage.objects.list, which the jobs need anyway; it also proves the bucket exists
            # without storage.buckets.get, which roles/storage.objectAdmin does not grant.
            next(iter(self._client.list_blobs(self._bucket, prefix=self.key() + "/", max_results=1, retry=RETRY)), None)

    def open_upload(
        self, key: str, *, content_type: str = "application/octet-stream", concurrency: int = 2
    ) -> ResumableUpload:
        del concurrency  # a resumable upload takes its chunks in order
        return ResumableUpload(self, key, content_type=content_type)

    def _put(self, key: str, body: bytes, content_type: str, action: str, **conditions: Any) -> storage.Blob:
        blob = self._bucket.blob(key)
        with self._translated(action, key):
            # The MD5 goes with the object for the service to check; the client compares the one it answers.
            blob.upload_from_string(body, content_type=content_type, checksum="md5", retry=RETRY, **conditions)
        return blob

    def put_bytes(self, key: str, body: bytes, *, content_type: str = "application/json") -> None:
        self._put(key, body, content_type, "cannot write")

    def put_verified(self, key: str, body: bytes, sha256_hex: str) -> None:
        blob = self._put(key, body, "application/octet-stream", "cannot upload")
        md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
        if blob.size != len(body) or blob.md5_hash != md5:
            raise stored_differs(self.url(key), int(blob.size or 0), len(body), str(blob.md5_hash))
        del sha256_hex

    def get_bytes(self, key: str) -> bytes:
        with self._translated("cannot read", key):
            return bytes(self._bucket.blob(key).download_as_bytes(retry=RETRY))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        with self._translated("cannot read", key):
            blob = self._bucket.blob(key)
            try:
                return bytes(blob.download_as_bytes(start=start, end=start + length - 1, checksum=None, retry=RETRY))
            except api.RequestRangeNotSatisfiable:
                return b""

    def read_chunks(self, key: str, chunk_size: int) -> Iterator[bytes]:
        with self._translated("cannot read", key):
            blob = self._bucket.get_blob(key, retry=RETRY)
            if blob is None:
                raise PermanentError(f"cannot read {self.url(key)}: no such object", reason=Reason.UPLOAD_REJECTED)
            size, offset = int(blob.size or 0), 0
            step = max(chunk_size, 8 * 1024 * 1024)
            while offset < size:
                # Each range from the same generation, so an object replaced meanwhile fails instead of mixing.
                end = min(size, offset + step) - 1
                chunk = blob.download_as_bytes(
                    start=offset, end=end, if_generation_match=blob.generation, checksum=None, retry=RETRY
                )
                if not chunk:
                    raise ConnectionError(f"the download of {key} stopped at byte {offset} of {size}")
                offset += len(chunk)
                yield from pieces(chunk, chunk_size)

    def stat(self, key: str) -> StoredObject:
        with self._translated("cannot read", key):
            blob = self._bucket.get_blob(key, retry=RETRY)
        if blob is None:
            raise PermanentError(f"cannot read {self.url(key)}: no such object", reason=Reason.UPLOAD_REJECTED)
        return StoredObject(int(blob.size or 0), str(blob.etag or ""), None)

    def pending_uploads(self, key_prefix: str) -> list[PendingUpload]:
        """None to abort: an unfinished resumable upload is not an object, and its session expires a week after
        it began (GCS lists no sessions)."""
        return []

    def abort_upload(self, upload: PendingUpload) -> None:
        del upload  # pending_uploads lists none

    def get_if_exists(self, key: str) -> tuple[bytes, str] | None:
        with self._translated("cannot read", key):
            blob = self._bucket.get_blob(key, retry=RETRY)
            if blob is None:
                return None
            try:
                body = blob.download_as_bytes(if_generation_match=blob.generation, retry=RETRY)
            except (api.NotFound, api.PreconditionFailed):
                return self.get_if_exists(key)  # replaced or deleted between the two requests: read again
        return bytes(body), str(blob.generation)

    def put_if(self, key: str, body: bytes, *, etag: str | None) -> bool:
        """`etag` here is the generation get_if_exists gave; generation 0 means 'no such object yet'."""
        try:
            self._bucket.blob(key).upload_from_string(
                body,
                content_type="application/json",
                if_generation_match=0 if etag is None else int(etag),
                checksum="md5",
                retry=RETRY,
            )
        except api.PreconditionFailed:
            return False
        except STORE_ERRORS as exc:
            if isinstance(exc, InvalidResponse) and getattr(exc.response, "status_code", 0) == 412:
                return False
            raise translate_gcs_error(exc, "cannot write", self.url(key)) from None
        return True

    def list_objects(self, prefix: str) -> Iterator[ListedObject]:
        with self._translated("cannot list", prefix):
            for blob in self._client.list_blobs(self._bucket, prefix=prefix, retry=RETRY):
                assert blob.updated is not None
                yield ListedObject(str(blob.name), int(blob.size or 0), blob.updated)

    def delete(self, key: str) -> Lock | None:
        with self._translated("cannot delete", key):
            try:
                self._bucket.delete_blob(key, retry=RETRY)
            except api.NotFound as exc:
                if _bucket_missing(exc):
                    raise
        return None

    def lock_of(self, key: str, version_id: str | None = None) -> Lock | None:
        return None  # cellar sets no retention or hold on GCS objects (yet)


class ResumableUpload(Upload):
    """A stream as one resumable upload; memory: up to two chunks (the one being filled, and the library's
    buffer). A stream smaller than one chunk goes in a single request."""

    def __init__(self, store: GcsStore, key: str, *, content_type: str) -> None:
        super().__init__()
        self.key = key
        self._store = store
        self._content_type = content_type
        self._chunk_size = max(CHUNK_QUANTUM, store.spec.part_size // CHUNK_QUANTUM * CHUNK_QUANTUM)
        self._pending = bytearray()
        self._writer: BlobWriter | None = None
        self._chunks = 0

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        self._pending += data
        if len(self._pending) < self._chunk_size:
            return
        with self._store._translated("cannot upload", self.key):
            if self._writer is None:
                blob = self._store._bucket.blob(self.key, chunk_size=self._chunk_size)
                self._writer = BlobWriter(
                    blob, chunk_size=self._chunk_size, retry=RETRY, content_type=self._content_type, checksum="crc32c"
                )
            self._chunks += len(self._pending) // self._chunk_size
            self._writer.write(bytes(self._pending))
        self._pending.clear()

    def _complete(self) -> int:
        if self._writer is None:
            self._store._put(self.key, bytes(self._pending), self._content_type, "cannot upload")
            return 1
        with self._store._translated("cannot complete the upload of", self.key):
            self._writer.write(bytes(self._pending))
            self._pending.clear()
            self._writer.close()
        return self._chunks + 1

    def _abort(self) -> None:
        self._pending.clear()
        if self._writer is None:
            return
        try:
            self._writer.terminate()  # cancels the session: nothing of it stays
            log.info("aborted resumable upload", extra={"key": self.key, "bytes_discarded": self._size})
        except Exception as exc:  # noqa: BLE001 (abort is cleanup on an error path; report, don't mask)
            log.error(
                "could not cancel the resumable upload; its session expires within a week",
                extra={"key": self.key, "error": redact(str(exc))},
            )
