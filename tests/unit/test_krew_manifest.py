"""plugins/cellar.yaml, the krew manifest of `kubectl cellar`, against krew's rules and the project."""

from __future__ import annotations

import io
import re
import tarfile
import tomllib
from pathlib import Path

import yaml

from tools.krew_archive import archive_bytes, sha256

REPO = Path(__file__).resolve().parents[2]
MANIFEST = yaml.safe_load((REPO / "plugins" / "cellar.yaml").read_text())
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_the_manifest_is_a_krew_plugin_named_as_kubectl_finds_it() -> None:
    assert MANIFEST["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert MANIFEST["kind"] == "Plugin"
    assert MANIFEST["metadata"]["name"] == "cellar"
    spec = MANIFEST["spec"]
    assert re.fullmatch(r"v\d+\.\d+\.\d+", spec["version"])  # krew requires a v-prefixed semantic version
    for field in ("homepage", "shortDescription", "description"):
        assert spec[field].strip(), field
    assert len(spec["shortDescription"]) <= 80
    assert spec["platforms"]


def test_its_version_is_the_packages_everywhere() -> None:
    spec = MANIFEST["spec"]
    assert spec["version"] == f"v{VERSION}"
    for platform in spec["platforms"]:
        assert f"/v{VERSION}/" in platform["uri"]
    launcher = (REPO / "plugins" / "kubectl-cellar").read_text()
    assert f"version={VERSION}\n" in launcher


def test_each_platform_installs_the_archive_this_repository_builds() -> None:
    with tarfile.open(fileobj=io.BytesIO(archive_bytes())) as archive:
        names = archive.getnames()
    for platform in MANIFEST["spec"]["platforms"]:
        assert platform["sha256"] == sha256(), "run python -m tools.krew_archive and put its sha256 in the manifest"
        assert platform["uri"].startswith("https://")
        assert platform["bin"] == "kubectl-cellar"
        assert {f["from"] for f in platform["files"]} <= set(names)
        assert {e["key"] for e in platform["selector"]["matchExpressions"]} <= {"os", "arch"}


def test_the_archive_is_the_same_bytes_every_time() -> None:
    assert archive_bytes() == archive_bytes()
    with tarfile.open(fileobj=io.BytesIO(archive_bytes())) as archive:
        launcher = archive.getmember("kubectl-cellar")
    assert launcher.mode & 0o111, "executable"
