"""What the CRDs and the job's spec reader must agree on, written once: the API group, the patterns of names
and durations, and the choices of every enumerated field. tools/generate_crds.py writes them into the CRDs'
schemas (the API server checks a spec on the way in) and common.spec and the jobs' settings check a spec
with them again as they read it (a resource written before a CRD change, or a spec read by hand)."""

from __future__ import annotations

from typing import Literal, get_args

GROUP = "cellar.dev"
VERSION = "v1alpha1"

DURATION_PATTERN = r"^([0-9]+(s|m|h|d|w))+$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
BUCKET_NAME = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
# Azure: storage account names are 3-24 lowercase letters and digits; container names 3-63 of lowercase
# letters, digits and single hyphens. GCS bucket names may also hold underscores, and dots up to 222.
AZURE_ACCOUNT_NAME = r"^[a-z0-9]{3,24}$"
AZURE_CONTAINER_NAME = r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$"
GCS_BUCKET_NAME = r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$"
SCRATCH_DATABASE_PREFIX = r"^[a-z_][a-z0-9_]{0,30}$"

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
OBJECT_LOCK_MODES = ("Governance", "Compliance")
SSE_ALGORITHMS = ("AES256", "aws:kms")
REQUEST_CHECKSUMS = ("WhenSupported", "WhenRequired")
COMPRESSIONS = ("zstd", "gzip", "none")
StorageProvider = Literal["S3", "AzureBlob", "GCS"]
STORAGE_PROVIDERS: tuple[StorageProvider, ...] = get_args(StorageProvider)
# The spec.storage fields that only S3 reads, with the default the CRD fills in (None: no default); set to
# anything else with another provider, they are refused rather than ignored.
S3_ONLY_FIELDS: dict[str, object] = {
    "bucket": None,
    "endpoint": None,
    "region": "us-east-1",
    "forcePathStyle": False,
    "endpointCA": None,
    "insecureSkipTLSVerify": False,
    "credentials": None,
    "serverSideEncryption": None,
    "storageClass": None,
    "requestChecksum": "WhenSupported",
    "maxParts": 10000,
    "objectLock": None,
}
ArchiveFormat = Literal["Parquet", "CSVGzip", "Iceberg"]
Partitioning = Literal["Daily", "Monthly", "None"]
ArchiveMode = Literal["Move", "Copy"]
ARCHIVE_FORMATS: tuple[ArchiveFormat, ...] = get_args(ArchiveFormat)
PARTITIONINGS: tuple[Partitioning, ...] = get_args(Partitioning)
ARCHIVE_MODES: tuple[ArchiveMode, ...] = get_args(ArchiveMode)
# spec.iceberg.partitionBy: the Iceberg transform of the timestamp column that partitions the table.
IcebergTransform = Literal["day", "month", "year"]
ICEBERG_TRANSFORMS: tuple[IcebergTransform, ...] = get_args(IcebergTransform)
ICEBERG_CATALOG_TYPES = ("Sql", "Rest")
