"""What the tests of `kubectl cellar` share: a release of the chart on the real API server, the plugin run
in-process with the test's kubeconfig, and status written as a job would."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from cli.__main__ import main
from tests.harness.chart import CHART, helm
from tests.harness.stack import REPO, LocalStack

STORAGE = {
    "bucket": "cellar",
    "credentials": {
        "accessKeyId": {"name": "object-storage", "key": "id"},
        "secretAccessKey": {"name": "object-storage", "key": "secret"},
    },
}


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str


def cellar(capsys: pytest.CaptureFixture[str], kubeconfig: Path, *args: str) -> Ran:
    """`kubectl cellar ARGS` with `kubeconfig`, in this process (fast; the console script is tested apart)."""
    capsys.readouterr()
    code = main([*args, "--kubeconfig", str(kubeconfig)])
    captured = capsys.readouterr()
    return Ran(code, captured.out, captured.err)


def console_scripts(directory: Path) -> dict[str, str]:
    """The project's console scripts for `kubectl cellar` (pyproject.toml [project.scripts]), written into
    `directory` as pip writes them, for this Python and this checkout; returns the environment that puts them on
    PATH. (The tests' .venv may be shared with other checkouts, so what pip installed there is not this one's.)"""
    import os
    import sys
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("kubectl-cellar", "kubectl_complete-cellar"):
        module, function = scripts[name].split(":")
        path = directory / name
        path.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n")
        path.chmod(0o755)
    path_variable = f"{directory}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path_variable, "PYTHONPATH": str(REPO)}


def install(stack: LocalStack, namespace: str, values: dict[str, Any], tmp_path: Path, verb: str = "install") -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    args = (verb, "cellar", str(CHART), "--namespace", namespace, "--values", str(path))
    return helm(*args, kubeconfig=stack.kubeconfig).stdout


def uninstall(stack: LocalStack, namespace: str) -> subprocess.CompletedProcess[str]:
    return helm("uninstall", "cellar", "--namespace", namespace, kubeconfig=stack.kubeconfig, check=False)


def write_status(admin_api: Any, namespace: str, plural: str, name: str, status: dict[str, Any]) -> None:
    client.CustomObjectsApi(admin_api).patch_namespaced_custom_object_status(
        "cellar.dev",
        "v1alpha1",
        namespace,
        plural,
        name,
        {"status": status},
        _content_type="application/merge-patch+json",
    )


def ready(status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message or reason,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def no_role_kubeconfig(stack: LocalStack, admin_api: Any, namespace: str, path: Path) -> Path:
    """A kubeconfig of a ServiceAccount no Role binds: a context without permission."""
    core = client.CoreV1Api(admin_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    token = core.create_namespaced_service_account_token("nobody", namespace, request).status.token
    user = f"system:serviceaccount:{namespace}:nobody"
    path.write_text(stack.kubeconfig_for(user=user, credentials={"token": token}, namespace=namespace))
    return path
