"""A real Prometheus on loopback with its OTLP receiver on, and cellar's alert rules loaded (built from source
by build-servers.sh, like the other servers). The tests push to it and read it through its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.harness.stack import REPO, StackError, built_binaries, free_port

RULES = REPO / "cronjobs" / "files" / "prometheusrule.yaml"


def rule_groups() -> dict[str, Any]:
    """The groups of the shipped PrometheusRule, as a Prometheus rules file holds them."""
    return dict(yaml.safe_load(RULES.read_text())["spec"])


class Prometheus:
    def __init__(self) -> None:
        self.binary = built_binaries(["prometheus"])["prometheus"]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.root = Path(tempfile.mkdtemp(prefix="cellar-prometheus-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def otlp_endpoint(self) -> str:
        """What OTEL_EXPORTER_OTLP_ENDPOINT is set to (the exporter appends /v1/metrics)."""
        return f"{self.url}/api/v1/otlp"

    def start(self) -> Prometheus:
        (self.root / "rules.yaml").write_text(yaml.safe_dump(rule_groups()))
        config = {"global": {"evaluation_interval": "1s"}, "rule_files": [str(self.root / "rules.yaml")]}
        (self.root / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = (self.root / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                str(self.binary),
                f"--config.file={self.root / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-otlp-receiver",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StackError(f"prometheus exited at start; see {self.root / 'prometheus.log'}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise StackError(f"prometheus did not become ready in 60 s; see {self.root / 'prometheus.log'}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def _get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.loads(answer.read())
        if body.get("status") != "success":
            raise AssertionError(f"prometheus answered {body}")
        return body["data"]

    def query(self, expression: str) -> list[dict[str, Any]]:
        """An instant query's series: each with `metric` (its labels) and `value` ([time, "text"])."""
        return list(self._get("/api/v1/query", query=expression)["result"])

    def series_names(self) -> set[str]:
        return set(self._get("/api/v1/label/__name__/values"))

    def alerts(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/alerts")["alerts"])

    def wait_for(self, what: str, check: Any, timeout: float = 30) -> Any:
        """Poll `check()` until it returns something truthy."""
        deadline = time.monotonic() + timeout
        while True:
            found = check()
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus: {what} did not happen within {timeout:.0f} s")
            time.sleep(0.5)
