"""`kubectl cellar list NAME`: the backups of a DatabaseBackup in storage (`cellar-backup list`).

By default in the cluster, by a short Job of the CronJob's own Pod template (the chart's ServiceAccount
cellar-backup, its image, its Secrets), so a person needs no store credentials and no route to the store:
only to create a Job and read its Pod's log. `--direct` runs the same listing here, with the user's own
Kubernetes permissions (they must read the storage Secrets the spec names) and network.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
from typing import Any

from cli.cluster import JOB, Cluster
from cli.runs import cronjob_of, follow_run, resource_of
from common.errors import EXIT_OK, CellarError

LIST_LABEL = "cellar.dev/run"  # on the Pods of a listing: `kubectl cellar logs` shows runs, not listings
LIST_DEADLINE_SECONDS = 300
LIST_TTL_SECONDS = 600  # the Job goes by itself if this process cannot delete it


def list_job(cronjob: dict[str, Any], name: str, output: str, suffix: str) -> dict[str, Any]:
    """A Job of the CronJob's Pod that runs `cellar-backup list` once, quietly (the listing is its whole log)."""
    spec = dict(cronjob["spec"]["jobTemplate"]["spec"])
    template = dict(spec["template"])
    metadata = dict(template.get("metadata") or {})
    metadata["labels"] = {**(metadata.get("labels") or {}), LIST_LABEL: "list"}
    pod = dict(template["spec"])
    container = dict(pod["containers"][0])
    container["args"] = ["list", "--log-level", "error", "-o", output]
    pod["containers"] = [container, *pod["containers"][1:]]
    template.update(metadata=metadata, spec=pod)
    # The template's backoffLimit and podFailurePolicy stay: a container the node failed to start is tried again
    # (a listing is read-only), exit 2 or 3 is not.
    spec.update(
        template=template, activeDeadlineSeconds=LIST_DEADLINE_SECONDS, ttlSecondsAfterFinished=LIST_TTL_SECONDS
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": f"cellar-list-{name}-{suffix}",
            "namespace": cronjob["metadata"]["namespace"],
            "labels": dict(metadata["labels"]),
        },
        "spec": spec,
    }


def list_in_cluster(cluster: Cluster, namespace: str, name: str, output: str) -> int:
    cronjob = cronjob_of(cluster, "backup", namespace, name, to_run=False)
    body = list_job(cronjob, name, output, secrets.token_hex(3))
    job_name = str(body["metadata"]["name"])
    where = f'"{job_name}" in namespace "{namespace}"'
    cluster.call("create", JOB, where, cluster.batch.create_namespaced_job, namespace, body)
    try:
        outcome = follow_run(cluster, namespace, job_name, quiet=True)
    finally:
        with contextlib.suppress(CellarError):  # if not, ttlSecondsAfterFinished removes it
            cluster.call(
                "delete", JOB, where, cluster.batch.delete_namespaced_job, job_name, namespace,
                propagation_policy="Background",
            )  # fmt: skip
    if outcome.exit_code != EXIT_OK:
        first_line = (outcome.message.splitlines() or [f"the listing Job {job_name} failed"])[0]
        sys.stderr.write(f"{first_line} (exit {outcome.exit_code})\n")
    return outcome.exit_code


def list_direct(cluster: Cluster, namespace: str, name: str, output: str) -> int:
    """The listing in this process, as the user: their Kubernetes permissions read the spec's Secrets."""
    from common.kube_client import ClientTransport
    from common.runtime import run_job
    from jobs.backup.listing import ListJob

    resource_of(cluster, "backup", namespace, name)
    argv = ["--name", name, "--namespace", namespace, "--log-level", "error", "-o", output]
    return run_job(
        ListJob(),
        argv,
        prog="kubectl cellar list --direct",
        transport_factory=lambda _: ClientTransport(cluster.api_client),
    )
