"""The schema pieces the three CRDs share (database, storage, encryption, conditions, progress) and the
builders of schema nodes, for tools/generate_crds.py. Patterns and choices come from common.schema, which
the job's spec reader checks with too."""

from __future__ import annotations

from typing import Any

from common.schema import (
    DNS_SUBDOMAIN,
    DURATION_PATTERN,
    GROUP,
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


def crd(  # noqa: PLR0913 (a schema builder: each argument is a part of the CRD)
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
