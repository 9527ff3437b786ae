"""Object storage behind one seam: `ObjectStore` (base) and its verbs, given by S3 (s3, with the streaming
multipart upload in upload, the boto3 client in client and its failures in errors), Azure Blob Storage (azure)
and Google Cloud Storage (gcs). The jobs use the verbs only; each SDK stays inside its module, and every
failure leaves as one of cellar's reasons."""

from common.storage.base import (
    MAX_PART_SIZE,
    MIN_PART_SIZE,
    ListedObject,
    Lock,
    ObjectStore,
    PendingUpload,
    StoredObject,
    Upload,
    UploadResult,
    VerificationFailed,
    part_size_for,
)

__all__ = [
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "ListedObject",
    "Lock",
    "ObjectStore",
    "PendingUpload",
    "StoredObject",
    "Upload",
    "UploadResult",
    "VerificationFailed",
    "part_size_for",
]
