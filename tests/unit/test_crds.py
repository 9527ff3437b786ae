"""The committed CRD YAML is what the generator makes."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tools import generate_crds


def test_crd_yaml_is_generated_from_the_generator() -> None:
    for file_name, builder in generate_crds.DEFINITIONS.items():
        assert (generate_crds.OUTPUT / file_name).read_text() == generate_crds.render(builder), (
            f"{file_name} is stale: run python -m tools.generate_crds"
        )


def _with_defaults(schema: dict[str, Any], value: Any) -> Any:
    """What the API server stores: each absent property with a default gets it, then nested ones do."""
    if schema.get("type") == "object" and isinstance(value, dict):
        value = dict(value)
        for name, prop in schema.get("properties", {}).items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
            if name in value:
                value[name] = _with_defaults(prop, value[name])
    elif schema.get("type") == "array" and isinstance(value, list) and "items" in schema:
        value = [_with_defaults(schema["items"], item) for item in value]
    return value


SECRET_KEY = {"name": "s", "key": "k"}
STORAGE = {"bucket": "backups", "credentials": {"accessKeyId": SECRET_KEY, "secretAccessKey": SECRET_KEY}}
MINIMAL_SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "databasebackups.yaml": (
        "jobs.backup.settings:parse_backup_spec",
        {"database": {"secretRef": {"name": "db"}}, "storage": STORAGE},
    ),
    "databaserestores.yaml": (
        "jobs.backup.settings:parse_restore_spec",
        {"backup": {"name": "nightly"}, "target": {"secretRef": {"name": "db"}}},
    ),
    "tablearchives.yaml": (
        "jobs.archive.settings:parse_archive_spec",
        {
            "database": {"secretRef": {"name": "db"}},
            "storage": STORAGE,
            "table": {"name": "orders"},
            "timestampColumn": "created_at",
            "olderThan": "400d",
        },
    ),
}


@pytest.mark.parametrize("file_name", sorted(MINIMAL_SPECS))
def test_the_crd_defaults_are_the_jobs_own(file_name: str) -> None:
    # A spec as kubectl applies it and as the API server stores it (the CRD's defaults filled in) must
    # mean the same to the job: a default written in the CRD and another in the code cannot drift apart.
    import importlib

    parser_path, minimal = MINIMAL_SPECS[file_name]
    module_name, function = parser_path.split(":")
    parse = getattr(importlib.import_module(module_name), function)
    crd = generate_crds.DEFINITIONS[file_name]()
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    stored = _with_defaults(schema, minimal)
    assert stored != minimal  # the CRD does default something here
    assert parse(stored) == parse(minimal)
