"""`kubectl cellar restore NAME --to SECRET`: a DatabaseRestore of DatabaseBackup NAME, run now as cellar-restore.

The chart renders a restore's Job only for entries under `restores:`; this writes the DatabaseRestore itself
and a Job of the backup CronJob's Pod (the chart's image, Secrets' volumes, security settings) turned into the
restore's: ServiceAccount cellar-restore, `args: [restore]`, the labels `logs` finds, the chart's default
restore deadline, owned by the DatabaseRestore (deleting it deletes the Job). Before anything is written it
asks the API server whether cellar-restore may read the target Secret (a LocalSubjectAccessReview), since
the chart's Role names each Secret a restore reads: a Secret not named there is refused, naming
`extraSecrets.restore`.
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass, field
from typing import Any

from cli.cluster import JOB, Cluster
from cli.runs import cronjob_of, resource_of
from common.errors import CellarError, Forbidden, UsageError
from common.kube import DATABASE_RESTORE, ResourceKind

RESTORE_ACCOUNT = "cellar-restore"
RESTORE_DEADLINE_SECONDS = 43200  # the chart's defaults.restoreActiveDeadline (12h)
REVIEW = ResourceKind("LocalSubjectAccessReview", "localsubjectaccessreviews", group="authorization.k8s.io")


@dataclass(frozen=True)
class RestoreRequest:
    backup: str
    target_secret: str
    databases: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    backup_id: str | None = None
    dbname: str | None = None
    create_database: bool = False
    identity: str | None = None  # SECRET:KEY of an age identity, for a backup whose spec names none


def restore_spec(request: RestoreRequest, backup: dict[str, Any]) -> dict[str, Any]:
    backup_ref: dict[str, Any] = {"name": request.backup}
    if request.backup_id:
        backup_ref["key"] = request.backup_id  # a backup id is accepted where a key is (find_backup)
    target: dict[str, Any] = {"secretRef": {"name": request.target_secret}}
    if request.dbname:
        target["dbname"] = request.dbname
    spec: dict[str, Any] = {"backup": backup_ref, "target": target}
    if request.create_database:
        spec["createDatabase"] = True
    if request.databases:
        spec["databases"] = list(request.databases)
    if request.tables:
        spec["select"] = {"tables": list(request.tables)}
    identity = ((backup.get("spec") or {}).get("encryption") or {}).get("identitySecretRef")
    if request.identity:
        secret, _, key = request.identity.partition(":")
        if not (secret and key):
            raise UsageError(
                f"--identity {request.identity}: write SECRET:KEY (the Secret key holding an age identity)"
            )
        identity = {"name": secret, "key": key}
    if identity:  # without one given, the backup's own identity decrypts what it encrypted
        spec["decryption"] = {"identitySecretRef": identity}
    return spec


def check_readable(cluster: Cluster, namespace: str, secret: str) -> None:
    """Refuse when cellar-restore may not get the Secret; say so and go on when this user may not ask."""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "LocalSubjectAccessReview",
        "metadata": {"namespace": namespace},
        "spec": {
            "user": f"system:serviceaccount:{namespace}:{RESTORE_ACCOUNT}",
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
            "resourceAttributes": {"namespace": namespace, "verb": "get", "resource": "secrets", "name": secret},
        },
    }
    from kubernetes import client

    authorization = client.AuthorizationV1Api(cluster.api_client)
    try:
        answer = cluster.call(
            "create", REVIEW, f'in namespace "{namespace}"',
            authorization.create_namespaced_local_subject_access_review, namespace, review,
        )  # fmt: skip
    except CellarError as exc:
        sys.stderr.write(f"(could not check whether {RESTORE_ACCOUNT} reads Secret {secret}: {exc})\n")
        return
    if not answer.status.allowed:
        raise Forbidden(
            f'the ServiceAccount {RESTORE_ACCOUNT} may not read Secret "{secret}" in namespace "{namespace}": name '
            f"it under extraSecrets.restore in the release's values file and helm upgrade (the chart's Role lists "
            "each Secret a restore reads)"
        )


def restore_job(cronjob: dict[str, Any], restore: dict[str, Any]) -> dict[str, Any]:
    """The Job that runs DatabaseRestore `restore` once, from the backup CronJob's Pod template."""
    name = restore["metadata"]["name"]
    spec = dict(cronjob["spec"]["jobTemplate"]["spec"])
    template = dict(spec["template"])
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    labels.update({"app.kubernetes.io/name": "cellar-restore", "cellar.dev/resource": name})
    pod = dict(template["spec"])
    container = dict(pod["containers"][0])
    env = [e for e in container.get("env") or [] if e.get("name") != "CELLAR_RESOURCE_NAME"]
    container.update(name="restore", args=["restore"], env=[{"name": "CELLAR_RESOURCE_NAME", "value": name}, *env])
    pod.update(serviceAccountName=RESTORE_ACCOUNT, containers=[container])
    template.update(metadata={**(template.get("metadata") or {}), "labels": labels}, spec=pod)
    spec.update(template=template, activeDeadlineSeconds=RESTORE_DEADLINE_SECONDS)
    for rule in (spec.get("podFailurePolicy") or {}).get("rules") or []:
        if "onExitCodes" in rule:
            rule["onExitCodes"] = {**rule["onExitCodes"], "containerName": "restore"}
    owner = {
        "apiVersion": DATABASE_RESTORE.api_version,
        "kind": DATABASE_RESTORE.kind,
        "name": name,
        "uid": restore["metadata"]["uid"],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": f"cellar-restore-{name}",
            "namespace": restore["metadata"]["namespace"],
            "labels": labels,
            "ownerReferences": [owner],
        },
        "spec": spec,
    }


def start_restore(cluster: Cluster, namespace: str, request: RestoreRequest) -> str:
    """Write the DatabaseRestore and its Job; returns the Job's name."""
    backup = resource_of(cluster, "backup", namespace, request.backup)
    cronjob = cronjob_of(cluster, "backup", namespace, request.backup, to_run=False)
    spec = restore_spec(request, backup)
    for secret in (request.target_secret, ((spec.get("decryption") or {}).get("identitySecretRef") or {}).get("name")):
        if secret:
            check_readable(cluster, namespace, secret)
    name = f"{request.backup}-{secrets.token_hex(3)}"
    body = {
        "apiVersion": DATABASE_RESTORE.api_version,
        "kind": DATABASE_RESTORE.kind,
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "cellar"}},
        "spec": spec,
    }
    kind = DATABASE_RESTORE
    restore = cluster.call(
        "create", kind, f'"{name}" in namespace "{namespace}"', cluster.custom.create_namespaced_custom_object,
        kind.group, kind.version, namespace, kind.plural, body,
    )  # fmt: skip
    job = restore_job(cronjob, dict(restore))
    job_name = str(job["metadata"]["name"])
    cluster.call(
        "create", JOB, f'"{job_name}" in namespace "{namespace}"', cluster.batch.create_namespaced_job, namespace, job
    )
    sys.stderr.write(f"databaserestore.cellar.dev/{name} created in namespace {namespace}\n")
    return job_name
