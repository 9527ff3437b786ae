"""The chart's values.schema.json is what tools/generate_values_schema.py makes from the CRDs' schemas, and it
refuses unknown keys everywhere a spec has fields."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "cronjobs" / "values.schema.json").read_text())


def test_the_values_schema_is_generated_from_the_crds() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "tools.generate_values_schema", "--check"], capture_output=True, text=True, cwd=REPO
    )
    assert checked.returncode == 0, checked.stderr


def objects(path: str, schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    if "properties" in schema:
        yield path, schema
    for name, field in schema.get("properties", {}).items():
        yield from objects(f"{path}.{name}", field)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from objects(f"{path}[]", schema[key])


def test_every_object_with_fields_refuses_other_keys() -> None:
    every = [*objects("values", SCHEMA)]
    for name, definition in SCHEMA["definitions"].items():
        every += objects(f"#/definitions/{name}", definition)
    assert len(every) > 50
    open_ = [path for path, schema in every if schema.get("additionalProperties") is not False]
    assert open_ == []


def test_an_entrys_spec_is_its_crds_spec() -> None:
    """The fields of a backup's spec are the CRD's, database and storage by reference to what defaults.* share."""
    crd = yaml.safe_load((REPO / "cronjobs" / "crds" / "databasebackups.yaml").read_text())
    crd_spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec = SCHEMA["properties"]["backups"]["additionalProperties"]["properties"]["spec"]
    assert set(spec["properties"]) == set(crd_spec["properties"])
    assert spec["properties"]["storage"] == {"$ref": "#/definitions/storage"}
    assert SCHEMA["properties"]["defaults"]["properties"]["storage"] == {"$ref": "#/definitions/storage"}
    assert set(SCHEMA["definitions"]["storage"]["properties"]) == set(crd_spec["properties"]["storage"]["properties"])
    assert "required" not in spec  # database and storage may come from defaults; the chart checks them after the merge
    assert spec["properties"]["retention"]["properties"]["keepLast"]["maximum"] == 100000
