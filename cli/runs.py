"""`kubectl cellar backup NAME` / `archive NAME`: a run now, as `kubectl create job --from=cronjob/...` makes it.

The Job is the CronJob's jobTemplate as it is (the chart's Pod, ServiceAccount, deadline, podFailurePolicy), owned
by the CronJob and annotated `cronjob.kubernetes.io/instantiate: manual`, so the CronJob's history limits and its
concurrencyPolicy (Forbid) count it like a scheduled run. `--wait` follows the log of each Pod the Job makes
(a retryable failure is retried by the Job) and returns the exit code of the last container: the jobs' table.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cli.cluster import CRONJOB, JOB, POD, Cluster
from common.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_PERMANENT, EXIT_RETRYABLE, EXIT_USAGE, NotFound, UsageError
from common.kube import DATABASE_BACKUP, TABLE_ARCHIVE, ResourceKind
from common.suspension import suspended

MANUAL_ANNOTATION = "cronjob.kubernetes.io/instantiate"
KINDS = {"backup": DATABASE_BACKUP, "archive": TABLE_ARCHIVE}
POLL_SECONDS = 1.0
# The jobs' exit codes (common.reasons); any other is the node's, and is reported as retryable.
CELLAR_EXIT_CODES = frozenset({EXIT_OK, EXIT_RETRYABLE, EXIT_USAGE, EXIT_PERMANENT, EXIT_INTERRUPTED})
# Pod waiting reasons a person must act on; said once each, while the Job's deadline still bounds the wait.
STUCK = frozenset({"ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError", "InvalidImageName"})


@dataclass(frozen=True)
class Outcome:
    job: str
    exit_code: int
    message: str  # the last container's termination message (cellar writes `<Reason>: ...`), or ""


def resource_of(cluster: Cluster, job: str, namespace: str, name: str) -> dict[str, Any]:
    """The DatabaseBackup (job backup) or TableArchive (archive) `name`, or what to do when there is none."""
    kind: ResourceKind = KINDS[job]
    try:
        found = cluster.call(
            "get", kind, f'"{name}" in namespace "{namespace}"', cluster.custom.get_namespaced_custom_object,
            kind.group, kind.version, namespace, kind.plural, name,
        )  # fmt: skip
    except NotFound:
        raise NotFound(
            f'{kind.kind} "{name}" is not in namespace "{namespace}": `kubectl cellar status -n {namespace}` lists '
            "the backups and archives there; pass -n NAMESPACE of the chart's release"
        ) from None
    return dict(found)


def cronjob_of(cluster: Cluster, job: str, namespace: str, name: str, *, to_run: bool = True) -> dict[str, Any]:
    """The chart's CronJob of resource `name`, after checking the resource exists (and, `to_run`, that it is not
    suspended: its run would do nothing)."""
    kind: ResourceKind = KINDS[job]
    resource = resource_of(cluster, job, namespace, name)
    if to_run and suspended(resource):
        raise UsageError(
            f'{kind.kind} "{name}" is suspended, so its run would do nothing: kubectl cellar resume {name} '
            f"-n {namespace} first"
        )
    cronjob_name = f"cellar-{job}-{name}"
    try:
        cronjob = cluster.call(
            "get", CRONJOB, f'"{cronjob_name}" in namespace "{namespace}"',
            cluster.batch.read_namespaced_cron_job, cronjob_name, namespace,
        )  # fmt: skip
    except NotFound:
        raise NotFound(
            f'{kind.kind} "{name}" has no CronJob {cronjob_name}: the chart did not make it; add it under '
            f"{job}s: in the release's values file and helm upgrade"
        ) from None
    return dict(cluster.api_client.sanitize_for_serialization(cronjob))


def job_from(cronjob: dict[str, Any], suffix: str) -> dict[str, Any]:
    """The Job `kubectl create job --from=cronjob/NAME` makes (kubectl's own generateJobFromCronJob)."""
    metadata, template = cronjob["metadata"], cronjob["spec"]["jobTemplate"]
    template_metadata = template.get("metadata") or {}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            # A CronJob's name is at most 52 characters: with the suffix, a Job name fits the 63 of a label value.
            "name": f"{metadata['name']}-{suffix}",
            "namespace": metadata["namespace"],
            "labels": dict(template_metadata.get("labels") or {}),
            "annotations": {**(template_metadata.get("annotations") or {}), MANUAL_ANNOTATION: "manual"},
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": metadata["name"],
                    "uid": metadata["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": template["spec"],
    }


def start_run(cluster: Cluster, job: str, namespace: str, name: str) -> str:
    cronjob = cronjob_of(cluster, job, namespace, name)
    body = job_from(cronjob, f"manual-{secrets.token_hex(3)}")
    job_name = str(body["metadata"]["name"])
    cluster.call(
        "create", JOB, f'"{job_name}" in namespace "{namespace}"', cluster.batch.create_namespaced_job, namespace, body
    )
    return job_name


def follow_run(
    cluster: Cluster,
    namespace: str,
    job_name: str,
    write: Callable[[str], object] | None = None,
    say: Callable[[str], object] | None = None,
    *,
    quiet: bool = False,
) -> Outcome:
    """Follow the log of each Pod of the Job as it runs (to `write`; notes to `say`; default stdout and stderr),
    until the Job is Complete or Failed. `quiet`: no header before each Pod's log."""
    write = write or sys.stdout.write
    say = say or sys.stderr.write
    followed: set[str] = set()
    warned: set[str] = set()
    where = f'"{job_name}" in namespace "{namespace}"'
    while True:
        job = cluster.call("get", JOB, where, cluster.batch.read_namespaced_job, job_name, namespace)
        pods = sorted(_pods(cluster, namespace, job_name), key=lambda p: p.metadata.creation_timestamp)
        for pod in pods:
            if pod.metadata.name in followed:
                continue
            state = _state(pod)
            if state is not None and (state.running or state.terminated):
                if not quiet:
                    say(f"--- {pod.metadata.name}\n")
                # A quiet run may print nothing for long; the Job's deadline bounds how long its log can last.
                longest = (job.spec.active_deadline_seconds or 86400) + 60
                stream_log(cluster, namespace, pod.metadata.name, write, longest)
                followed.add(pod.metadata.name)
            elif (stuck := _stuck(pod.metadata.name, state)) and stuck not in warned:
                warned.add(stuck)
                say(f"{stuck}: {state.waiting.message or ''}\n")
        finished = {c.type for c in (job.status.conditions or []) if c.status == "True"} & {"Complete", "Failed"}
        if finished:
            return _outcome(cluster, namespace, job_name, "Complete" in finished)
        time.sleep(POLL_SECONDS)


def _outcome(cluster: Cluster, namespace: str, job_name: str, complete: bool) -> Outcome:
    if complete:
        return Outcome(job_name, EXIT_OK, "")
    ended = [p for p in _pods(cluster, namespace, job_name) if (s := _state(p)) is not None and s.terminated]
    if not ended:  # the Job's deadline passed before any container ran
        return Outcome(job_name, EXIT_RETRYABLE, f"Job {job_name} failed before its container ran")
    last = max(ended, key=lambda p: _state(p).terminated.finished_at or p.metadata.creation_timestamp)
    terminated = _state(last).terminated
    code, message = int(terminated.exit_code), (terminated.message or "").strip()
    if code not in CELLAR_EXIT_CODES:  # the runtime's or the kernel's (a start that failed, OOMKilled)
        reason = f" ({terminated.reason})" if terminated.reason else ""
        return Outcome(job_name, EXIT_RETRYABLE, f"{message or 'the container'} exited {code}{reason}")
    return Outcome(job_name, code, message)


def _pods(cluster: Cluster, namespace: str, job_name: str) -> list[Any]:
    found = cluster.call(
        "list", POD, f'of Job "{job_name}" in namespace "{namespace}"',
        cluster.core.list_namespaced_pod, namespace, label_selector=f"job-name={job_name}",
    )  # fmt: skip
    return list(found.items)


def _stuck(pod: str, state: Any) -> str:
    """`<pod>: <reason>` when the container waits on something a person must fix, else ''."""
    waiting = state.waiting if state is not None else None
    return f"{pod}: {waiting.reason}" if waiting is not None and waiting.reason in STUCK else ""


def _state(pod: Any) -> Any:
    statuses = pod.status.container_statuses or []
    return statuses[0].state if statuses else None


def stream_log(cluster: Cluster, namespace: str, pod: str, write: Callable[[str], object], longest: float) -> None:
    """The container's log from its start, followed until it ends (or `longest` seconds pass without a byte)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        read_log: Any = cluster.core.read_namespaced_pod_log  # the raw response: its stubs say str
        response = read_log(pod, namespace, follow=True, _preload_content=False, _request_timeout=(10, longest))
        for chunk in response.stream(4096):
            write(chunk.decode("utf-8", errors="replace"))
        response.release_conn()
    except (ApiException, HTTPError, OSError) as exc:
        # The log is for the person watching; the exit code comes from the Pod's status either way.
        sys.stderr.write(f"(the log of {pod} could not be followed: {getattr(exc, 'reason', exc)})\n")
