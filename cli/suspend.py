"""`kubectl cellar suspend NAME` / `resume NAME`: the annotation cellar.dev/suspended on the custom resource.

Why an annotation and not the CronJob's spec.suspend: common/suspension.py. The patch is a merge patch of that
one annotation under a field manager of its own (kubectl-cellar), so a later `helm upgrade` (Helm 4 applies
server-side) finds no field it owns written by another manager.
"""

from __future__ import annotations

from typing import Any

from cli.cluster import FIELD_MANAGER, Cluster
from common.errors import NotFound, UsageError
from common.kube import DATABASE_BACKUP, TABLE_ARCHIVE, ResourceKind
from common.suspension import SUSPEND_ANNOTATION

KINDS = {"backup": DATABASE_BACKUP, "archive": TABLE_ARCHIVE}


def resolve(cluster: Cluster, namespace: str, name: str) -> tuple[ResourceKind, dict[str, Any]]:
    """The DatabaseBackup or TableArchive called `name` (or `backup/NAME`, `archive/NAME` when both exist)."""
    job, _, bare = name.rpartition("/")
    if job and job not in KINDS:
        raise UsageError(f"{name}: write NAME, backup/NAME or archive/NAME")
    found = []
    for kind in [KINDS[job]] if job else list(KINDS.values()):
        try:
            found.append((kind, get(cluster, kind, namespace, bare)))
        except NotFound:
            continue
    if not found:
        raise NotFound(
            f'no DatabaseBackup or TableArchive "{bare}" in namespace "{namespace}": `kubectl cellar status -n '
            f"{namespace}` lists them; pass -n NAMESPACE of the chart's release"
        )
    if len(found) > 1:
        raise UsageError(f'both a backup and an archive are called "{bare}": write backup/{bare} or archive/{bare}')
    return found[0]


def get(cluster: Cluster, kind: ResourceKind, namespace: str, name: str) -> dict[str, Any]:
    where = f'"{name}" in namespace "{namespace}"'
    found = cluster.call(
        "get", kind, where, cluster.custom.get_namespaced_custom_object,
        kind.group, kind.version, namespace, kind.plural, name,
    )  # fmt: skip
    return dict(found)


def set_suspended(cluster: Cluster, namespace: str, name: str, *, suspend: bool) -> str:
    """Annotate (or un-annotate) the resource; returns what was done, for the person."""
    kind, resource = resolve(cluster, namespace, name)
    bare = resource["metadata"]["name"]
    body = {"metadata": {"annotations": {SUSPEND_ANNOTATION: "true" if suspend else None}}}
    cluster.call(
        "patch", kind, f'"{bare}" in namespace "{namespace}"', cluster.custom.patch_namespaced_custom_object,
        kind.group, kind.version, namespace, kind.plural, bare, body,
        field_manager=FIELD_MANAGER, _content_type="application/merge-patch+json",
    )  # fmt: skip
    if suspend:
        return (
            f"{kind.kind.lower()}.cellar.dev/{bare} suspended: its runs do nothing until kubectl cellar resume {bare}"
        )
    return f"{kind.kind.lower()}.cellar.dev/{bare} resumed: its next scheduled run backs up or archives again"
