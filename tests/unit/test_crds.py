"""The committed CRD YAML is what the generator makes."""

from __future__ import annotations

from pathlib import Path


def test_crd_yaml_is_generated_from_the_generator() -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "cronjobs" / "base" / "crds" / "generate.py"
    spec = importlib.util.spec_from_file_location("crd_generate", path)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for file_name, builder in module.DEFINITIONS.items():
        assert (path.parent / file_name).read_text() == module.render(builder), (
            f"{file_name} is stale: run python cronjobs/base/crds/generate.py"
        )
