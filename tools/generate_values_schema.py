"""Generate the chart's values.schema.json from the CRDs' own schemas (tools/crd_*.py), so that Helm refuses a
values file the API server would refuse, before anything is installed, and a key the chart would drop (a
typo: `retension:`) is refused too.

Each entry's spec is its CRD's spec schema, closed (additionalProperties: false at every level). A backup's
or archive's spec.database and spec.storage are merged over defaults.database and defaults.storage, key by
key (cellar.mergedSpec), so what the CRD requires at those two levels may come from the defaults: there the
entry's schema requires nothing, and conditionals at the root (merged_requirements) require of each entry what
defaults.* leave out. Helm checks it on lint as on install; the templates check the merged spec against the
CRD again (cellar.required), for a render with --skip-schema-validation.

Usage: python -m tools.generate_values_schema [--check]
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Sequence
from typing import Any

from common.schema import STORAGE_PROVIDERS
from tools.crd_databasebackup import database_backup
from tools.crd_databaserestore import database_restore
from tools.crd_storage import PROVIDER_NEEDS
from tools.crd_tablearchive import table_archive
from tools.generated import CHART, write_or_check

Schema = dict[str, Any]

OUTPUT = CHART / "values.schema.json"
# The spec fields merged over defaults.<field> (cellar.mergedSpec in templates/_helpers.tpl).
MERGED_FROM_DEFAULTS = ("database", "storage")
DURATION_OR_SECONDS = {
    "type": ["string", "integer"],
    "description": "A duration (30s, 15m, 6h, 2d) or a number of seconds; the Job's activeDeadlineSeconds.",
}
RESOURCES = {"type": "object", "description": "The container's resources (requests, limits)."}


def spec_of(crd: Schema) -> Schema:
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"])


def closed(schema: Schema) -> Schema:
    """`schema` in plain JSON Schema: every object refuses keys it does not list; the API server's own
    extensions (CEL rules, list types) left out, as Helm does not read them."""
    result = {key: value for key, value in schema.items() if not key.startswith("x-kubernetes-")}
    if "properties" in result:
        result["properties"] = {name: closed(field) for name, field in result["properties"].items()}
        result["additionalProperties"] = False
    if "items" in result:
        result["items"] = closed(result["items"])
    return result


def without_required(schema: Schema) -> Schema:
    partial = dict(schema)
    partial.pop("required", None)
    return partial


def merged_spec(spec: Schema) -> Schema:
    """A backup's or archive's spec as an entry writes it: database and storage (and what they require at their
    own level) may come from defaults, so they are the partial blocks defaults.* are (#/definitions)."""
    spec = copy.deepcopy(spec)
    required = [field for field in spec.get("required", []) if field not in MERGED_FROM_DEFAULTS]
    spec.pop("required", None)
    if required:
        spec["required"] = required
    for field in MERGED_FROM_DEFAULTS:
        spec["properties"][field] = {"$ref": f"#/definitions/{field}"}
    return spec


def merged_blocks(spec: Schema) -> dict[str, Schema]:
    """spec.database and spec.storage as defaults.* and an entry each write them: whole, or in part."""
    blocks = {field: without_required(closed(spec["properties"][field])) for field in MERGED_FROM_DEFAULTS}
    for field, block in blocks.items():
        block["description"] = f"{block['description']} Merged key by key over defaults.{field}."
    return blocks


def at(path: list[str], leaf: Schema | None = None) -> Schema:
    """Holds where `path` is present (and its value is `leaf`)."""
    if not path:
        return leaf or {}
    return {"required": [path[0]], "properties": {path[0]: at(path[1:], leaf)}}


def every_entry(sections: tuple[str, ...], schema: Schema) -> Schema:
    return {"properties": {section: {"additionalProperties": schema} for section in sections}}


def entries_need(sections: tuple[str, ...], path: list[str], when: Schema | None = None) -> Schema:
    """The spec of every entry of `sections` (whose spec matches `when`) has `path`. (An entry's spec itself is
    required by the entry's own schema, so that a missing one is named once.)"""
    need: Schema = {"properties": {"spec": at(path)}}
    if when:
        need = {"if": {"properties": {"spec": when}}, "then": need}
    return every_entry(sections, need)


def provider_among(path: list[str], providers: Sequence[str]) -> Schema:
    """The storage at `path` names one of `providers` (an absent provider is S3, named by none)."""
    return at([*path, "provider"], {"enum": providers})


def merged_requirements(sections: tuple[str, ...]) -> list[Schema]:
    """What the CRDs require at the two levels the merge over defaults fills, as JSON Schema conditionals on
    defaults: where defaults.* does not give a field, every entry that would take it from there must have it.
    A storage naming another provider than defaults.storage takes nothing from it (cellar.mergedSpec)."""
    rules = [
        {
            "if": {"not": at(["defaults", "database", "secretRef"])},
            "then": entries_need(sections, ["database", "secretRef"]),
        }
    ]
    defaults = ["defaults", "storage"]
    for provider, fields in PROVIDER_NEEDS.items():
        others = [p for p in STORAGE_PROVIDERS if p != provider]
        same = {"not": provider_among(defaults, others)} if provider == "S3" else provider_among(defaults, [provider])
        takes_defaults = {"not": provider_among(["storage"], others)}  # the entry names no other provider
        for field in fields:
            # defaults.storage is of this provider but lacks the field: an entry that keeps the provider needs it.
            rules.append(
                {
                    "if": {"allOf": [same, {"not": at([*defaults, field])}]},
                    "then": entries_need(sections, ["storage", field], takes_defaults),
                }
            )
            # defaults.storage is another provider's: an entry that names this one takes nothing from it.
            rules.append(
                {
                    "if": {"not": same},
                    "then": entries_need(sections, ["storage", field], provider_among(["storage"], [provider])),
                }
            )
    return rules


def entry(description: str, spec: Schema, extra: dict[str, Schema]) -> Schema:
    return {
        "type": "object",
        "description": description,
        "properties": {"spec": spec, "activeDeadline": DURATION_OR_SECONDS, "resources": RESOURCES, **extra},
        "required": ["spec"],  # as the CRD requires it
        "additionalProperties": False,
    }


def scheduled(description: str, spec: Schema, extra: Schema | None = None) -> Schema:
    return entry(
        description,
        merged_spec(closed(spec)),
        {
            **(extra or {}),
            "schedule": {"type": "string", "description": "@hourly, @daily (default), @weekly or five cron fields."},
            "suspend": {"type": "boolean", "description": "Suspend the CronJob."},
            "timeZone": {"type": "string", "description": "The CronJob's time zone; default defaults.timeZone."},
        },
    )


def string_map(description: str) -> Schema:
    return {"type": "object", "description": description, "additionalProperties": {"type": "string"}}


def values_schema() -> Schema:
    backup, archive, restore = spec_of(database_backup()), spec_of(table_archive()), spec_of(database_restore())
    for field in MERGED_FROM_DEFAULTS:  # one defaults.<field> is merged into both kinds
        if backup["properties"][field] != archive["properties"][field]:
            raise ValueError(f"spec.{field} of DatabaseBackup and TableArchive differ; defaults.{field} fits one")
    staging = {
        "type": "object",
        "description": "For spec.parallelism: a volume at /staging (spec.staging.path), an emptyDir of sizeLimit or "
        "the PVC claimName.",
        "properties": {"sizeLimit": {"type": "string"}, "claimName": {"type": "string"}},
        "additionalProperties": False,
    }
    names = {"type": "array", "items": {"type": "string"}}
    properties: dict[str, Schema] = {
        "image": {
            "type": "object",
            "properties": {
                "registry": {"type": "string"},
                "tag": {"type": "string"},
                "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
            },
            "additionalProperties": False,
        },
        "imagePullSecrets": {"type": "array", "items": {"type": "object"}},
        "defaults": {
            "type": "object",
            "properties": {
                "storage": {"$ref": "#/definitions/storage"},
                "database": {"$ref": "#/definitions/database"},
                "timeZone": {"type": "string"},
                "activeDeadline": DURATION_OR_SECONDS,
                "restoreActiveDeadline": DURATION_OR_SECONDS,
                "resources": RESOURCES,
                "restoreResources": RESOURCES,
            },
            "additionalProperties": False,
        },
        "backups": {
            "type": "object",
            "description": "One DatabaseBackup and its CronJob per entry, by name.",
            "additionalProperties": scheduled("A DatabaseBackup and its schedule.", backup, {"staging": staging}),
        },
        "archives": {
            "type": "object",
            "description": "One TableArchive and its CronJob per entry, by name.",
            "additionalProperties": scheduled("A TableArchive and its schedule.", archive),
        },
        "restores": {
            "type": "object",
            "description": "One DatabaseRestore and the Job that runs it once per entry, by name.",
            "additionalProperties": entry("A DatabaseRestore.", closed(restore), {"staging": staging}),
        },
        "extraSecrets": {
            "type": "object",
            "properties": {"backup": names, "archive": names, "restore": names},
            "additionalProperties": False,
        },
        "nodeSelector": string_map("The Pods' nodeSelector."),
        "tolerations": {"type": "array", "items": {"type": "object"}},
        "affinity": {"type": "object"},
        "priorityClassName": {"type": "string"},
        "podLabels": string_map("Labels on every Pod."),
        "serviceAccountAnnotations": string_map("Annotations on every cellar ServiceAccount."),
        "monitoring": {
            "type": "object",
            "properties": {
                "enabled": {"type": "boolean"},
                "prometheusRuleLabels": string_map("Labels on the PrometheusRule."),
                "dashboardLabels": string_map("Labels on the dashboard's ConfigMap."),
                "kubeStateMetrics": {
                    "type": "object",
                    "properties": {"serviceAccount": {"type": "string"}, "namespace": {"type": "string"}},
                    "additionalProperties": False,
                },
            },
            "additionalProperties": False,
        },
        # Helm's own: the values a parent chart shares with this one when it is a dependency.
        "global": {"type": "object"},
    }
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "cellar chart values",
        "description": "Generated by python -m tools.generate_values_schema from the CRDs' schemas; do not edit.",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "allOf": merged_requirements(("backups", "archives")),
        "definitions": merged_blocks(backup),
    }


def render() -> str:
    return json.dumps(values_schema(), indent=2) + "\n"


def main() -> int:
    return write_or_check(OUTPUT, render(), "python -m tools.generate_values_schema")


if __name__ == "__main__":
    sys.exit(main())
