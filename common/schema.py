"""What the CRDs and the job's spec reader must agree on, written once: the API group, the patterns of names
and durations, and the choices of every enumerated field. charts/generate_crds.py writes them into the CRDs'
schemas (the API server checks a spec on the way in) and common.spec and the jobs' settings check a spec
with them again as they read it (a resource written before a CRD change, or a spec read by hand)."""

from __future__ import annotations

from typing import Literal, get_args

GROUP = "cellar.dev"
VERSION = "v1alpha1"

DURATION_PATTERN = r"^([0-9]+(s|m|h|d|w))+$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
BUCKET_NAME = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
SCRATCH_DATABASE_PREFIX = r"^[a-z_][a-z0-9_]{0,30}$"

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
OBJECT_LOCK_MODES = ("Governance", "Compliance")
SSE_ALGORITHMS = ("AES256", "aws:kms")
REQUEST_CHECKSUMS = ("WhenSupported", "WhenRequired")
COMPRESSIONS = ("zstd", "gzip", "none")
ArchiveFormat = Literal["Parquet", "CSVGzip"]
Partitioning = Literal["Daily", "Monthly", "None"]
ArchiveMode = Literal["Move", "Copy"]
ARCHIVE_FORMATS: tuple[ArchiveFormat, ...] = get_args(ArchiveFormat)
PARTITIONINGS: tuple[Partitioning, ...] = get_args(Partitioning)
ARCHIVE_MODES: tuple[ArchiveMode, ...] = get_args(ArchiveMode)
