"""What each verb of `kubectl cellar` does with the cluster, once its flags are parsed (cli/__main__.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from cli.cluster import Cluster, Target
from common.errors import EXIT_OK, EXIT_RETRYABLE, UsageError


def status(cluster: Cluster, target: Target, args: argparse.Namespace) -> int:
    from cli.status import fleet, render_json, render_table

    now = datetime.now(UTC)
    rows = fleet(cluster, target, now)
    if args.output == "json":
        sys.stdout.write(render_json(rows))
    else:
        sys.stdout.write(render_table(rows, now, with_namespace=target.all_namespaces))
    return EXIT_OK if all(r.ready for r in rows) else EXIT_RETRYABLE


def run_now(cluster: Cluster, target: Target, args: argparse.Namespace) -> int:
    from cli.runs import start_run

    job_name = start_run(cluster, args.verb, target.namespace, args.name)
    sys.stderr.write(f"job.batch/{job_name} created in namespace {target.namespace}\n")
    return follow(cluster, target.namespace, job_name) if args.wait else EXIT_OK


def follow(cluster: Cluster, namespace: str, job_name: str) -> int:
    """Follow a Job's run to its end; its exit code, and on a failure its termination message's first line."""
    from cli.runs import follow_run

    outcome = follow_run(cluster, namespace, job_name)
    if outcome.exit_code != EXIT_OK:
        # The run's own words: cellar writes `<Reason>: message` as the container's termination message.
        first_line = (outcome.message.splitlines() or [f"the run of {outcome.job} failed"])[0]
        sys.stderr.write(f"{first_line} (exit {outcome.exit_code}; kubectl logs -n {namespace} job/{outcome.job})\n")
    return outcome.exit_code


def suspend_or_resume(cluster: Cluster, target: Target, args: argparse.Namespace) -> int:
    from cli.suspend import set_suspended

    sys.stdout.write(set_suspended(cluster, target.namespace, args.name, suspend=args.verb == "suspend") + "\n")
    return EXIT_OK


def logs(cluster: Cluster, target: Target, args: argparse.Namespace) -> int:
    from cli.logs import show_log

    show_log(cluster, target.namespace, args.name, previous=args.previous, follow=args.follow)
    return EXIT_OK


def listing(cluster: Cluster, target: Target, args: argparse.Namespace) -> int:
    from cli.listing import list_direct, list_in_cluster

    lister = list_direct if args.direct else list_in_cluster
    return lister(cluster, target.namespace, args.name, args.output)


def restore(cluster: Cluster, target: Target, args: argparse.Namespace) -> int:
    from cli.restore import RestoreRequest, start_restore

    request = RestoreRequest(
        args.name,
        args.to,
        databases=args.database,
        tables=args.table,
        backup_id=args.backup,
        dbname=args.dbname,
        create_database=args.create_database,
        identity=args.identity,
    )
    job_name = start_restore(cluster, target.namespace, request)
    return follow(cluster, target.namespace, job_name) if args.wait else EXIT_OK


def unarchive(cluster: Cluster, target: Target, args: argparse.Namespace) -> int:
    from cli.unarchive import UnarchiveRequest, start_unarchive

    request = UnarchiveRequest(args.name, args.start, args.end, args.into, args.side_table, args.allow_rearchive)
    job_name = start_unarchive(cluster, target.namespace, request)
    sys.stderr.write(f"job.batch/{job_name} created in namespace {target.namespace}\n")
    return follow(cluster, target.namespace, job_name) if args.wait else EXIT_OK


def adopt(cluster: Cluster, target: Target, args: argparse.Namespace) -> int:
    from cli.adopt import adopt as take_over

    if bool(args.name) == bool(args.all):
        raise UsageError("adopt: name one DatabaseBackup, or --all")
    return take_over(cluster, target, args.name, confirmed=args.yes)


HANDLERS: dict[str, Callable[[Cluster, Target, argparse.Namespace], int]] = {
    "status": status,
    "backup": run_now,
    "archive": run_now,
    "suspend": suspend_or_resume,
    "resume": suspend_or_resume,
    "logs": logs,
    "list": listing,
    "restore": restore,
    "adopt": adopt,
    "unarchive": unarchive,
}
