"""cellar's Helm chart (cronjobs/), rendered and installed with the real Helm the harness builds.

The chart is the one source of cellar's manifests: the tests' jobs run with the ServiceAccounts and Roles it
renders (for the Secret names in chart-values.yaml), and the chart tests install it on the real API server.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.harness.stack import REPO, built_binaries

CHART = REPO / "cronjobs"
CRD_DIR = CHART / "crds"
FLEET_EXAMPLE = CHART / "examples" / "fleet-values.yaml"
# What the tests' jobs may read: the chart computes each Role from these specs.
TEST_VALUES = Path(__file__).resolve().parent / "chart-values.yaml"


@functools.cache
def helm_binary(component: str = "helm") -> Path:
    """Helm 4 (`helm`), or Helm 3 (`helm3`)."""
    return built_binaries([component])[component]


def helm(
    *args: str, kubeconfig: Path | None = None, check: bool = True, component: str = "helm"
) -> subprocess.CompletedProcess[str]:
    """Run helm (Helm 3 with component="helm3"); with `check`, a failure raises with what helm printed."""
    command = [str(helm_binary(component)), *args]
    if kubeconfig is not None:
        command.append(f"--kubeconfig={kubeconfig}")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed (exit {result.returncode}):\n{result.stderr}")
    return result


def render(
    *values: Path,
    namespace: str = "default",
    chart: Path = CHART,
    settings: tuple[str, ...] = (),
    show_only: str = "",
    component: str = "helm",
) -> list[dict[str, Any]]:
    """`helm template` of the chart: its documents, CRDs left out."""
    args = ["template", "cellar", str(chart), "--namespace", namespace]
    for path in values:
        args += ["--values", str(path)]
    for setting in settings:
        args += ["--set", setting]
    if show_only:
        args += ["--show-only", show_only]
    return [d for d in yaml.safe_load_all(helm(*args, component=component).stdout) if d]


@functools.cache
def _test_rbac() -> tuple[str, ...]:
    return tuple(yaml.safe_dump(d) for d in render(TEST_VALUES, show_only="templates/rbac.yaml"))


def rbac_of(documents: list[dict[str, Any]], job: str) -> list[dict[str, Any]]:
    """The ServiceAccount, Role and RoleBinding of one job (backup, archive or restore) among rendered documents."""
    kinds = ("ServiceAccount", "Role", "RoleBinding")
    return [d for d in documents if d["kind"] in kinds and d["metadata"]["name"] == f"cellar-{job}"]


def job_rbac(job: str) -> list[dict[str, Any]]:
    """The RBAC of one job as the chart renders it for the Secret names the tests use (chart-values.yaml)."""
    return rbac_of([yaml.safe_load(text) for text in _test_rbac()], job)


def rendered(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one document of `kind` named `name`."""
    found = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: rendered {len(found)} times"
    return found[0]
