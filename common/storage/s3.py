"""S3Store: the store verbs on an S3 bucket (AWS, MinIO, Ceph RGW, IBM COS). Every verb translates the store's
failures into cellar's reasons (common.storage.errors), and the boto3 client stays inside (tests fake it at
this seam, as KubeTransport is faked for the Kubernetes client)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from common.errors import PermanentError
from common.reasons import Reason
from common.secrets import StorageCredentials
from common.storage.base import ListedObject, Lock, ObjectStore, PendingUpload, StoredObject, stored_differs
from common.storage.client import build_client
from common.storage.errors import error_code, http_status, translate_storage_error, translated
from common.storage.upload import ObjectWrite, StreamingUpload
from common.storage_spec import StorageSpec

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = Any


class S3Store(ObjectStore):
    """An S3 bucket and prefix."""

    scheme = "s3"

    def __init__(self, client: S3Client, spec: StorageSpec) -> None:
        super().__init__(spec)
        self._client = client

    @classmethod
    def connect(cls, spec: StorageSpec, credentials: StorageCredentials, *, concurrency: int = 16) -> S3Store:
        return cls(build_client(spec, credentials, concurrency=concurrency), spec)

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
            self._client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise translate_storage_error(exc, "cannot access", self.bucket) from None
        if self.spec.object_lock is not None:
            self._check_object_lock()

    def _check_object_lock(self) -> None:
        action = "cannot read the object lock configuration of"
        try:
            found = self._client.get_object_lock_configuration(Bucket=self.bucket)
            enabled = found.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        except ClientError as exc:
            if error_code(exc) != "ObjectLockConfigurationNotFoundError":
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
        write = ObjectWrite(content_type, self.write_arguments())
        return StreamingUpload(self._client, self.spec, key, write, concurrency=concurrency)

    def put_bytes(self, key: str, body: bytes, *, content_type: str = "application/json") -> None:
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, **self.write_arguments()
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate_storage_error(exc, "cannot write", self.bucket, key) from None

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise translate_storage_error(exc, "cannot read", self.bucket, key) from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes of the object from `start` (fewer where it ends first)."""
        with translated("cannot read", self.bucket, key):
            found = self._client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + length - 1}")
            return found["Body"].read()

    def read_chunks(self, key: str, chunk_size: int) -> Iterator[bytes]:
        """The object's bytes as they arrive, `chunk_size` at a time; a failure on the way (the connection
        dropped, the body cut short) is cellar's error, like one before the first byte."""
        with translated("cannot read", self.bucket, key):
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
            yield from body.iter_chunks(chunk_size)

    def put_verified(self, key: str, body: bytes, sha256_hex: str) -> None:
        """PUT with x-amz-checksum-sha256: a store that checks it rejects a corrupted body (BadDigest) and
        returns the checksum it computed, its own statement of what it holds, so no HEAD is needed. A store
        that returns none (requestChecksum: WhenRequired, or no support) is asked with HEAD for the size and
        the ETag, which for a single PUT is the MD5 of the body."""
        checksum = base64.b64encode(bytes.fromhex(sha256_hex)).decode()
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": body, **self.write_arguments()}
        if not self.spec.checksum_when_required:
            arguments["ChecksumSHA256"] = checksum
        with translated("cannot upload", self.bucket, key):
            if self._client.put_object(**arguments).get("ChecksumSHA256") == checksum:
                return
        stored = self.stat(key)
        md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
        if (
            stored.size != len(body)
            or (stored.sha256 and stored.sha256.split("-")[0] != checksum)
            or (not stored.sha256 and "-" not in stored.etag and stored.etag != md5)
        ):
            raise stored_differs(self.url(key), stored.size, len(body), stored.sha256 or stored.etag)

    def stat(self, key: str) -> StoredObject:
        """Size, ETag and SHA-256 checksum of what the store holds under `key`."""
        with translated("cannot read", self.bucket, key):
            head = self._client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        checksum = head.get("ChecksumSHA256")
        return StoredObject(int(head["ContentLength"]), str(head.get("ETag", "")).strip('"'), checksum or None)

    def pending_uploads(self, key_prefix: str) -> list[PendingUpload]:
        """The multipart uploads left open under `key_prefix`. The bucket's uploads are listed whole and
        picked by key here: MinIO answers a listing with a Prefix only with uploads of exactly that key
        ("working as intended", https://github.com/minio/minio/issues/20989)."""
        with translated("cannot list the multipart uploads of", self.bucket):
            pages = self._client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket)
            return [
                PendingUpload(str(upload["Key"]), str(upload["UploadId"]), upload["Initiated"])
                for page in pages
                for upload in page.get("Uploads", [])
                if str(upload["Key"]).startswith(key_prefix)
            ]

    def abort_upload(self, upload: PendingUpload) -> None:
        with translated("cannot abort the multipart upload of", self.bucket, upload.key):
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=upload.key, UploadId=upload.upload_id)

    def get_if_exists(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag, or None where there is no such key."""
        try:
            found = self._client.get_object(Bucket=self.bucket, Key=key)
            return found["Body"].read(), str(found["ETag"])
        except ClientError as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
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
                self._client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentType="application/json", IfNoneMatch="*", **locked
                )
            else:
                self._client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentType="application/json", IfMatch=etag, **locked
                )
        except ClientError as exc:
            # 412: the condition failed; 409 ConditionalRequestConflict: a concurrent conditional write won.
            if http_status(exc) in (409, 412) or error_code(exc) in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
            ):
                return False
            raise translate_storage_error(exc, "cannot write", self.bucket, key) from None
        except BotoCoreError as exc:
            raise translate_storage_error(exc, "cannot write", self.bucket, key) from None
        return True

    def list_objects(self, prefix: str) -> Iterator[ListedObject]:
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for found in page.get("Contents", []):
                    yield ListedObject(str(found["Key"]), int(found["Size"]), found["LastModified"])
        except (ClientError, BotoCoreError) as exc:
            raise translate_storage_error(exc, "cannot list", self.bucket, prefix) from None

    def delete(self, key: str) -> Lock | None:
        """Delete `key`. With spec.storage.objectLock every version of it goes (a plain delete would only
        hide a locked object behind a delete marker); a version that the store refuses to delete because
        its lock holds it is kept, and its Lock returned. None: deleted."""
        if self.spec.object_lock is None:
            try:
                self._client.delete_object(Bucket=self.bucket, Key=key)
            except (ClientError, BotoCoreError) as exc:
                raise translate_storage_error(exc, "cannot delete", self.bucket, key) from None
            return None
        for version_id in self._versions(key):
            try:
                self._client.delete_object(Bucket=self.bucket, Key=key, VersionId=version_id)
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

    def _versions(self, key: str) -> list[str]:
        """The version ids (and delete markers) of exactly `key`, oldest first."""
        found: list[str] = []
        try:
            pages = self._client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=key)
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
                head = self._client.head_object(Bucket=self.bucket, Key=key, VersionId=version_id)
            else:
                head = self._client.head_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError):
            return None
        until = head.get("ObjectLockRetainUntilDate")
        legal_hold = head.get("ObjectLockLegalHoldStatus") == "ON"
        if legal_hold or (until is not None and until > datetime.now(UTC)):
            return Lock(until, legal_hold)
        return None
