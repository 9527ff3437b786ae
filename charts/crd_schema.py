"""The schema pieces the three CRDs share (database, storage, encryption, conditions, progress) and the
builders of schema nodes, for charts/generate_crds.py. Patterns and choices come from common.schema, which
the job's spec reader checks with too."""

from __future__ import annotations

from typing import Any

from common.schema import (
    BUCKET_NAME,
    DNS_SUBDOMAIN,
    DURATION_PATTERN,
    GROUP,
    OBJECT_LOCK_MODES,
    REQUEST_CHECKSUMS,
    SSE_ALGORITHMS,
    SSL_MODES,
    VERSION,
)

Schema = dict[str, Any]

DURATION_HELP = "A duration such as 30s, 15m, 26h, 7d or 2w (units s, m, h, d, w; they may be combined: 1h30m)."


def string(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def integer(description: str, **extra: Any) -> Schema:
    return {"type": "integer", "description": description, **extra}


def boolean(description: str, default: bool) -> Schema:
    return {"type": "boolean", "description": description, "default": default}


def string_list(description: str, max_length: int) -> Schema:
    """A list of non-empty strings of at most `max_length` characters."""
    return {
        "type": "array",
        "items": {"type": "string", "minLength": 1, "maxLength": max_length},
        "description": description,
    }


def duration(description: str, *, positive: bool = False, **extra: Any) -> Schema:
    """A duration string; `positive`: 0s (in any spelling, 0h, 0d0s) is refused, as the job refuses it."""
    schema = string(f"{description} {DURATION_HELP}", pattern=DURATION_PATTERN, maxLength=32, **extra)
    if positive:
        schema["x-kubernetes-validations"] = [{"rule": "self.matches('[1-9]')", "message": "must be more than 0s"}]
    return schema


def obj(
    description: str,
    properties: dict[str, Schema],
    required: list[str] | None = None,
    rules: list[dict[str, str]] | None = None,
    **extra: Any,
) -> Schema:
    schema: Schema = {"type": "object", "description": description, "properties": properties, **extra}
    if required:
        schema["required"] = required
    if rules:
        schema["x-kubernetes-validations"] = rules
    return schema


def secret_key_selector(description: str, kind: str = "Secret") -> Schema:
    return obj(
        description,
        {
            "name": string(
                f"Name of the {kind}, in the resource's own namespace.", pattern=DNS_SUBDOMAIN, maxLength=253
            ),
            "key": string(f"Key within the {kind}.", pattern=r"^[-._a-zA-Z0-9]+$", maxLength=253),
        },
        required=["name", "key"],
    )


def encryption(description: str, identity: str) -> Schema:
    return obj(
        description,
        {
            "recipients": {
                "type": "array",
                "items": {"type": "string", "pattern": "^age1[0-9a-z]+$", "maxLength": 128},
                "maxItems": 64,
                "description": "age recipients (public keys) written inline.",
            },
            "recipientsFrom": obj(
                "A recipients file (one age1... key a line, # comments) in a ConfigMap or Secret key.",
                {
                    "configMapKeyRef": secret_key_selector("A key of a ConfigMap in this namespace.", "ConfigMap"),
                    "secretKeyRef": secret_key_selector("A key of a Secret in this namespace."),
                },
                rules=[
                    {
                        "rule": "has(self.configMapKeyRef) != has(self.secretKeyRef)",
                        "message": "set exactly one of configMapKeyRef and secretKeyRef",
                    }
                ],
            ),
            "identitySecretRef": secret_key_selector(identity),
        },
        rules=[
            {
                "rule": "(has(self.recipients) && size(self.recipients) > 0) || has(self.recipientsFrom)",
                "message": "give at least one age recipient in recipients or recipientsFrom",
            }
        ],
    )


def metrics_push() -> Schema:
    return obj(
        "Where each run pushes its metrics (OTLP/HTTP), instead of or besides the standard OTEL_EXPORTER_OTLP_* "
        "variables of the Job's container. Without either, nothing is pushed.",
        {
            "otlpEndpoint": string(
                "The receiver's OTLP/HTTP base URL; /v1/metrics is appended. For Prometheus 3 started with "
                "--web.enable-otlp-receiver: http://prometheus:9090/api/v1/otlp.",
                pattern=r"^https?://",
                maxLength=2048,
            )
        },
    )


def database_connection() -> Schema:
    return obj(
        "How to reach the PostgreSQL database. Credentials come only from a Secret: the Secret named by "
        "secretRef holds the keys host, port, dbname, username (or user) and password, the layout of "
        "CloudNativePG's <cluster>-app Secret; a key `uri` (postgresql://...) may stand in for all of them. "
        "The fields below override what the Secret says (use host with a Zalando-style Secret that holds "
        "only username and password).",
        {
            "secretRef": obj(
                "The Secret with the connection settings and credentials.",
                {
                    "name": string(
                        "Name of the Secret, in the resource's own namespace.", pattern=DNS_SUBDOMAIN, maxLength=253
                    )
                },
                required=["name"],
            ),
            "host": string("Host name or IP address; overrides the Secret's host key.", maxLength=253, minLength=1),
            "port": integer("TCP port; overrides the Secret's port key. Default 5432.", minimum=1, maximum=65535),
            "dbname": string("Database name; overrides the Secret's dbname key.", minLength=1, maxLength=63),
            "sslMode": string(
                "libpq sslmode. Default prefer (libpq's own default); use verify-full with a CA in "
                "production. The Secret may carry the CA under the key sslrootcert (PEM).",
                enum=list(SSL_MODES),
                default="prefer",
            ),
            "connectTimeoutSeconds": integer("Seconds to wait for a connection.", minimum=1, maximum=300, default=10),
        },
        required=["secretRef"],
    )


def object_storage() -> Schema:
    return obj(
        "Where objects are written: any S3-compatible store (AWS S3, MinIO, Ceph RGW, IBM Cloud Object Storage).",
        {
            "bucket": string(
                "Bucket name. It must exist: cellar never creates buckets.",
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
                "Starting part size in MiB (at least 5, the S3 minimum). Memory holds about three parts.",
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
        required=["bucket", "credentials"],
        rules=[
            {
                "rule": "!(has(self.endpointCA) && self.insecureSkipTLSVerify)",
                "message": "endpointCA and insecureSkipTLSVerify exclude each other",
            }
        ],
    )


def condition_list() -> Schema:
    return {
        "type": "array",
        "description": "The latest observations of the resource's state (metav1.Condition).",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": obj(
            "One condition (metav1.Condition).",
            {
                "type": string(
                    "Condition type in CamelCase.",
                    maxLength=316,
                    pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
                ),
                "status": string("True, False or Unknown.", enum=["True", "False", "Unknown"]),
                "observedGeneration": integer(
                    "The .metadata.generation the condition was set for.", minimum=0, format="int64"
                ),
                "lastTransitionTime": string("When status last changed.", format="date-time"),
                "reason": string(
                    "Machine-readable CamelCase reason.",
                    maxLength=1024,
                    minLength=1,
                    pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
                ),
                "message": string("Human-readable details.", maxLength=32768),
            },
            required=["type", "status", "lastTransitionTime", "reason", "message"],
        ),
    }


def progress() -> Schema:
    return obj(
        "Progress of the run in flight, updated at most every 30 seconds.",
        {
            "done": integer("Units done (bytes for a backup, rows for an archive).", format="int64"),
            "total": integer("Estimated units in all (0 when unknown).", format="int64"),
            "unit": string("bytes or rows."),
            "ratePerSecond": {"type": "number", "description": "Units per second so far."},
            "eta": string("Estimated completion time.", format="date-time"),
            "updateTime": string("When these figures were taken.", format="date-time"),
        },
    )


def run_record(description: str, extra: dict[str, Schema]) -> Schema:
    base: dict[str, Schema] = {
        "runId": string("The run's id, also on every log line of the run."),
        "startTime": string("When the run started.", format="date-time"),
        "completionTime": string("When the run ended.", format="date-time"),
        "durationSeconds": {"type": "number", "description": "Wall time of the run."},
        "reason": string("The outcome's reason, as in the condition."),
        "message": string("The outcome in words."),
    }
    return obj(description, {**base, **extra})


def crd(
    kind: str,
    plural: str,
    short_names: list[str],
    description: str,
    spec: Schema,
    status: Schema,
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "cellar"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["cellar"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": obj(
                            description,
                            {
                                "apiVersion": string("APIVersion of this representation of the object."),
                                "kind": string("Kind of this object."),
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                            required=["spec"],
                        )
                    },
                }
            ],
        },
    }


def ready_column() -> dict[str, Any]:
    return {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'}


def reason_column(condition: str) -> dict[str, Any]:
    return {"name": "Reason", "type": "string", "jsonPath": f'.status.conditions[?(@.type=="{condition}")].reason'}


def age_column() -> dict[str, Any]:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
