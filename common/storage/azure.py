"""AzureBlobStore: the store verbs on a container of an Azure storage account (azure-storage-blob).

A stream is uploaded as blocks (Put Block, each with a Content-MD5 the service checks) and made visible at
once by Put Block List; until then nothing shows, and blocks never committed are discarded by the service
after a week. Requests the service fails (503 ServerBusy, 500, timeouts, dropped connections) are retried by
the SDK's exponential policy, each retry logged; what is left leaves as one of cellar's reasons.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from azure.core import MatchConditions
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential, TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobBlock, BlobServiceClient, ContainerClient, ContentSettings, ExponentialRetry

from common.errors import CellarError, ConnectionFailed, Forbidden, PermanentError, RetryableError
from common.reasons import Reason
from common.redact import redact
from common.secrets import StorageCredentials
from common.storage.base import (
    ListedObject,
    Lock,
    ObjectStore,
    PartedUpload,
    PendingUpload,
    StoredObject,
    pieces,
    stored_differs,
)
from common.storage_spec import StorageSpec

log = logging.getLogger("common.storage")
# The SDK logs every request and response at INFO; cellar's own lines say what matters.
logging.getLogger("azure").setLevel(logging.WARNING)

RETRY_ATTEMPTS = 5
MAX_BLOCKS = 50_000
MAX_BLOCK_SIZE = 4000 * 1024 * 1024
DENIED_CODES = (
    "AuthenticationFailed",
    "AuthorizationFailure",
    "AuthorizationPermissionMismatch",
    "AuthorizationResourceTypeMismatch",
    "InsufficientAccountPermissions",
    "InvalidAuthenticationInfo",
)


class LoggedRetry(ExponentialRetry):
    """The SDK's exponential retry (about 1, 4, 10 and 28 s apart), saying in the log what it retries."""

    def increment(
        self, settings: dict[str, Any], request: Any, response: Any = None, error: AzureError | None = None
    ) -> bool:
        retrying = bool(super().increment(settings, request, response=response, error=error))
        what = type(error).__name__ if error is not None else f"{getattr(response, 'status_code', '')}"
        if response is not None:
            what += f" {response.headers.get('x-ms-error-code', '')}".rstrip()
        log.warning(
            "storage request failed; retrying" if retrying else "storage request failed; no attempts left",
            extra={
                "operation": f"{request.method} blob",
                "attempt": settings["count"],
                "of": RETRY_ATTEMPTS,
                "error": what,
            },
        )
        return retrying


def translate_azure_error(exc: Exception, action: str, where: str) -> CellarError:
    """An Azure SDK failure as cellar's error, with what to fix. `where`: azure://account/container[/key]."""
    code = str(getattr(exc, "error_code", "") or "")
    status = int(getattr(exc, "status_code", 0) or 0)
    detail = redact(str(getattr(exc, "reason", "") or code or type(exc).__name__))
    if code == "ContainerNotFound":
        return PermanentError(
            f"{action} {where}: the container does not exist; create it or fix spec.storage.azureBlob.container",
            reason=Reason.BUCKET_NOT_FOUND,
        )
    if isinstance(exc, ClientAuthenticationError) or status == 403 or code in DENIED_CODES:
        return Forbidden(
            f"{action} {where}: access denied ({code or status or type(exc).__name__}: {detail}); check the "
            "account key or SAS token in the storage Secret (a SAS needs read, write, delete and list on the "
            "container), or the workload identity's role assignment (Storage Blob Data Contributor)",
            reason=Reason.STORAGE_ACCESS_DENIED,
        )
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return ConnectionFailed(
            f"{action} {where}: cannot reach Azure Blob Storage: {redact(str(exc))}", reason=Reason.STORAGE_UNAVAILABLE
        )
    if status >= 500 or status in (408, 429) or code in ("ServerBusy", "OperationTimedOut", "InternalError"):
        return RetryableError(
            f"{action} {where}: the store is failing ({code or status}: {detail})", reason=Reason.UPLOAD_FAILED
        )
    if isinstance(exc, AzureError):
        return PermanentError(f"{action} {where}: {code or status}: {detail}", reason=Reason.UPLOAD_REJECTED)
    return RetryableError(f"{action} {where}: {redact(str(exc))}", reason=Reason.UPLOAD_FAILED)


def _credential(spec: StorageSpec, credentials: StorageCredentials) -> Any:
    azure = spec.azure_blob
    assert azure is not None
    if azure.workload_identity:
        # AKS's workload identity webhook sets AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_FEDERATED_TOKEN_FILE.
        from azure.identity import WorkloadIdentityCredential

        try:
            token_credential: TokenCredential = WorkloadIdentityCredential()
        except ValueError as exc:  # the webhook did not inject the identity's settings
            raise Forbidden(
                f"spec.storage.azureBlob.credentials.workloadIdentity: {exc}. On AKS, label the Pods "
                'azure.workload.identity/use: "true" (chart: podLabels) and annotate the ServiceAccount with '
                "azure.workload.identity/client-id (chart: serviceAccountAnnotations)",
                reason=Reason.STORAGE_ACCESS_DENIED,
            ) from None
        return token_credential
    if credentials.azure_sas_token:
        return AzureSasCredential(credentials.azure_sas_token.lstrip("?"))
    return AzureNamedKeyCredential(azure.account, credentials.azure_account_key or "")


class AzureBlobStore(ObjectStore):
    """A container of an Azure storage account, and a prefix."""

    scheme = "azure"

    def __init__(self, container: ContainerClient, spec: StorageSpec) -> None:
        assert spec.azure_blob is not None
        super().__init__(spec, f"{spec.azure_blob.account}/{spec.bucket}")
        self._container = container

    @classmethod
    def connect(cls, spec: StorageSpec, credentials: StorageCredentials, *, concurrency: int = 16) -> AzureBlobStore:
        assert spec.azure_blob is not None
        service = BlobServiceClient(
            spec.azure_blob.endpoint,
            credential=_credential(spec, credentials),
            retry_policy=LoggedRetry(
                initial_backoff=1, increment_base=3, retry_total=RETRY_ATTEMPTS - 1, random_jitter_range=1
            ),
            connection_timeout=10,
            read_timeout=120,
            connection_pool_maxsize=max(concurrency, 10),
        )
        return cls(service.get_container_client(spec.azure_blob.container), spec)

    @contextmanager
    def _translated(self, action: str, key: str = "") -> Iterator[None]:
        try:
            yield
        except AzureError as exc:
            raise translate_azure_error(exc, action, self.url(key)) from None

    def check_access(self) -> None:
        with self._translated("cannot access"):
            # A listing, not Get Container Properties, which a container SAS may not call: it proves the
            # container exists (ContainerNotFound otherwise) and that the credential may list.
            next(iter(self._container.list_blobs(name_starts_with=self.key() + "/", results_per_page=1)), None)

    def open_upload(
        self, key: str, *, content_type: str = "application/octet-stream", concurrency: int = 2
    ) -> BlockUpload:
        return BlockUpload(self, key, content_type=content_type, concurrency=concurrency)

    def put_bytes(self, key: str, body: bytes, *, content_type: str = "application/json") -> None:
        self._put(key, body, content_type, "cannot write")

    def _put(self, key: str, body: bytes, content_type: str, action: str) -> dict[str, Any]:
        with self._translated(action, key):
            return dict(
                self._container.get_blob_client(key).upload_blob(
                    body,
                    overwrite=True,
                    validate_content=True,
                    content_settings=ContentSettings(content_type=content_type),
                    max_concurrency=1,
                )
            )

    def put_verified(self, key: str, body: bytes, sha256_hex: str) -> None:
        """PUT with Content-MD5, which the service checks (a corrupted body is refused with Md5Mismatch); the
        MD5 it answers with, or keeps in the blob's properties, is its statement of what it stored."""
        answer = self._put(key, body, "application/octet-stream", "cannot upload")
        stored_md5, size = answer.get("content_md5"), len(body)
        if stored_md5 is None:
            with self._translated("cannot read", key):
                properties = self._container.get_blob_client(key).get_blob_properties()
            stored_md5, size = properties.content_settings.content_md5, int(properties.size)
        if size != len(body) or bytes(stored_md5 or b"") != hashlib.md5(body, usedforsecurity=False).digest():
            raise stored_differs(self.url(key), size, len(body), base64.b64encode(bytes(stored_md5 or b"")).decode())
        del sha256_hex

    def get_bytes(self, key: str) -> bytes:
        with self._translated("cannot read", key):
            return bytes(self._container.download_blob(key, max_concurrency=1).readall())

    def get_range(self, key: str, start: int, length: int) -> bytes:
        with self._translated("cannot read", key):
            size = self._container.get_blob_client(key).get_blob_properties().size
            if start >= size:
                return b""
            found = self._container.download_blob(
                key, offset=start, length=min(length, size - start), max_concurrency=1
            )
            return bytes(found.readall())

    def read_chunks(self, key: str, chunk_size: int) -> Iterator[bytes]:
        with self._translated("cannot read", key):
            downloader = self._container.download_blob(key, max_concurrency=1)
            for chunk in downloader.chunks():
                yield from pieces(chunk, chunk_size)

    def stat(self, key: str) -> StoredObject:
        with self._translated("cannot read", key):
            found = self._container.get_blob_client(key).get_blob_properties()
        return StoredObject(int(found.size), str(found.etag or "").strip('"'), None)

    def pending_uploads(self, key_prefix: str) -> list[PendingUpload]:
        """None to abort: blocks never committed are not an object, and Azure discards them a week after
        they were staged (there is no call that removes them sooner without creating the blob)."""
        return []

    def abort_upload(self, upload: PendingUpload) -> None:
        del upload  # pending_uploads lists none

    def get_if_exists(self, key: str) -> tuple[bytes, str] | None:
        try:
            found = self._container.download_blob(key, max_concurrency=1)
            return bytes(found.readall()), str(found.properties.etag)
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", "") == "ContainerNotFound":
                raise translate_azure_error(exc, "cannot read", self.url(key)) from None
            return None
        except AzureError as exc:
            raise translate_azure_error(exc, "cannot read", self.url(key)) from None

    def put_if(self, key: str, body: bytes, *, etag: str | None) -> bool:
        conditions: dict[str, Any] = (
            {"overwrite": False}
            if etag is None
            else {"overwrite": True, "etag": etag, "match_condition": MatchConditions.IfNotModified}
        )
        try:
            self._container.upload_blob(
                key,
                body,
                content_settings=ContentSettings(content_type="application/json"),
                max_concurrency=1,
                **conditions,
            )
        except (ResourceExistsError, ResourceModifiedError):
            return False
        except HttpResponseError as exc:
            if exc.status_code in (409, 412) and getattr(exc, "error_code", "") in (
                "BlobAlreadyExists",
                "ConditionNotMet",
            ):
                return False
            raise translate_azure_error(exc, "cannot write", self.url(key)) from None
        except AzureError as exc:
            raise translate_azure_error(exc, "cannot write", self.url(key)) from None
        return True

    def list_objects(self, prefix: str) -> Iterator[ListedObject]:
        with self._translated("cannot list", prefix):
            for found in self._container.list_blobs(name_starts_with=prefix):
                yield ListedObject(str(found.name), int(found.size), found.last_modified)

    def delete(self, key: str) -> Lock | None:
        try:
            self._container.delete_blob(key, delete_snapshots="include")
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", "") == "ContainerNotFound":
                raise translate_azure_error(exc, "cannot delete", self.url(key)) from None
        except AzureError as exc:
            raise translate_azure_error(exc, "cannot delete", self.url(key)) from None
        return None

    def lock_of(self, key: str, version_id: str | None = None) -> Lock | None:
        return None  # cellar sets no immutability policy or legal hold on Azure (yet)

    def _stage(self, key: str, block_id: str, body: bytes) -> None:
        self._container.get_blob_client(key).stage_block(block_id, body, validate_content=True)

    def _commit(self, key: str, block_ids: list[str], content_type: str) -> None:
        self._container.get_blob_client(key).commit_block_list(
            [BlobBlock(block_id) for block_id in block_ids], content_settings=ContentSettings(content_type=content_type)
        )


def block_id(number: int) -> str:
    """Block `number`'s id: base64 of the same length for every block of a blob, as Azure requires."""
    return base64.b64encode(f"cellar-{number:08d}".encode()).decode()


class BlockUpload(PartedUpload):
    """A stream staged as blocks and committed at the end; memory: the block being filled plus up to
    `concurrency` blocks in flight. The block size grows as StreamingUpload's part size does, so that 50,000
    blocks hold any stream."""

    def __init__(self, store: AzureBlobStore, key: str, *, content_type: str, concurrency: int) -> None:
        super().__init__(
            key,
            part_size=store.spec.part_size,
            max_parts=MAX_BLOCKS,
            largest=MAX_BLOCK_SIZE,
            concurrency=concurrency,
            thread_name="azure-block",
        )
        self._store = store
        self._content_type = content_type

    def _send_part(self, number: int, body: bytes) -> None:
        self._store._stage(self.key, block_id(number), body)

    def _part_failed(self, error: Exception) -> CellarError:
        return translate_azure_error(error, "cannot upload a block of", self._store.url(self.key))

    def _complete(self) -> int:
        with self._store._translated("cannot complete the upload of", self.key):
            if not self._parts:
                self._store._put(self.key, bytes(self._buffer), self._content_type, "cannot upload")
                self._pool.shutdown(wait=True)
                return 1
            blocks = len(self._sent_parts())
            self._store._commit(self.key, [block_id(number) for number in range(1, blocks + 1)], self._content_type)
        self._pool.shutdown(wait=True)
        return blocks

    def _abort(self) -> None:
        self._stop_sending()
        if self._parts:
            log.info(
                "upload abandoned; its uncommitted blocks are not an object and Azure discards them within a week",
                extra={"key": self.key, "bytes_discarded": self._size},
            )
