"""`kubectl cellar status`: one table of the fleet, each backup and archive with its CronJob.

Ready is the resource's own Ready condition, and also the clock's: a backup whose freshUntil has passed is
Stale even when no run has said so yet (its CronJob stopped, or was suspended), so the table shows what the
`CellarBackupStale` alert would.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from cli.cluster import CRONJOB, NAME_LABEL, PART_OF, RESOURCE_LABEL, Cluster, Target
from cli.cron import Schedule, ScheduleError
from common.conditions import find_condition, format_time
from common.errors import NotFound
from common.kube import DATABASE_BACKUP, TABLE_ARCHIVE, ResourceKind
from common.reasons import Reason
from common.suspension import suspended as is_suspended

HEADER = ["KIND", "NAME", "READY", "REASON", "LAST SUCCESS", "STALE AFTER", "TESTED", "SIZE/ROWS", "NEXT RUN"]
HEADER += ["SUSPENDED"]
JOBS = {DATABASE_BACKUP.kind: "backup", TABLE_ARCHIVE.kind: "archive"}


@dataclass(frozen=True)
class FleetRow:
    namespace: str
    kind: str  # backup or archive
    name: str
    ready: bool
    reason: str
    message: str
    last_success: str  # RFC 3339, or ""
    stale_after: str  # a backup's spec.staleAfter, or ""
    restore_tested: bool | None  # None: an archive (nothing to restore-test)
    size_or_rows: str
    next_run: str  # RFC 3339, or "" (no CronJob, suspended, or a schedule with no next run)
    suspended: bool
    cronjob: str  # "" when the chart did not make one


def list_resources(cluster: Cluster, kind: ResourceKind, target: Target) -> list[dict[str, Any]]:
    where = "in any namespace" if target.all_namespaces else f'in namespace "{target.namespace}"'
    try:
        if target.all_namespaces:
            found = cluster.call(
                "list", kind, where, cluster.custom.list_cluster_custom_object, kind.group, kind.version, kind.plural
            )
        else:
            found = cluster.call(
                "list",
                kind,
                where,
                cluster.custom.list_namespaced_custom_object,
                kind.group,
                kind.version,
                target.namespace,
                kind.plural,
            )
    except NotFound:
        raise NotFound(
            f"{kind.resource} is not a resource this cluster knows: cellar's CRDs are not installed; install the "
            "chart (helm install cellar ./cronjobs -n NAMESPACE) or kubectl apply --server-side -f cronjobs/crds/"
        ) from None
    return list(found.get("items") or [])


def list_cronjobs(cluster: Cluster, target: Target) -> list[Any]:
    where = "in any namespace" if target.all_namespaces else f'in namespace "{target.namespace}"'
    if target.all_namespaces:
        found = cluster.call(
            "list", CRONJOB, where, cluster.batch.list_cron_job_for_all_namespaces, label_selector=PART_OF
        )
    else:
        found = cluster.call(
            "list", CRONJOB, where, cluster.batch.list_namespaced_cron_job, target.namespace, label_selector=PART_OF
        )
    return list(found.items)


def fleet(cluster: Cluster, target: Target, now: datetime) -> list[FleetRow]:
    cronjobs = {
        (
            c.metadata.namespace,
            (c.metadata.labels or {}).get(NAME_LABEL),
            (c.metadata.labels or {}).get(RESOURCE_LABEL),
        ): c
        for c in list_cronjobs(cluster, target)
    }
    rows = []
    for kind in (DATABASE_BACKUP, TABLE_ARCHIVE):
        job = JOBS[kind.kind]
        for resource in list_resources(cluster, kind, target):
            metadata = resource["metadata"]
            cronjob = cronjobs.get((metadata["namespace"], f"cellar-{job}", metadata["name"]))
            rows.append(row_of(job, resource, cronjob, now))
    if not rows:
        where = "any namespace" if target.all_namespaces else f'namespace "{target.namespace}"'
        raise NotFound(
            f"no DatabaseBackup or TableArchive in {where}: the chart is not installed there; pass -n NAMESPACE "
            "of its release, or -A for every namespace"
        )
    return sorted(rows, key=lambda r: (r.namespace, r.kind, r.name))


def row_of(job: str, resource: Mapping[str, Any], cronjob: Any, now: datetime) -> FleetRow:
    metadata, spec, status = resource["metadata"], resource.get("spec") or {}, resource.get("status") or {}
    ready_condition = find_condition(status.get("conditions") or [], "Ready") or {}
    ready = ready_condition.get("status") == "True"
    reason = str(ready_condition.get("reason") or "-")  # no run has written Ready yet
    message = str(ready_condition.get("message") or "no run has reported yet")
    suspended = is_suspended(resource)
    if job == "backup":
        success = status.get("lastSuccessfulBackup") or {}
        last_success = str(success.get("completionTime") or "")
        stale_after = str(spec.get("staleAfter") or "26h")
        fresh_until = _time(status.get("freshUntil"))
        if ready and fresh_until is not None and now > fresh_until:
            ready, reason = False, Reason.STALE.value
            message = f"the newest backup completed {last_success}, more than staleAfter ({stale_after}) ago"
        verification = status.get("lastVerification") or {}
        tested = bool(success.get("verified")) or (
            bool(verification.get("passed")) and verification.get("key") == success.get("key")
        )
        amount = str(success.get("size") or "")
        restore_tested: bool | None = tested
    else:
        last_run = status.get("lastRun") or {}
        succeeded = last_run.get("reason") in {r.value for r in Reason if not r.failure}
        last_success = str(last_run.get("completionTime") or "") if succeeded else ""
        stale_after, restore_tested = "", None
        amount = f"{last_run.get('rows', 0)} rows" if last_run else ""
    next_run = ""
    if cronjob is not None:
        suspended = suspended or bool(cronjob.spec.suspend)
        if not suspended:
            next_run = _next_run(cronjob.spec.schedule, cronjob.spec.time_zone, now)
    return FleetRow(
        namespace=metadata["namespace"],
        kind=job,
        name=metadata["name"],
        ready=ready,
        reason=reason,
        message=message,
        last_success=last_success,
        stale_after=stale_after,
        restore_tested=restore_tested,
        size_or_rows=amount,
        next_run=next_run,
        suspended=suspended,
        cronjob=cronjob.metadata.name if cronjob is not None else "",
    )


def _next_run(schedule: str, time_zone: str | None, now: datetime) -> str:
    try:
        upcoming = Schedule.parse(schedule).next_after(now, time_zone)
    except ScheduleError:
        return ""  # the API server accepted it; a form this parser does not read shows as unknown, not an error
    return format_time(upcoming) if upcoming else ""


def _time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


def ago(moment: str, now: datetime) -> str:
    """How long ago (or, for a future moment, in how long) as kubectl prints ages: 45s, 12m, 5h, 3d."""
    when = _time(moment)
    if when is None:
        return "-"
    delta = abs(now - when)
    text = _short(delta)
    return f"in {text}" if when > now else text


def _short(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def render_table(rows: Sequence[FleetRow], now: datetime, *, with_namespace: bool) -> str:
    header = [
        "KIND",
        "NAME",
        "READY",
        "REASON",
        "LAST SUCCESS",
        "STALE AFTER",
        "TESTED",
        "SIZE/ROWS",
        "NEXT RUN",
        "SUSPENDED",
    ]
    lines = [(["NAMESPACE"] if with_namespace else []) + header]
    for row in rows:
        tested = "-" if row.restore_tested is None else ("yes" if row.restore_tested else "no")
        cells = [
            row.kind,
            row.name,
            "True" if row.ready else "False",
            row.reason,
            ago(row.last_success, now) + (" ago" if row.last_success else ""),
            row.stale_after or "-",
            tested,
            row.size_or_rows or "-",
            ago(row.next_run, now) if row.next_run else "-",
            "yes" if row.suspended else "no",
        ]
        lines.append(([row.namespace] if with_namespace else []) + cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return (
        "\n".join("   ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines) + "\n"
    )


def render_json(rows: Sequence[FleetRow]) -> str:
    return json.dumps({"items": [asdict(r) for r in rows]}, indent=2) + "\n"
