"""Generates the chart's CRD YAML (charts/cellar/crds) from one description of the shared schema pieces.

The three CRDs share their database and object-storage settings; writing them once here keeps them
identical. Run `python charts/generate_crds.py` after an edit; a test fails when the
committed YAML and this file disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

GROUP = "cellar.dev"
VERSION = "v1alpha1"
OUTPUT = Path(__file__).resolve().parent / "cellar" / "crds"

Schema = dict[str, Any]

DURATION_PATTERN = r"^([0-9]+(s|m|h|d|w))+$"
DURATION_HELP = "A duration such as 30s, 15m, 26h, 7d or 2w (units s, m, h, d, w; they may be combined: 1h30m)."
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


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
                enum=["disable", "allow", "prefer", "require", "verify-ca", "verify-full"],
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
                pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
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
                    "algorithm": string("AES256 (SSE-S3) or aws:kms (SSE-KMS).", enum=["AES256", "aws:kms"]),
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
                enum=["WhenSupported", "WhenRequired"],
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
                        enum=["Governance", "Compliance"],
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


def database_backup() -> dict[str, Any]:
    spec = obj(
        "What to back up, where to, and how long to keep it. The schedule is the CronJob's.",
        {
            "database": database_connection(),
            "storage": object_storage(),
            "compression": obj(
                "How the dump is compressed on its way to storage.",
                {
                    "algorithm": string(
                        "zstd (default: fast, several cores), gzip (compatible) or none.",
                        enum=["zstd", "gzip", "none"],
                        default="zstd",
                    ),
                    "level": integer(
                        "Compression level: zstd 1-19 (default 1: the fastest, and smaller than gzip), "
                        "gzip 1-9 (default 6).",
                        minimum=1,
                        maximum=19,
                    ),
                    "workers": integer(
                        "zstd worker threads; 0 uses every available core.", minimum=0, maximum=64, default=0
                    ),
                },
                rules=[
                    {
                        "rule": "!has(self.level) || self.algorithm != 'gzip' || self.level <= 9",
                        "message": "gzip levels are 1 to 9",
                    },
                    {
                        "rule": "!has(self.level) || self.algorithm != 'none'",
                        "message": "level has no meaning with algorithm none",
                    },
                ],
                default={},
            ),
            "retention": obj(
                "Which complete backups to keep; a backup kept by any rule stays. The newest good backup is "
                "never deleted. With no rule set, nothing is deleted.",
                {
                    "keepLast": integer("Keep the newest N backups.", minimum=1, maximum=100000),
                    "maxAge": duration("Keep backups younger than this.", positive=True),
                    "keepDaily": integer(
                        "Keep the newest backup of each of the last N days (UTC).", minimum=0, maximum=100000
                    ),
                    "keepWeekly": integer(
                        "Keep the newest backup of each of the last N ISO weeks.", minimum=0, maximum=100000
                    ),
                    "keepMonthly": integer(
                        "Keep the newest backup of each of the last N months.", minimum=0, maximum=100000
                    ),
                    "incompleteAfter": duration(
                        "Objects without a manifest (a crashed run's leftovers) older than this are deleted. "
                        "Longer than any backup takes, or a running backup's upload is taken for a leftover.",
                        default="24h",
                        positive=True,
                    ),
                    "dryRun": boolean("List what retention would delete without deleting it.", False),
                },
                default={},
            ),
            "verify": obj(
                "Restore each new backup into a scratch database and compare every table's row count with "
                "the manifest. Needs CREATEDB for the connecting role. Without target the scratch database "
                "is made on the source's own server: a full copy of the data on its disk, its WAL shipped to "
                "its standbys and WAL archive, at the busiest time of the night.",
                {
                    "enabled": boolean("Verify every backup after it is written.", False),
                    "target": {
                        **database_connection(),
                        "description": "Another PostgreSQL server to run the restore test on (a small scratch "
                        "server, or a CloudNativePG cluster kept for it), so that it costs the source nothing; "
                        "its role needs CREATEDB, and its major must be the source's or newer. The Secret names "
                        "the database cellar connects to first (for example postgres). Secrets as in "
                        "spec.database.",
                    },
                    "scratchDatabasePrefix": string(
                        "Prefix of the scratch database's name; it is dropped after.",
                        pattern=r"^[a-z_][a-z0-9_]{0,30}$",
                        default="cellar_verify_",
                    ),
                },
                default={},
            ),
            "encryption": encryption(
                "Encrypt every backup on the client with age (https://age-encryption.org) to these recipients "
                "(X25519 public keys, age1...), after compression: the object is a standard age file that "
                "`age -d -i key.txt` decrypts. Keep the identity (private key) out of the cluster, or in a "
                "Secret that only the restore test and restores read.",
                "The Secret key holding an age identity (AGE-SECRET-KEY-1...) of one recipient: needed when "
                "verify.enabled, to decrypt the restore test's copy.",
            ),
            "databases": obj(
                "Back up several databases of the server in one run, each in its own snapshot-consistent dump, "
                "listed in one manifest: the backup counts only when every one succeeded. Default: the one "
                "database the Secret names. A restore puts each back into the database of its own name.",
                {
                    "names": string_list("These databases, in this order.", 63),
                    "all": boolean("Every database that allows connections and is not a template.", False),
                    "exclude": string_list("With all: leave these out (names or shell patterns like tmp_*).", 63),
                },
                rules=[
                    {
                        "rule": "(has(self.names) && size(self.names) > 0) != self.all",
                        "message": "set either names or all: true",
                    },
                    {
                        "rule": "!has(self.exclude) || size(self.exclude) == 0 || self.all",
                        "message": "exclude only applies with all: true",
                    },
                ],
            ),
            "globals": obj(
                "Back up the server's roles, role memberships, role settings and tablespaces with each backup "
                "(pg_dumpall --globals-only, stored beside the dump): a rebuilt server gets its roles and grants back.",
                {
                    "enabled": boolean("Store the globals with every backup.", False),
                    "noRolePasswords": boolean(
                        "Leave role passwords out (pg_dumpall --no-role-passwords): needed where the role cannot read "
                        "pg_authid, as on most managed services, and when passwords must not be in backups.",
                        False,
                    ),
                },
                default={},
            ),
            "metrics": metrics_push(),
            "staleAfter": duration(
                "Ready turns False when the newest good backup is older than this, so an alert fires even "
                "when the CronJob never ran. Default 26h (a daily schedule plus slack).",
                default="26h",
                positive=True,
            ),
            "dump": obj(
                "What pg_dump includes.",
                {
                    "schemas": string_list("Only these schemas (pg_dump --schema). Default: all.", 63),
                    "excludeSchemas": string_list("Leave these schemas out (--exclude-schema).", 63),
                    "excludeTableData": string_list(
                        "Dump these tables' definitions without their rows "
                        "(--exclude-table-data), schema.table patterns.",
                        130,
                    ),
                    "noOwner": boolean("Leave ownership out (--no-owner): restore as any role.", False),
                    "noPrivileges": boolean("Leave GRANTs out (--no-privileges).", False),
                },
                default={},
            ),
        },
        required=["database", "storage"],
    )
    status = obj(
        "What the backup job observed.",
        {
            "observedGeneration": integer("The generation of the spec the last run used.", format="int64"),
            "conditions": condition_list(),
            "lastRun": run_record("The last run, successful or not.", {"key": string("Object key it wrote.")}),
            "lastSuccessfulBackup": obj(
                "The newest complete backup.",
                {
                    "key": string("Object key of the dump (with several databases: the first one's)."),
                    "manifestKey": string("Object key of its manifest."),
                    "databases": {
                        "type": "array",
                        "description": "The databases it holds.",
                        "items": {"type": "string"},
                    },
                    "sizeBytes": integer("Stored size in bytes.", format="int64"),
                    "rawSizeBytes": integer("Size of the dumps before compression, in bytes.", format="int64"),
                    "size": string("Stored size for people (for example 1.2 GiB)."),
                    "sha256": string("SHA-256 of the stored object, hex (empty with several databases)."),
                    "startTime": string("When the dump started.", format="date-time"),
                    "completionTime": string("When the manifest was written.", format="date-time"),
                    "durationSeconds": {"type": "number", "description": "Wall time of the dump."},
                    "verified": boolean("Whether a restore test passed for this backup.", False),
                    "serverVersion": string("The PostgreSQL server's version when it was dumped."),
                    "pgDumpVersion": string("The pg_dump that wrote it (pg_restore must be this major or newer)."),
                },
            ),
            "lastVerification": obj(
                "The last restore test.",
                {
                    "time": string("When it finished.", format="date-time"),
                    "key": string("The backup tested."),
                    "result": string("Passed or Failed."),
                    "message": string("What it found."),
                    "passed": boolean("Whether it passed (result as a boolean, for metrics).", False),
                },
            ),
            "backupsKept": integer("Complete backups in storage after retention."),
            "freshUntil": string(
                "When Ready turns stale unless a newer backup succeeds: the newest good backup's completion "
                "plus staleAfter. Alert on time() > freshUntil to catch a CronJob that stopped running.",
                format="date-time",
            ),
            "progress": progress(),
        },
    )
    columns = [
        ready_column(),
        reason_column("Ready"),
        {"name": "Last Success", "type": "date", "jsonPath": ".status.lastSuccessfulBackup.completionTime"},
        {"name": "Size", "type": "string", "jsonPath": ".status.lastSuccessfulBackup.size"},
        {"name": "Verified", "type": "boolean", "jsonPath": ".status.lastSuccessfulBackup.verified"},
        {"name": "Kept", "type": "integer", "jsonPath": ".status.backupsKept", "priority": 1},
        age_column(),
    ]
    return crd(
        "DatabaseBackup",
        "databasebackups",
        ["dbbackup", "dbb"],
        "A PostgreSQL database backed up by cellar's backup job to S3-compatible storage.",
        spec,
        status,
        columns,
    )


def database_restore() -> dict[str, Any]:
    spec = obj(
        "Which backup to restore, and into which database. One-shot: run once by the backup image's restore "
        "command; create a new DatabaseRestore to restore again.",
        {
            "backup": obj(
                "The backup to restore.",
                {
                    "name": string(
                        "Name of the DatabaseBackup (same namespace) whose storage holds the backup.",
                        pattern=DNS_SUBDOMAIN,
                        maxLength=253,
                    ),
                    "key": string(
                        "Object key of the dump. Default: the newest complete backup.", minLength=1, maxLength=1024
                    ),
                },
                required=["name"],
            ),
            "target": database_connection(),
            "createDatabase": boolean("Create the target database first (it must not exist).", False),
            "clean": boolean(
                "Drop the objects the dump contains before recreating them (pg_restore --clean --if-exists).", False
            ),
            "noOwner": boolean("Do not restore ownership (pg_restore --no-owner).", False),
            "globals": boolean(
                "Apply the backup's roles, memberships, role settings and tablespaces to the target server first "
                "(statements that fail, such as a role that exists already, are reported, not fatal).",
                False,
            ),
            "databases": string_list(
                "Of a backup of several databases (spec.databases in the DatabaseBackup), restore these, each into "
                "the database of its own name on the target's server. Default: every one it holds.",
                63,
            ),
            "select": obj(
                "Restore only part of the backup, chosen from pg_restore's table of contents: whole schemas, "
                "and tables or views with what belongs to them (their data, owned sequences, defaults, "
                "constraints, indexes, triggers, comments, grants, own foreign keys). Without clean, the "
                "restore refuses if the target already has any of them.",
                {
                    "schemas": string_list("Schemas to restore whole.", 63),
                    "tables": string_list("Tables or views as schema.table (a name alone is in public).", 127),
                    "data": boolean("Restore their rows too; false: definitions only.", True),
                },
                rules=[
                    {
                        "rule": "(has(self.schemas) && size(self.schemas) > 0) || "
                        "(has(self.tables) && size(self.tables) > 0)",
                        "message": "name at least one schema or table, or leave select out to restore everything",
                    }
                ],
            ),
            "parallelism": integer(
                "Restore with pg_restore --jobs=N from a copy of the dump staged on spec.staging.path, as fast "
                "as the target's cores allow; needs createDatabase (pg_restore -j cannot run in one transaction, "
                "so a failure drops that database again). Default 1: streamed, in one transaction.",
                minimum=1,
                maximum=64,
                default=1,
            ),
            "staging": obj(
                "A volume the restore Job mounts (an emptyDir or a PVC) for the staged copy of the dump, "
                "uncompressed: it needs the backup's raw size free, checked before the download. The copy is "
                "removed afterwards.",
                {"path": string("Where the volume is mounted, for example /staging.", pattern=r"^/.*", maxLength=1024)},
                required=["path"],
            ),
            "metrics": metrics_push(),
            "decryption": obj(
                "For a backup encrypted with age: the identity that decrypts it.",
                {
                    "identitySecretRef": secret_key_selector(
                        "The Secret key holding an age identity (AGE-SECRET-KEY-1..., what age-keygen writes) "
                        "of one of the backup's recipients."
                    )
                },
                required=["identitySecretRef"],
            ),
        },
        required=["backup", "target"],
        rules=[
            {
                "rule": "!(self.createDatabase && self.clean)",
                "message": "clean has nothing to drop in a database that createDatabase just made; set one",
            },
            {
                "rule": "!has(self.parallelism) || self.parallelism == 1 || (has(self.staging) && self.createDatabase)",
                "message": "parallelism above 1 needs staging.path and createDatabase: true",
            },
        ],
    )
    status = obj(
        "What the restore observed.",
        {
            "observedGeneration": integer("The generation of the spec the run used.", format="int64"),
            "conditions": condition_list(),
            "key": string("The backup that was restored."),
            "startTime": string("When the restore started.", format="date-time"),
            "completionTime": string("When it ended.", format="date-time"),
            "bytesRead": integer("Bytes read from storage.", format="int64"),
            "progress": progress(),
        },
    )
    columns = [
        {"name": "Succeeded", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Succeeded")].status'},
        reason_column("Succeeded"),
        {"name": "Backup", "type": "string", "jsonPath": ".spec.backup.name"},
        {"name": "Completed", "type": "date", "jsonPath": ".status.completionTime"},
        age_column(),
    ]
    return crd(
        "DatabaseRestore",
        "databaserestores",
        ["dbrestore", "dbr"],
        "A one-shot restore of a cellar backup into a PostgreSQL database.",
        spec,
        status,
        columns,
    )


def table_archive() -> dict[str, Any]:
    ident = {"type": "string", "minLength": 1, "maxLength": 63}
    spec = obj(
        "Which rows of which table age out, and where they go. Archive means move: archived rows leave the "
        "table (mode Move) once they are safely in storage.",
        {
            "database": database_connection(),
            "partitions": obj(
                "For a table range-partitioned on timestampColumn (declarative, pg_partman too): partitions whose "
                "whole range lies before the cutoff are detached, read once and dropped instead of deleted row by "
                "row; the rest goes in batches. Not in Copy mode, with a filter, or while unarchived rows are held.",
                {
                    "archiveWhole": boolean("Archive whole partitions (default true).", True),
                    "keepDetached": boolean(
                        "Keep each archived partition as a detached table instead of dropping it.", False
                    ),
                },
                default={},
            ),
            "metrics": metrics_push(),
            "storage": object_storage(),
            "table": obj(
                "The table to archive.",
                {
                    "schema": {**ident, "description": "Schema. Default public.", "default": "public"},
                    "name": {**ident, "description": "Table name (quoted as given: case matters)."},
                },
                required=["name"],
            ),
            "primaryKey": {
                "type": "array",
                "items": ident,
                "maxItems": 32,
                "description": "Primary-key columns. Default: discovered from the table.",
            },
            "timestampColumn": {
                **ident,
                "description": "The column whose age decides (timestamp, timestamptz or date).",
            },
            "olderThan": duration("Rows whose timestampColumn is older than now minus this are archived."),
            "filter": string(
                "TRUSTED SQL: a boolean expression ANDed to the age test, inserted into the query as written. "
                "Whoever can edit this resource can run SQL as the job's database role: restrict who may "
                "write TableArchives accordingly.",
                maxLength=4096,
            ),
            "batch": obj(
                "How much one transaction moves, and how many batches run at once. Small batches keep "
                "transactions short (VACUUM, locks). In Move mode without a pause, the due rows are split by "
                "time into `parallelism` lanes that run side by side, and in each lane the next batch's DELETE "
                "runs on a second connection while the previous batch uploads and commits: a run uses "
                "2 x parallelism database connections. With a pause, or in Copy mode, batches run one at a "
                "time on one connection. A run reads rows, maxBytesMiB, pause and maxReplicationLag (and "
                "maxRunTime, lockTimeout, statementTimeout) again between batches, at most every 10 seconds: "
                "a change applies to the run under way.",
                {
                    "rows": integer("Most rows per batch.", minimum=1, maximum=1000000, default=25000),
                    "maxBytesMiB": integer("Most encoded MiB per batch object.", minimum=1, maximum=4096, default=128),
                    "parallelism": integer(
                        "Lanes of batches that run at once, each over its own time range and two connections "
                        "(Move mode without a pause). 1 spares the database most; each lane adds about one "
                        "busy backend while the run lasts.",
                        minimum=1,
                        maximum=8,
                        default=2,
                    ),
                    "pause": duration(
                        "Pause between batches, to spare the primary and its replicas; with a pause, batches run "
                        "one at a time on one connection.",
                        default="0s",
                    ),
                    "maxReplicationLag": duration(
                        "Hold each batch back while a standby streaming from the database replays more than "
                        "this far behind (pg_stat_replication.replay_lag; a standby that has replayed all WAL "
                        "written counts as 0). 0s waits for every standby to replay everything before each "
                        "batch. Needs pg_monitor (pg_read_all_stats) for the job's database role; unset, "
                        "nothing waits.",
                    ),
                },
                default={},
            ),
            "maxRunTime": duration(
                "A run stops after the batch in flight once it has run this long.", default="1h", positive=True
            ),
            "lockTimeout": duration(
                "SET LOCAL lock_timeout for each batch (and the partition detaches): how long a batch waits for a "
                "row or table lock before it fails. 0s waits without limit, as in PostgreSQL.",
                default="5s",
            ),
            "statementTimeout": duration(
                "SET LOCAL statement_timeout for each batch's statements. 0s: no limit, as in PostgreSQL.",
                default="60s",
            ),
            "format": string(
                "Parquet (zstd, queryable in place) or CSVGzip.", enum=["Parquet", "CSVGzip"], default="Parquet"
            ),
            "partitioning": string(
                "Hive-style key layout by the row's timestamp: Daily (dt=YYYY-MM-DD), Monthly (dt=YYYY-MM) or None.",
                enum=["Daily", "Monthly", "None"],
                default="Daily",
            ),
            "mode": string(
                "Move deletes archived rows; Copy keeps them and archives each row once, continuing after the "
                "newest (timestamp, key) it archived: a row inserted later with an older timestamp is not copied.",
                enum=["Move", "Copy"],
                default="Move",
            ),
            "encryption": encryption(
                "Encrypt every archived object on the client with age (https://age-encryption.org) to these "
                "recipients (X25519 public keys, age1...): each file is a standard age file of the Parquet "
                "(or CSV) file, `<name>.parquet.age`. Query engines then need it decrypted first "
                "(age -d); unarchive decrypts with identitySecretRef.",
                "The Secret key holding an age identity (AGE-SECRET-KEY-1...) of one recipient: needed by "
                "unarchive, and by a run that checks a crashed run's encrypted leftovers before deleting them.",
            ),
            "dryRun": boolean("Count what would move and show the plan; change nothing.", False),
            "allowCascade": boolean(
                "Archive even when other tables reference this one with ON DELETE CASCADE (their rows would "
                "be deleted without being archived).",
                False,
            ),
        },
        required=["database", "storage", "table", "timestampColumn", "olderThan"],
    )
    status = obj(
        "What the archive job observed.",
        {
            "observedGeneration": integer("The generation of the spec the last run used.", format="int64"),
            "conditions": condition_list(),
            "cutoff": string("Rows older than this were due in the last run.", format="date-time"),
            "oldestRowTime": string("The oldest timestampColumn value still in the table.", format="date-time"),
            "lastRun": run_record(
                "The last run.",
                {
                    "rows": integer("Rows archived.", format="int64"),
                    "bytes": integer("Bytes written.", format="int64"),
                    "batches": integer("Batches committed.", format="int64"),
                    "longestTransactionSeconds": {
                        "type": "number",
                        "description": "The longest batch transaction, BEGIN to COMMIT: what held locks and "
                        "VACUUM's horizon longest.",
                    },
                },
            ),
            "totals": obj(
                "Everything archived so far.",
                {
                    "rows": integer("Rows archived.", format="int64"),
                    "bytes": integer("Bytes written.", format="int64"),
                    "batches": integer("Batches committed.", format="int64"),
                },
            ),
            "lastSkipped": obj(
                "The last run that found another run holding the table's lock and skipped (exit 0).",
                {
                    "time": string("When it skipped.", format="date-time"),
                    "runId": string("Its run id."),
                    "reason": string("LockHeld."),
                    "message": string("Why."),
                },
            ),
            "lastUnarchive": obj(
                "The last unarchive: rows loaded back from storage.",
                {
                    "time": string("When it finished.", format="date-time"),
                    "from": string("First timestamp brought back."),
                    "to": string("End of the range (exclusive)."),
                    "into": string("side or source."),
                    "objects": integer("Objects read and verified.", format="int64"),
                    "rows": integer("Rows inserted.", format="int64"),
                    "message": string("The outcome in words."),
                },
            ),
            "progress": progress(),
        },
    )
    columns = [
        ready_column(),
        reason_column("Ready"),
        {"name": "Table", "type": "string", "jsonPath": ".spec.table.name"},
        {"name": "Last Rows", "type": "integer", "jsonPath": ".status.lastRun.rows"},
        {"name": "Total Rows", "type": "integer", "jsonPath": ".status.totals.rows"},
        {"name": "Oldest Row", "type": "date", "jsonPath": ".status.oldestRowTime"},
        age_column(),
    ]
    return crd(
        "TableArchive",
        "tablearchives",
        ["tarchive"],
        "A table whose old rows cellar's archive job moves to Parquet in S3-compatible storage.",
        spec,
        status,
        columns,
    )


DEFINITIONS = {
    "databasebackups.yaml": database_backup,
    "databaserestores.yaml": database_restore,
    "tablearchives.yaml": table_archive,
}


def render(builder: Any) -> str:
    header = "# Generated by charts/generate_crds.py: edit that file, not this one.\n"
    return header + yaml.safe_dump(builder(), sort_keys=False, width=110)


def main() -> int:
    for file_name, builder in DEFINITIONS.items():
        (OUTPUT / file_name).write_text(render(builder), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
