"""The schema of spec.storage, shared by DatabaseBackup and TableArchive: S3 (its fields in the block itself,
as before there were other providers), Azure Blob Storage (azureBlob) and Google Cloud Storage (gcs)."""

from __future__ import annotations

from common.schema import (
    AZURE_ACCOUNT_NAME,
    AZURE_CONTAINER_NAME,
    BUCKET_NAME,
    GCS_BUCKET_NAME,
    OBJECT_LOCK_MODES,
    REQUEST_CHECKSUMS,
    SSE_ALGORITHMS,
    STORAGE_PROVIDERS,
    StorageProvider,
)
from tools.crd_schema import Schema, boolean, duration, integer, obj, secret_key_selector, string

ENDPOINT = r"^https?://[^\s/]+(/.*)?$"
# What spec.storage needs for each provider (the rules below; the chart's values schema requires the same of a
# storage merged over defaults.storage).
PROVIDER_NEEDS: dict[StorageProvider, tuple[str, ...]] = {
    "S3": ("bucket", "credentials"),
    "AzureBlob": ("azureBlob",),
    "GCS": ("gcs",),
}


def one_of(references: list[str], switches: list[str]) -> dict[str, str]:
    """A CEL rule: exactly one of the Secret `references` is set or one of the boolean `switches` is true."""
    terms = [f"(has(self.{f}) ? 1 : 0)" for f in references] + [
        f"(has(self.{f}) && self.{f} ? 1 : 0)" for f in switches
    ]
    fields = ", ".join([*references, *switches])
    return {"rule": " + ".join(terms) + " == 1", "message": f"set exactly one of {fields}"}


def azure_blob() -> Schema:
    return obj(
        "Azure Blob Storage (provider: AzureBlob): a container of a storage account.",
        {
            "account": string("Storage account name.", pattern=AZURE_ACCOUNT_NAME),
            "container": string(
                "Container name. It must exist: cellar never creates containers.", pattern=AZURE_CONTAINER_NAME
            ),
            "endpoint": string(
                "Blob service URL, for sovereign clouds, private endpoints or Azurite "
                "(http://127.0.0.1:10000/devstoreaccount1). Default: https://<account>.blob.core.windows.net.",
                pattern=ENDPOINT,
                maxLength=2048,
            ),
            "credentials": obj(
                "Exactly one of: the account key or a SAS token from a Secret, or workloadIdentity (AKS workload "
                "identity: the Pod's ServiceAccount federated with an Entra ID identity).",
                {
                    "accountKey": secret_key_selector("The Secret key holding the storage account key."),
                    "sasToken": secret_key_selector(
                        "The Secret key holding a SAS token for the container (read, add, create, write, delete, list)."
                    ),
                    "workloadIdentity": boolean(
                        "Sign in as the workload identity AKS gives the Pod (AZURE_CLIENT_ID, AZURE_TENANT_ID, "
                        "AZURE_FEDERATED_TOKEN_FILE).",
                        False,
                    ),
                },
                rules=[one_of(["accountKey", "sasToken"], ["workloadIdentity"])],
            ),
        },
        required=["account", "container", "credentials"],
    )


def gcs() -> Schema:
    return obj(
        "Google Cloud Storage (provider: GCS): a bucket, through the JSON API.",
        {
            "bucket": string("Bucket name. It must exist: cellar never creates buckets.", pattern=GCS_BUCKET_NAME),
            "endpoint": string(
                "API endpoint, for private endpoints or emulators (http://127.0.0.1:4443). Default: "
                "https://storage.googleapis.com.",
                pattern=ENDPOINT,
                maxLength=2048,
            ),
            "credentials": obj(
                "Exactly one of: a service account key (JSON) from a Secret, workloadIdentity (GKE workload "
                "identity, or any Application Default Credentials), or anonymous (only with endpoint: emulators).",
                {
                    "serviceAccountKey": secret_key_selector("The Secret key holding the service account's JSON key."),
                    "workloadIdentity": boolean(
                        "Sign in with Application Default Credentials: on GKE, the Google service account the Pod's "
                        "Kubernetes ServiceAccount is bound to.",
                        False,
                    ),
                    "anonymous": boolean("Send no credentials (emulators such as fake-gcs-server).", False),
                },
                rules=[one_of(["serviceAccountKey"], ["workloadIdentity", "anonymous"])],
            ),
        },
        required=["bucket", "credentials"],
        rules=[
            {
                "rule": "!(has(self.credentials.anonymous) && self.credentials.anonymous) || has(self.endpoint)",
                "message": "credentials.anonymous needs endpoint (an emulator)",
            }
        ],
    )


def object_storage() -> Schema:
    return obj(
        "Where objects are written: an S3-compatible store (AWS S3, MinIO, Ceph RGW, IBM Cloud Object Storage; the "
        "default, set in this block), Azure Blob Storage (azureBlob) or Google Cloud Storage (gcs).",
        {
            "provider": string(
                "S3 (the default), AzureBlob or GCS. The S3 fields below are S3's alone; AzureBlob takes its "
                "settings from azureBlob, GCS from gcs.",
                enum=list(STORAGE_PROVIDERS),
                default="S3",
            ),
            "azureBlob": azure_blob(),
            "gcs": gcs(),
            "bucket": string(
                "S3 bucket name. It must exist: cellar never creates buckets.",
                pattern=BUCKET_NAME,
            ),
            "prefix": string(
                "Key prefix under which everything is written, without a leading slash (for example "
                "prod/orders). Default: no prefix.",
                pattern=r"^$|^[^/].*$",
                maxLength=512,
                default="",
            ),
            "endpoint": string(
                "Endpoint URL for stores other than AWS S3 (https://minio.example:9000, "
                "https://s3.us-south.cloud-object-storage.appdomain.cloud). Default: AWS S3 for the region.",
                pattern=r"^https?://[^\s/]+(/.*)?$",
                maxLength=2048,
            ),
            "region": string(
                "Region. Default us-east-1, which MinIO and Ceph accept.",
                default="us-east-1",
                pattern=r"^[a-z0-9-]+$",
                maxLength=64,
            ),
            "forcePathStyle": boolean(
                "Address buckets as endpoint/bucket instead of bucket.endpoint. MinIO and Ceph usually need true.",
                False,
            ),
            "endpointCA": secret_key_selector(
                "A Secret key holding the PEM CA bundle that signed the endpoint's certificate (private CA)."
            ),
            "insecureSkipTLSVerify": boolean(
                "Do not verify the endpoint's TLS certificate. For tests only; prefer endpointCA.", False
            ),
            "credentials": obj(
                "Access keys by Secret reference, or inheritFromIAMRole to use the environment's own "
                "identity (IRSA, EKS Pod Identity, instance profile).",
                {
                    "accessKeyId": secret_key_selector("The Secret key holding the access key id."),
                    "secretAccessKey": secret_key_selector("The Secret key holding the secret access key."),
                    "sessionToken": secret_key_selector("The Secret key holding a session token (optional)."),
                    "inheritFromIAMRole": boolean(
                        "Use boto3's default credential chain instead of keys from Secrets.", False
                    ),
                },
                rules=[
                    {
                        "rule": "self.inheritFromIAMRole == true ? (!has(self.accessKeyId) && "
                        "!has(self.secretAccessKey)) : (has(self.accessKeyId) && has(self.secretAccessKey))",
                        "message": "set either inheritFromIAMRole: true, or both accessKeyId and secretAccessKey",
                    }
                ],
            ),
            "serverSideEncryption": obj(
                "Server-side encryption of every object written.",
                {
                    "algorithm": string("AES256 (SSE-S3) or aws:kms (SSE-KMS).", enum=list(SSE_ALGORITHMS)),
                    "kmsKeyId": string(
                        "KMS key id or ARN; only with aws:kms (default: the account's key).",
                        minLength=1,
                        maxLength=2048,
                    ),
                },
                required=["algorithm"],
                rules=[
                    {
                        "rule": "!has(self.kmsKeyId) || self.algorithm == 'aws:kms'",
                        "message": "kmsKeyId is only allowed with algorithm aws:kms",
                    }
                ],
            ),
            "storageClass": string(
                "Storage class of written objects (STANDARD, STANDARD_IA, ...). Default: the bucket's.",
                pattern=r"^[A-Za-z0-9_-]+$",
                maxLength=64,
            ),
            "requestChecksum": string(
                "WhenSupported sends a CRC checksum with every upload (boto3's default since 1.36); "
                "WhenRequired sends one only where the API requires it, for stores that reject the newer "
                "checksum headers (older Ceph, some IBM COS and MinIO releases).",
                enum=list(REQUEST_CHECKSUMS),
                default="WhenSupported",
            ),
            "maxParts": integer(
                "Most parts one multipart upload may have: 10000 on AWS; lower it for stores with a smaller "
                "limit. The part size grows as a stream grows so that it never runs out of parts.",
                minimum=1,
                maximum=10000,
                default=10000,
            ),
            "partSizeMiB": integer(
                "Starting part size in MiB (at least 5, the S3 minimum): S3 parts, Azure blocks, GCS resumable "
                "chunks. Memory holds about three parts.",
                minimum=5,
                maximum=5120,
                default=8,
            ),
            "objectLock": obj(
                "Write every object (data, manifests, archive files) with S3 Object Lock, so that no one, "
                "cellar's own retention included, can delete or overwrite it before retainFor has passed. "
                "The bucket must have been created with object lock enabled; the run checks before writing.",
                {
                    "mode": string(
                        "Governance (users with s3:BypassGovernanceRetention may still delete) or Compliance "
                        "(no one may, not even the account's root user, until the date).",
                        enum=list(OBJECT_LOCK_MODES),
                    ),
                    "retainFor": duration("How long after it is written each object is locked.", positive=True),
                    "legalHold": boolean(
                        "Also place a legal hold on every object: it stays, whatever the date, until the hold "
                        "is removed.",
                        False,
                    ),
                },
                required=["mode", "retainFor"],
            ),
        },
        rules=[
            {
                "rule": "!(has(self.endpointCA) && self.insecureSkipTLSVerify)",
                "message": "endpointCA and insecureSkipTLSVerify exclude each other",
            },
            {
                "rule": "self.provider != 'S3' || ("
                + " && ".join(f"has(self.{f})" for f in PROVIDER_NEEDS["S3"])
                + ")",
                "message": "provider S3 needs " + " and ".join(PROVIDER_NEEDS["S3"]),
            },
            {
                "rule": "(self.provider == 'AzureBlob') == has(self.azureBlob)",
                "message": "azureBlob is set exactly when provider is AzureBlob",
            },
            {
                "rule": "(self.provider == 'GCS') == has(self.gcs)",
                "message": "gcs is set exactly when provider is GCS",
            },
        ],
    )
