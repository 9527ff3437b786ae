"""`kubectl cellar logs NAME [--previous] [-f]`: the log of a resource's newest run, or of the run before it.

A run is a Pod the chart's template labelled `cellar.dev/resource: NAME` and `app.kubernetes.io/name:
cellar-<job>`, whoever made its Job (the CronJob, `kubectl cellar backup`, `kubectl create job --from`). The
kubelet keeps the logs of the Pods of the Jobs the CronJob's history limits keep (3 succeeded, 5 failed).
"""

from __future__ import annotations

import sys
from typing import Any

from cli.cluster import NAME_LABEL, PART_OF, POD, RESOURCE_LABEL, Cluster
from common.errors import NotFound, UsageError

LIST_LABEL = "cellar.dev/run"  # the Pods of `kubectl cellar list` (cli/listing.py) are no runs

JOBS = ("backup", "archive", "restore")


def runs_of(cluster: Cluster, namespace: str, name: str) -> list[Any]:
    """One Pod per run of `name` (or `backup/NAME`, `archive/NAME`, `restore/NAME`), oldest run first: a run is
    a Job, and its Pod is the newest whose container started (a Pod the node refused has no log to show)."""
    job, _, bare = name.rpartition("/")
    if job and job not in JOBS:
        raise UsageError(f"{name}: write NAME, or backup/NAME, archive/NAME or restore/NAME")
    selector = f"{PART_OF},{RESOURCE_LABEL}={bare},!{LIST_LABEL}" + (f",{NAME_LABEL}=cellar-{job}" if job else "")
    found = cluster.call(
        "list", POD, f'in namespace "{namespace}"', cluster.core.list_namespaced_pod, namespace,
        label_selector=selector,
    )  # fmt: skip
    pods = sorted(found.items, key=lambda p: p.metadata.creation_timestamp)
    kinds = sorted({(p.metadata.labels or {}).get(NAME_LABEL, "") for p in pods})
    if len(kinds) > 1:
        names = " or ".join(f"{kind.removeprefix('cellar-')}/{bare}" for kind in kinds)
        raise UsageError(f'runs of more than one kind are called "{bare}": write {names}')
    if not pods:
        raise NotFound(
            f'no run of "{bare}" in namespace "{namespace}" has a Pod left: none ran yet, or the CronJob\'s history '
            f"limits removed them; kubectl cellar status -n {namespace} shows the last run, kubectl cellar "
            f"backup {bare} runs one now"
        )
    by_job: dict[str, list[Any]] = {}
    for pod in pods:  # oldest first, so the runs keep the order of their first Pods
        by_job.setdefault((pod.metadata.labels or {}).get("job-name", pod.metadata.name), []).append(pod)
    return [next((p for p in reversed(run) if _started(p)), run[-1]) for run in by_job.values()]


def _started(pod: Any) -> bool:
    statuses = pod.status.container_statuses or []
    return bool(statuses) and bool(statuses[0].state.running or statuses[0].state.terminated)


def show_log(cluster: Cluster, namespace: str, name: str, *, previous: bool, follow: bool) -> str:
    """Write the log to stdout; returns the Pod's name."""
    pods = runs_of(cluster, namespace, name)
    if previous and len(pods) < 2:
        raise NotFound(f'"{name}" has one run with a Pod left in namespace "{namespace}", no previous one')
    pod = pods[-2] if previous else pods[-1]
    pod_name = pod.metadata.name
    if follow:
        from cli.runs import stream_log

        stream_log(cluster, namespace, pod_name, sys.stdout.write, 86400)
        return str(pod_name)
    text = cluster.call(
        "get", POD, f'"{pod_name}" in namespace "{namespace}" (its log)', cluster.core.read_namespaced_pod_log,
        pod_name, namespace,
    )  # fmt: skip
    sys.stdout.write(str(text))
    return str(pod_name)
