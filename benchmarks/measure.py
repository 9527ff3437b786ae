"""Run one benchmark variant in a fresh wrapper process, so its rusage covers exactly that variant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
_WRAPPER = (
    "import json, resource, subprocess, sys, time\n"
    "start = time.perf_counter()\n"
    "done = subprocess.run(json.loads(sys.argv[1]), stdout=subprocess.PIPE)\n"
    "wall = time.perf_counter() - start\n"
    "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "sys.stderr.buffer.write(done.stdout)\n"
    "print(json.dumps({'code': done.returncode, 'wall': wall, 'cpu': usage.ru_utime + usage.ru_stime,"
    " 'maxrss_kb': usage.ru_maxrss}))\n"
)


@dataclass
class Run:
    wall: float
    cpu: float
    peak_rss_mb: float
    output: str  # what the variant printed on stdout (cellar's JSON log lines, a loop's figures)


def _process_cpu(pid: int, *, reaped_children: bool = False) -> float:
    """CPU seconds of a live process from /proc (with its reaped children's when asked); 0 once gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def server_cpu(stack: Any) -> dict[str, float]:
    """CPU seconds used so far by PostgreSQL (the postmaster, its live processes, and the backends that
    have exited) and by MinIO: their difference over a variant is what the servers spent on it."""
    postmaster = int((stack.pg_data / "postmaster.pid").read_text().split()[0])
    postgres = _process_cpu(postmaster, reaped_children=True) + sum(_process_cpu(c) for c in _children(postmaster))
    minio = sum(_process_cpu(p.popen.pid) for p in stack.processes if p.name == "minio")
    return {"postgres": postgres, "minio": minio}


def run_measured(name: str, argv: list[str], env: dict[str, str]) -> Run:
    """Wall time, CPU time of all its processes, and the peak RSS of the largest one."""
    result = subprocess.run(
        [sys.executable, "-c", _WRAPPER, json.dumps(argv)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "{}"
    figures = json.loads(last)
    if figures.get("code") != 0:
        raise SystemExit(f"{name} failed ({figures}):\n{result.stderr[-3000:]}")
    return Run(figures["wall"], figures["cpu"], figures["maxrss_kb"] / 1024, result.stderr)


BENCH_NAMESPACE = "bench"


def install_cellar(stack: Any, job: str) -> tuple[Path, Any]:
    """CRDs, namespace `bench`, the storage Secret, and a kubeconfig for `job`'s ServiceAccount.

    The Role names its Secrets; a benchmark's database Secrets get names of their own, so the Role is
    widened with one rule here (a benchmark, not a test of RBAC). Returns (kubeconfig, admin API client).
    """
    from kubernetes import client

    from tests.harness.cluster import admin_client, install_crds
    from tests.harness.stack import S3_ACCESS_KEY, S3_SECRET_KEY

    api = admin_client(stack.kubeconfig)
    install_crds(api)
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": BENCH_NAMESPACE}})
    core.create_namespaced_secret(
        BENCH_NAMESPACE,
        {
            "metadata": {"name": "cellar-object-storage"},
            "stringData": {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY},
        },
    )
    return job_account(stack, api, job), api


def job_account(stack: Any, api: Any, job: str) -> Path:
    """A kubeconfig for `job`'s ServiceAccount (backup, archive or restore) in namespace `bench`, with the chart's
    Role widened to every Secret there (see install_cellar)."""
    from kubernetes import client

    from tests.harness.cluster import service_account_kubeconfig

    kubeconfig = service_account_kubeconfig(api, stack, BENCH_NAMESPACE, job, Path(tempfile.mkdtemp()) / "kc")
    client.RbacAuthorizationV1Api(api).patch_namespaced_role(
        f"cellar-{job}",
        BENCH_NAMESPACE,
        [{"op": "add", "path": "/rules/-", "value": {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}}],
    )
    return kubeconfig


def create_database_secret(api: Any, stack: Any, name: str, database: str) -> None:
    """A database Secret in namespace `bench` for `database` on the stack's PostgreSQL, as its superuser."""
    from kubernetes import client

    client.CoreV1Api(api).create_namespaced_secret(
        BENCH_NAMESPACE,
        {
            "metadata": {"name": name},
            "stringData": {
                "host": "127.0.0.1",
                "port": str(stack.pg_port),
                "dbname": database,
                "username": "postgres",
                "password": stack.pg_dsn().split("password=")[1],
            },
        },
    )
