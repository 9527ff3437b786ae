"""Jobs as real processes, for tests that kill or signal them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.harness.cluster import REPO


def start_job(
    module: str, kubeconfig: Path, namespace: str, name: str, *args: str, failpoint: str = ""
) -> subprocess.Popen[str]:
    """`python -m <module> <args> --kubeconfig … --namespace … --name …`, stdout readable line by line."""
    env = {**os.environ, "CELLAR_FAILPOINTS": failpoint, "CELLAR_TERMINATION_LOG": "/nonexistent/x"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            module,
            *args,
            "--kubeconfig",
            str(kubeconfig),
            "--namespace",
            namespace,
            "--name",
            name,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(job: subprocess.Popen[str], wanted: str) -> None:
    """Read the job's stdout until a line contains `wanted`; fail if the job ends first."""
    assert job.stdout is not None
    for line in job.stdout:
        if wanted in line:
            return
    job.wait()
    raise AssertionError(
        f"job exited {job.returncode} before printing {wanted!r}: {job.stderr.read() if job.stderr else ''}"
    )


def run_until_failpoint(
    module: str, kubeconfig: Path, namespace: str, name: str, failpoint: str
) -> subprocess.Popen[str]:
    job = start_job(module, kubeconfig, namespace, name, failpoint=failpoint)
    wait_for_line(job, f"FAILPOINT {failpoint}")
    return job
