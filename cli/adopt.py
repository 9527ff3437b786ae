"""`kubectl cellar adopt NAME | --all [--yes]`: hand a re-created DatabaseBackup or TableArchive its predecessor's
storage prefix (a backup's whole prefix; an archive's folder of its table).

After a cluster is rebuilt, or a GitOps tool re-creates a resource, the resource has a new uid and its prefix's
owner record (`cellar-owner.json`, common/ownership.py) still names the old one, so its next backup is refused
with PrefixInUse: that safety stays. This reads each prefix's record with the user's own permissions (they must
read the storage Secrets the spec names, and reach the store), shows what would be taken over, and with `--yes`
annotates each resource with its predecessor's uid (`cellar.dev/take-over-prefix`), which the next run honours.
Only a predecessor (the same kind, namespace and name) is taken over: a prefix another resource owns needs a
person's look, and its refusal message says what to do.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from dataclasses import dataclass
from typing import Any

from cli.cluster import FIELD_MANAGER, Cluster, Target
from cli.runs import resource_of
from cli.status import list_resources
from common.errors import NotFound, PermanentError
from common.kube import DATABASE_BACKUP, TABLE_ARCHIVE, Kube, ResourceKind
from common.kube_client import ClientTransport
from common.ownership import TAKE_OVER_ANNOTATION, Area, Claim, Owner, take_over_from
from common.reasons import Reason


@dataclass(frozen=True)
class Finding:
    kind: ResourceKind
    name: str
    where: str  # the prefix, for people
    action: str  # "take over", "own", "annotated", "free", "other"
    predecessor: Owner | None
    note: str


def owner_record(
    cluster: Cluster, namespace: str, kind: ResourceKind, resource: dict[str, Any]
) -> tuple[Claim | None, str]:
    """The prefix's owner record (None: none yet) and where it is, read with the user's credentials."""
    from common.secrets import Secrets
    from common.storage import open_store
    from jobs.archive.settings import parse_archive_spec
    from jobs.backup.settings import parse_backup_spec

    secrets = Secrets(Kube(ClientTransport(cluster.api_client)), namespace)
    spec = resource.get("spec") or {}
    if kind is TABLE_ARCHIVE:
        archive = parse_archive_spec(spec)
        store = open_store(archive.storage, secrets.storage_credentials(archive.storage))
        area = Area.of_archive(store, archive.relation)
    else:
        backup = parse_backup_spec(spec)
        area = Area.of_backups(open_store(backup.storage, secrets.storage_credentials(backup.storage)))
    found = area.store.get_if_exists(area.record_key)
    return (Claim.read(found[0], area.where) if found else None), area.where


def examine(cluster: Cluster, namespace: str, kind: ResourceKind, resource: dict[str, Any]) -> Finding:
    name = resource["metadata"]["name"]
    me = Owner.of(kind.kind, namespace, name, resource)
    claim, where = owner_record(cluster, namespace, kind, resource)
    found = functools.partial(Finding, kind, name, where)
    if claim is None:
        return found("free", None, "no owner record yet: its next run claims the prefix")
    owner = claim.owner
    if owner == me:
        return found("own", None, "owns its prefix")
    if claim.handed_over_by(take_over_from(resource)):
        return found("annotated", owner, f"takes over from uid {owner.uid} at its next run")
    if (owner.kind, owner.namespace, owner.name) == (me.kind, me.namespace, me.name):
        return found("take over", owner, f"predecessor uid {owner.uid}, owner since {claim.claimed_at}")
    return found("other", owner, f"belongs to {owner.describe()}: not a predecessor, left alone")


def _resources(cluster: Cluster, target: Target, name: str | None) -> list[tuple[ResourceKind, dict[str, Any]]]:
    """The backups and archives to look at: those named `name` (a backup, an archive, or both), or all."""
    chosen: list[tuple[ResourceKind, dict[str, Any]]] = []
    for kind, job in ((DATABASE_BACKUP, "backup"), (TABLE_ARCHIVE, "archive")):
        if name is None:
            chosen += [(kind, r) for r in list_resources(cluster, kind, target)]
            continue
        with contextlib.suppress(NotFound):
            chosen.append((kind, resource_of(cluster, job, target.namespace, name)))
    if not chosen:
        what = f'"{name}"' if name else "DatabaseBackup or TableArchive"
        raise NotFound(
            f'no {what} in namespace "{target.namespace}": `kubectl cellar status -n {target.namespace}` lists the '
            "backups and archives there; pass -n NAMESPACE of the chart's release"
        )
    return chosen


def adopt(cluster: Cluster, target: Target, name: str | None, *, confirmed: bool) -> int:
    namespace = target.namespace
    findings = [examine(cluster, namespace, kind, r) for kind, r in _resources(cluster, target, name)]
    for finding in findings:
        sys.stdout.write(f"{finding.name}: {finding.action}: {finding.where} ({finding.note})\n")
    to_take = [f for f in findings if f.action == "take over" and f.predecessor is not None]
    if not to_take:
        if name and findings[0].action == "other":
            raise PermanentError(f"{name}: {findings[0].where} {findings[0].note}", reason=Reason.PREFIX_IN_USE)
        sys.stdout.write("nothing to take over\n")
        return 0
    if not confirmed:
        sys.stdout.write(f"{len(to_take)} to take over; run again with --yes to annotate them\n")
        return 0
    for finding in to_take:
        assert finding.predecessor is not None
        kind = finding.kind
        body = {"metadata": {"annotations": {TAKE_OVER_ANNOTATION: finding.predecessor.uid}}}
        cluster.call(
            "patch", kind, f'"{finding.name}" in namespace "{namespace}"',
            cluster.custom.patch_namespaced_custom_object,
            kind.group, kind.version, namespace, kind.plural, finding.name, body,
            field_manager=FIELD_MANAGER, _content_type="application/merge-patch+json",
        )  # fmt: skip
        annotation = f"{TAKE_OVER_ANNOTATION}={finding.predecessor.uid}"
        sys.stdout.write(f"{kind.kind.lower()}.cellar.dev/{finding.name} annotated {annotation}\n")
    return 0
