"""docs/reference.md is what tools/generate_reference.py makes from the CRDs, and every field has a description."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRDS = sorted((REPO / "cronjobs" / "crds").glob("*.yaml"))


def test_the_reference_is_generated_from_the_crds() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "tools.generate_reference", "--check"], capture_output=True, text=True, cwd=REPO
    )
    assert checked.returncode == 0, checked.stderr


def fields(path: str, schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, field in schema.get("properties", {}).items():
        yield f"{path}.{name}", field
        yield from fields(f"{path}.{name}", field)
        if field.get("items", {}).get("type") == "object":
            yield from fields(f"{path}.{name}[]", field["items"])


@pytest.mark.parametrize("crd_file", CRDS, ids=lambda p: p.stem)
def test_every_field_has_a_description(crd_file: Path) -> None:
    schema = yaml.safe_load(crd_file.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    top = schema["properties"]
    every = [*fields("spec", top["spec"]), *fields("status", top["status"])]
    undescribed = [path for path, field in every if not str(field.get("description", "")).strip()]
    assert undescribed == []
