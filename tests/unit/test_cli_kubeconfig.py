"""How `kubectl cellar` picks its kubeconfig and context, and says what to do when it cannot (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cli.__main__ import main

CONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
    "users": [{"name": "u", "user": {"token": "t"}}],
    "contexts": [{"name": "shop", "context": {"cluster": "c", "user": "u", "namespace": "shop"}}],
}


def test_a_kubeconfig_without_a_current_context_asks_for_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(CONFIG))
    assert main(["status", "--kubeconfig", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"UsageError: {path} has no current-context (its contexts: shop); pass --context NAME\n"


def test_a_missing_kubeconfig_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--kubeconfig", str(tmp_path / "nowhere")]) == 2
    assert "does not exist or is not a file" in capsys.readouterr().err


def test_an_unreachable_server_is_retryable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump({**CONFIG, "current-context": "shop"}))
    assert main(["status", "--kubeconfig", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("KubernetesUnavailable: cannot reach the Kubernetes API server of context 'shop'")
    assert err.count("\n") == 1


def test_context_chooses_even_without_a_current_context(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(CONFIG))
    assert main(["status", "--kubeconfig", str(path), "--context", "shop"]) == 1  # loaded; the server is not there
    assert "of context 'shop'" in capsys.readouterr().err
