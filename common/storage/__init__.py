"""S3-compatible object storage, behind one seam: `ObjectStore` (store), the streaming multipart upload
(upload), the translation of every store failure into cellar's reasons (errors), and the boto3 client they
share (client), which nothing outside this package touches."""

from common.storage.errors import translate_storage_error
from common.storage.store import Lock, ObjectStore, PendingUpload, StoredObject
from common.storage.upload import MAX_PART_SIZE, MIN_PART_SIZE, StreamingUpload, UploadResult, part_size_for

__all__ = [
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "Lock",
    "ObjectStore",
    "PendingUpload",
    "StoredObject",
    "StreamingUpload",
    "UploadResult",
    "part_size_for",
    "translate_storage_error",
]
