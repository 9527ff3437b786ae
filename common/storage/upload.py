"""The streaming multipart upload: a stream of unknown length as one object, with bounded memory.

`StreamingUpload` uploads it as one multipart upload. The part size grows with the part count, so a
multi-terabyte stream still fits in `max_parts` parts (10,000 on AWS). It hashes what it writes with SHA-256
and aborts the multipart upload on any failure, so a partial object never becomes visible. A stream smaller
than one part is sent with a single PutObject.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from common.errors import CellarError, PermanentError
from common.reasons import Reason
from common.redact import redact
from common.storage.base import MAX_PART_SIZE, PartedUpload
from common.storage.errors import STORE_ERRORS, translate_storage_error, translated
from common.storage_spec import StorageSpec

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = Any

log = logging.getLogger("common.storage")


@dataclass(frozen=True)
class ObjectWrite:
    """How an object is written: its content type, and the arguments every write carries."""

    content_type: str = "application/octet-stream"
    extra_arguments: Mapping[str, Any] = field(default_factory=dict)


class StreamingUpload(PartedUpload):
    """Upload a stream of unknown length; use as a context manager so that failures abort.

    Memory: the part being filled plus up to `concurrency` parts in flight.
    """

    def __init__(
        self, client: S3Client, spec: StorageSpec, key: str, write: ObjectWrite, *, concurrency: int = 2
    ) -> None:
        """`spec`: the bucket, the part size and count, and whether parts carry checksums; `write`: the object's
        content type and what every write carries (encryption, storage class, object lock)."""
        super().__init__(
            key,
            part_size=spec.part_size,
            max_parts=spec.max_parts,
            largest=MAX_PART_SIZE,
            concurrency=concurrency,
            thread_name="s3-part",
        )
        self.client = client
        self.bucket = spec.bucket
        self.max_parts = spec.max_parts
        self.extra_arguments = dict(write.extra_arguments)
        self.content_type = write.content_type
        self.checksums = not spec.checksum_when_required
        self._upload_id: str | None = None

    def _before_part(self, number: int) -> None:
        if self._upload_id is None:
            arguments: dict[str, Any] = {
                "Bucket": self.bucket,
                "Key": self.key,
                "ContentType": self.content_type,
                **self.extra_arguments,
            }
            if self.checksums:
                arguments["ChecksumAlgorithm"] = "CRC32"
            with translated("cannot start the upload of", self.bucket, self.key):
                self._upload_id = self.client.create_multipart_upload(**arguments)["UploadId"]
        if number > self.max_parts:
            raise PermanentError(
                f"s3://{self.bucket}/{self.key}: more than {self.max_parts} parts; raise "
                "spec.storage.partSizeMiB or maxParts",
                reason=Reason.UPLOAD_REJECTED,
            )

    def _send_part(self, number: int, body: bytes) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self.key,
            "UploadId": self._upload_id,
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

    def _part_failed(self, error: Exception) -> CellarError:
        return translate_storage_error(error, "cannot upload a part of", self.bucket, self.key)

    def _complete(self) -> int:
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
                completed = self._sent_parts()
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": completed},
                )
                parts = len(completed)
        except STORE_ERRORS as exc:
            raise translate_storage_error(exc, "cannot complete the upload of", self.bucket, self.key) from None
        self._pool.shutdown(wait=True)
        return parts

    def _abort(self) -> None:
        # A part still being sent could land after the abort and keep the upload alive: stop them first.
        self._stop_sending()
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
