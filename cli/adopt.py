"""`kubectl cellar adopt NAME | --all [--yes]`: hand a re-created DatabaseBackup its predecessor's storage prefix.

After a cluster is rebuilt, or a GitOps tool re-creates a resource, the resource has a new uid and its prefix's
owner record (`cellar-owner.json`, common/ownership.py) still names the old one, so its next backup is refused
with PrefixInUse: that safety stays. This reads each prefix's record with the user's own permissions (they must
read the storage Secrets the spec names, and reach the store), shows what would be taken over, and with `--yes`
annotates each resource with its predecessor's uid (`cellar.dev/take-over-prefix`), which the next run honours.
Only a predecessor (the same kind, namespace and name) is taken over: a prefix another resource owns needs a
person's look, and its refusal message says what to do.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from cli.cluster import FIELD_MANAGER, Cluster, Target
from cli.runs import resource_of
from cli.status import list_resources
from common.errors import NotFound, PermanentError
from common.kube import DATABASE_BACKUP, ClientTransport, Kube
from common.ownership import TAKE_OVER_ANNOTATION, Area, Claim, Owner, take_over_from
from common.reasons import Reason


@dataclass(frozen=True)
class Finding:
    name: str
    where: str  # the prefix, for people
    action: str  # "take over", "own", "annotated", "free", "other"
    predecessor: Owner | None
    note: str


def owner_record(cluster: Cluster, namespace: str, resource: dict[str, Any]) -> tuple[Claim | None, str]:
    """The prefix's owner record (None: none yet) and where it is, read with the user's credentials."""
    from common.secrets import Secrets
    from common.storage import open_store
    from jobs.backup.settings import parse_backup_spec

    settings = parse_backup_spec(resource.get("spec") or {})
    credentials = Secrets(Kube(ClientTransport(cluster.api_client)), namespace).storage_credentials(settings.storage)
    area = Area.of_backups(open_store(settings.storage, credentials))
    found = area.store.get_if_exists(area.record_key)
    return (Claim.read(found[0], area.where) if found else None), area.where


def examine(cluster: Cluster, namespace: str, resource: dict[str, Any]) -> Finding:
    name = resource["metadata"]["name"]
    me = Owner.of(DATABASE_BACKUP.kind, namespace, name, resource)
    claim, where = owner_record(cluster, namespace, resource)
    if claim is None:
        return Finding(name, where, "free", None, "no owner record yet: its next backup claims the prefix")
    owner = claim.owner
    if owner == me:
        return Finding(name, where, "own", None, "owns its prefix")
    if claim.handed_over_by(take_over_from(resource)):
        return Finding(name, where, "annotated", owner, f"takes over from uid {owner.uid} at its next backup")
    if (owner.kind, owner.namespace, owner.name) == (me.kind, me.namespace, me.name):
        return Finding(name, where, "take over", owner, f"predecessor uid {owner.uid}, owner since {claim.claimed_at}")
    return Finding(name, where, "other", owner, f"belongs to {owner.describe()}: not a predecessor, left alone")


def adopt(cluster: Cluster, target: Target, name: str | None, *, confirmed: bool) -> int:
    namespace = target.namespace
    if name:
        resources = [resource_of(cluster, "backup", namespace, name)]
    else:
        resources = list_resources(cluster, DATABASE_BACKUP, target)
        if not resources:
            raise NotFound(f'no DatabaseBackup in namespace "{namespace}": pass -n NAMESPACE of the chart\'s release')
    findings = [examine(cluster, namespace, r) for r in resources]
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
    kind = DATABASE_BACKUP
    for finding in to_take:
        assert finding.predecessor is not None
        body = {"metadata": {"annotations": {TAKE_OVER_ANNOTATION: finding.predecessor.uid}}}
        cluster.call(
            "patch", kind, f'"{finding.name}" in namespace "{namespace}"',
            cluster.custom.patch_namespaced_custom_object,
            kind.group, kind.version, namespace, kind.plural, finding.name, body,
            field_manager=FIELD_MANAGER, _content_type="application/merge-patch+json",
        )  # fmt: skip
        annotation = f"{TAKE_OVER_ANNOTATION}={finding.predecessor.uid}"
        sys.stdout.write(f"databasebackup.cellar.dev/{finding.name} annotated {annotation}\n")
    return 0
