"""A stand-in kubelet for end-to-end tests: it runs cellar's Pods as local processes.

There is no container runtime here, so this plays the node: it picks up each Pod of ours in a
namespace, runs its container's command (the image's entrypoint, mapped to the job's module) with the
Pod's environment (downward API included) and a token minted for the Pod's ServiceAccount, and reports
the Pod's phase and the container's exit code back through the API, as a kubelet would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.harness.cluster import REPO

ENTRYPOINTS = {"cellar-backup": "jobs.backup", "cellar-archive": "jobs.archive"}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodRunner(threading.Thread):
    def __init__(self, api_client: Any, stack: Any, namespace: str) -> None:
        super().__init__(daemon=True)
        self.core = client.CoreV1Api(api_client)
        self.stack = stack
        self.namespace = namespace
        self.stop = threading.Event()
        self.started: set[str] = set()
        self.exit_codes: dict[str, int] = {}
        self.workdir = Path(tempfile.mkdtemp(prefix="cellar-node-"))

    def run(self) -> None:
        while not self.stop.is_set():
            for pod in self.core.list_namespaced_pod(self.namespace).items:
                if pod.metadata.name not in self.started and (pod.status.phase in (None, "Pending")):
                    self.started.add(pod.metadata.name)
                    threading.Thread(target=self._run_pod, args=(pod,), daemon=True).start()
            time.sleep(0.3)

    def _image_command(self, container: Any) -> list[str]:
        if container.command:
            return list(container.command) + list(container.args or [])
        image = container.image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
        return [sys.executable, "-m", ENTRYPOINTS[image], *(container.args or [])]

    def _environment(self, pod: Any, container: Any) -> dict[str, str]:
        values = {"metadata.namespace": pod.metadata.namespace, "metadata.name": pod.metadata.name}
        env = {}
        for variable in container.env or []:
            if variable.value is not None:
                env[variable.name] = variable.value
            elif variable.value_from and variable.value_from.field_ref:
                env[variable.name] = values[variable.value_from.field_ref.field_path]
        return env

    def _kubeconfig(self, pod: Any) -> Path:
        account = pod.spec.service_account_name or "default"
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
        )
        token = self.core.create_namespaced_service_account_token(account, self.namespace, request).status.token
        path = self.workdir / f"{pod.metadata.name}.kubeconfig"
        path.write_text(
            self.stack.kubeconfig_for(
                user=f"system:serviceaccount:{self.namespace}:{account}",
                credentials={"token": token},
                namespace=self.namespace,
            )
        )
        return path

    def _patch_status(self, pod: Any, status: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod_status(pod.metadata.name, self.namespace, {"status": status})

    def _run_pod(self, pod: Any) -> None:
        container = pod.spec.containers[0]
        started = _now()
        self._patch_status(
            pod,
            {
                "phase": "Running",
                "startTime": started,
                "containerStatuses": [
                    {
                        "name": container.name,
                        "image": container.image,
                        "imageID": "",
                        "ready": True,
                        "restartCount": 0,
                        "started": True,
                        "state": {"running": {"startedAt": started}},
                    }
                ],
            },
        )
        termination_log = self.workdir / f"{pod.metadata.name}.termination-log"
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.workdir),
            "KUBECONFIG": str(self._kubeconfig(pod)),
            "CELLAR_TERMINATION_LOG": str(termination_log),
            **self._environment(pod, container),
        }
        with (self.workdir / f"{pod.metadata.name}.log").open("w") as log:
            code = subprocess.run(
                self._image_command(container),
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
                timeout=600,
            ).returncode
        self.exit_codes[pod.metadata.name] = code
        message = termination_log.read_text() if termination_log.exists() else ""
        self._patch_status(
            pod,
            {
                "phase": "Succeeded" if code == 0 else "Failed",
                "containerStatuses": [
                    {
                        "name": container.name,
                        "image": container.image,
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "started": False,
                        "state": {
                            "terminated": {
                                "exitCode": code,
                                "reason": "Completed" if code == 0 else "Error",
                                "message": message,
                                "startedAt": started,
                                "finishedAt": _now(),
                            }
                        },
                    }
                ],
            },
        )
