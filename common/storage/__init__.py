"""Object storage behind one seam: `ObjectStore` (base) and its verbs, given by S3 (s3, with the streaming
multipart upload in upload, the boto3 client in client and its failures in errors), Azure Blob Storage (azure)
and Google Cloud Storage (gcs). The jobs use the verbs only; each SDK stays inside its module, and every
failure leaves as one of cellar's reasons."""

from common.errors import VerificationFailed
from common.secrets import StorageCredentials
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
    part_size_for,
)
from common.storage_spec import StorageSpec


def open_store(spec: StorageSpec, credentials: StorageCredentials, *, concurrency: int = 16) -> ObjectStore:
    """The store of a resource's spec.storage; `concurrency`: the most requests the caller makes at once.
    Each provider's SDK is imported only here, when a spec names that provider (the providers build on
    base; base knows none of them)."""
    if spec.provider == "AzureBlob":
        from common.storage.azure import AzureBlobStore

        return AzureBlobStore.connect(spec, credentials, concurrency=concurrency)
    if spec.provider == "GCS":
        from common.storage.gcs import GcsStore

        return GcsStore.connect(spec, credentials)
    from common.storage.s3 import S3Store

    return S3Store.connect(spec, credentials, concurrency=concurrency)


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
    "open_store",
    "part_size_for",
]
