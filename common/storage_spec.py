"""spec.storage, read and checked: S3 (its fields in the block itself, as before there were other providers),
Azure Blob Storage (azureBlob) and Google Cloud Storage (gcs). A field of another provider than the one named
is refused with its path, never ignored."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from common.errors import InvalidSpec
from common.schema import (
    AZURE_ACCOUNT_NAME,
    AZURE_CONTAINER_NAME,
    BUCKET_NAME,
    GCS_BUCKET_NAME,
    OBJECT_LOCK_MODES,
    REQUEST_CHECKSUMS,
    S3_ONLY_FIELDS,
    SSE_ALGORITHMS,
    STORAGE_PROVIDERS,
    StorageProvider,
)
from common.spec import SecretKeyRef, SpecReader

_BUCKET = re.compile(BUCKET_NAME)
_AZURE_ACCOUNT = re.compile(AZURE_ACCOUNT_NAME)
_AZURE_CONTAINER = re.compile(AZURE_CONTAINER_NAME)
_GCS_BUCKET = re.compile(GCS_BUCKET_NAME)
_URL = re.compile(r"^https?://[^\s/]+")


@dataclass(frozen=True)
class ObjectLock:
    """spec.storage.objectLock: every object cellar writes is locked (S3 Object Lock) until `retain_for`
    after it was written, in `mode` (GOVERNANCE or COMPLIANCE), and under a legal hold when asked."""

    mode: str
    retain_for: timedelta
    legal_hold: bool = False

    @classmethod
    def parse(cls, reader: SpecReader) -> ObjectLock:
        mode = reader.string("mode", required=True, choices=OBJECT_LOCK_MODES)
        retain_for = reader.duration("retainFor", positive=True)
        if retain_for is None:
            raise InvalidSpec(f"{reader.path}.retainFor: required (for example 30d)")
        if retain_for < timedelta(seconds=1):
            raise InvalidSpec(f"{reader.path}.retainFor: must be at least 1s")
        return cls(mode.upper(), retain_for, reader.boolean("legalHold"))


def _endpoint(reader: SpecReader) -> str | None:
    endpoint = reader.optional_string("endpoint")
    if endpoint and not _URL.match(endpoint):
        raise InvalidSpec(f"{reader.path}.endpoint: {endpoint!r} must be an http:// or https:// URL")
    return endpoint.rstrip("/") if endpoint else None


def _one_credential(reader: SpecReader, choices: tuple[str, ...]) -> str:
    """The one credential a credentials block sets, of `choices` (Secret references or `true` switches)."""
    chosen = [name for name in choices if reader.has(name) and reader.data.get(name) is not False]
    if len(chosen) != 1:
        found = f"found {', '.join(chosen)}" if chosen else "found none"
        raise InvalidSpec(f"{reader.path}: set exactly one of {', '.join(choices)} ({found})")
    return chosen[0]


@dataclass(frozen=True)
class AzureBlobSpec:
    """spec.storage.azureBlob: a container of an Azure storage account, and how to sign in to it."""

    account: str
    container: str
    endpoint: str  # the account's blob endpoint: https://<account>.blob.core.windows.net unless set
    account_key: SecretKeyRef | None
    sas_token: SecretKeyRef | None
    workload_identity: bool

    @classmethod
    def parse(cls, reader: SpecReader) -> AzureBlobSpec:
        account = reader.string("account", required=True, pattern=_AZURE_ACCOUNT)
        credentials = reader.child("credentials", required=True)
        chosen = _one_credential(credentials, ("accountKey", "sasToken", "workloadIdentity"))
        if chosen == "workloadIdentity":
            credentials.boolean("workloadIdentity")
        return cls(
            account=account,
            container=reader.string("container", required=True, pattern=_AZURE_CONTAINER),
            endpoint=_endpoint(reader) or f"https://{account}.blob.core.windows.net",
            account_key=SecretKeyRef.parse(credentials.child(chosen)) if chosen == "accountKey" else None,
            sas_token=SecretKeyRef.parse(credentials.child(chosen)) if chosen == "sasToken" else None,
            workload_identity=chosen == "workloadIdentity",
        )


@dataclass(frozen=True)
class GcsSpec:
    """spec.storage.gcs: a Google Cloud Storage bucket, and how to sign in to it."""

    bucket: str
    endpoint: str | None  # an emulator's or a private endpoint's URL; None: storage.googleapis.com
    service_account_key: SecretKeyRef | None
    workload_identity: bool
    anonymous: bool

    @classmethod
    def parse(cls, reader: SpecReader) -> GcsSpec:
        endpoint = _endpoint(reader)
        credentials = reader.child("credentials", required=True)
        chosen = _one_credential(credentials, ("serviceAccountKey", "workloadIdentity", "anonymous"))
        if chosen != "serviceAccountKey":
            credentials.boolean(chosen)
        if chosen == "anonymous" and endpoint is None:
            raise InvalidSpec(
                f"{credentials.path}.anonymous: only with {reader.path}.endpoint (an emulator, or a gateway that "
                "signs requests itself); Google Cloud Storage needs serviceAccountKey or workloadIdentity"
            )
        return cls(
            bucket=reader.string("bucket", required=True, pattern=_GCS_BUCKET),
            endpoint=endpoint,
            service_account_key=SecretKeyRef.parse(credentials.child(chosen))
            if chosen == "serviceAccountKey"
            else None,
            workload_identity=chosen == "workloadIdentity",
            anonymous=chosen == "anonymous",
        )


@dataclass(frozen=True)
class StorageSpec:
    """spec.storage: S3 (the default; its fields sit in spec.storage itself), Azure Blob Storage
    (spec.storage.azureBlob) or Google Cloud Storage (spec.storage.gcs). `bucket` is the S3 bucket, the
    Azure container or the GCS bucket."""

    bucket: str
    prefix: str
    endpoint: str | None
    region: str
    force_path_style: bool
    endpoint_ca: SecretKeyRef | None
    insecure_skip_tls_verify: bool
    access_key_id: SecretKeyRef | None
    secret_access_key: SecretKeyRef | None
    session_token: SecretKeyRef | None
    inherit_from_iam_role: bool
    sse_algorithm: str | None
    sse_kms_key_id: str | None
    storage_class: str | None
    checksum_when_required: bool
    max_parts: int
    part_size: int
    object_lock: ObjectLock | None = None
    provider: StorageProvider = "S3"
    azure_blob: AzureBlobSpec | None = None
    gcs: GcsSpec | None = None

    @classmethod
    def parse(cls, reader: SpecReader) -> StorageSpec:
        provider: StorageProvider = "S3"
        for known in STORAGE_PROVIDERS:
            if reader.string("provider", "S3", choices=STORAGE_PROVIDERS) == known:
                provider = known
        prefix = reader.string("prefix", "")
        if prefix.startswith("/"):
            raise InvalidSpec(f"{reader.path}.prefix: must not start with '/'")
        part_size = reader.integer("partSizeMiB", 8, minimum=5, maximum=5120) * 1024 * 1024
        if provider == "S3":
            for other in ("azureBlob", "gcs"):
                if reader.has(other):
                    raise InvalidSpec(f"{reader.path}.{other}: only with provider: {_PROVIDER_OF[other]}")
            return cls._parse_s3(reader, prefix.strip("/"), part_size)
        block = "azureBlob" if provider == "AzureBlob" else "gcs"
        others = {field: None for field in ("azureBlob", "gcs") if field != block}
        for field, default in {**S3_ONLY_FIELDS, **others}.items():
            if reader.has(field) and reader.data.get(field) != default:
                raise InvalidSpec(
                    f"{reader.path}.{field}: not a setting of provider {provider}; its settings go in "
                    f"{reader.path}.{block}" + (_LOCK_ELSEWHERE if field == "objectLock" else "")
                )
        azure_blob = AzureBlobSpec.parse(reader.child(block, required=True)) if provider == "AzureBlob" else None
        gcs = GcsSpec.parse(reader.child(block, required=True)) if provider == "GCS" else None
        return cls(
            bucket=azure_blob.container if azure_blob else gcs.bucket if gcs else "",
            prefix=prefix.strip("/"),
            endpoint=None,
            region="",
            force_path_style=False,
            endpoint_ca=None,
            insecure_skip_tls_verify=False,
            access_key_id=None,
            secret_access_key=None,
            session_token=None,
            inherit_from_iam_role=False,
            sse_algorithm=None,
            sse_kms_key_id=None,
            storage_class=None,
            checksum_when_required=False,
            max_parts=10000,
            part_size=part_size,
            provider=provider,
            azure_blob=azure_blob,
            gcs=gcs,
        )

    @classmethod
    def _parse_s3(cls, reader: SpecReader, prefix: str, part_size: int) -> StorageSpec:
        credentials = reader.child("credentials", required=True)
        inherit = credentials.boolean("inheritFromIAMRole")
        keys = {
            name: SecretKeyRef.parse(credentials.child(name)) if credentials.has(name) else None
            for name in ("accessKeyId", "secretAccessKey", "sessionToken")
        }
        if not inherit and (keys["accessKeyId"] is None or keys["secretAccessKey"] is None):
            raise InvalidSpec(
                f"{credentials.path}: set both accessKeyId and secretAccessKey (Secret key "
                "references), or inheritFromIAMRole: true"
            )
        sse = reader.child("serverSideEncryption")
        algorithm = sse.string("algorithm", choices=SSE_ALGORITHMS) if reader.has("serverSideEncryption") else None
        kms_key = sse.optional_string("kmsKeyId")
        if kms_key and algorithm != "aws:kms":
            raise InvalidSpec(f"{sse.path}.kmsKeyId: only allowed with algorithm aws:kms")
        endpoint_ca = SecretKeyRef.parse(reader.child("endpointCA")) if reader.has("endpointCA") else None
        skip_verify = reader.boolean("insecureSkipTLSVerify")
        if endpoint_ca and skip_verify:
            raise InvalidSpec(f"{reader.path}: endpointCA and insecureSkipTLSVerify exclude each other")
        return cls(
            bucket=reader.string("bucket", required=True, pattern=_BUCKET),
            prefix=prefix,
            endpoint=_endpoint(reader),
            region=reader.string("region", "us-east-1"),
            force_path_style=reader.boolean("forcePathStyle"),
            endpoint_ca=endpoint_ca,
            insecure_skip_tls_verify=skip_verify,
            access_key_id=keys["accessKeyId"],
            secret_access_key=keys["secretAccessKey"],
            session_token=keys["sessionToken"],
            inherit_from_iam_role=inherit,
            sse_algorithm=algorithm,
            sse_kms_key_id=kms_key,
            storage_class=reader.optional_string("storageClass"),
            checksum_when_required=reader.string("requestChecksum", "WhenSupported", choices=REQUEST_CHECKSUMS)
            == "WhenRequired",
            max_parts=reader.integer("maxParts", 10000, minimum=1, maximum=10000),
            part_size=part_size,
            object_lock=ObjectLock.parse(reader.child("objectLock")) if reader.has("objectLock") else None,
        )

    def secret_refs(self) -> list[SecretKeyRef]:
        refs: tuple[SecretKeyRef | None, ...] = (
            self.access_key_id,
            self.secret_access_key,
            self.session_token,
            self.endpoint_ca,
        )
        if self.azure_blob is not None:
            refs = (self.azure_blob.account_key, self.azure_blob.sas_token)
        if self.gcs is not None:
            refs = (self.gcs.service_account_key,)
        return [r for r in refs if r is not None]


_PROVIDER_OF = {"azureBlob": "AzureBlob", "gcs": "GCS"}
_LOCK_ELSEWHERE = (
    " (objectLock is S3 Object Lock; cellar does not set Azure immutability policies or GCS retention yet: "
    "set a container immutability policy or a bucket retention policy on the store itself, see the guide)"
)
