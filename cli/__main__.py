"""`kubectl cellar VERB ...` (the console script `kubectl-cellar`): the chart's fleet from a terminal.

Every failure is one line on stderr, `<Reason>: what to do`, with the exit codes of the jobs' table
(0 ok, 1 retryable, 2 usage, 3 permanent): a script can tell "try again" from "fix something".
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from cli.cluster import Cluster, Target, connect
from common.errors import EXIT_OK, EXIT_RETRYABLE, EXIT_USAGE, CellarError
from common.redact import redact

DESCRIPTION = "Day-two commands for cellar's backups and archives (the Helm chart at cronjobs/)."


def _global_flags() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    where = flags.add_argument_group("cluster (as kubectl)")
    where.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
    where.add_argument("--context", help="kubeconfig context (default: its current context)")
    where.add_argument("-n", "--namespace", help="namespace (default: the context's, else default)")
    return flags


def build_parser() -> argparse.ArgumentParser:
    common = _global_flags()
    parser = argparse.ArgumentParser(prog="kubectl cellar", description=DESCRIPTION, parents=[common])
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    status = verbs.add_parser(
        "status",
        parents=[common],
        help="one table of every backup and archive; exit 1 when any is not Ready",
        description="Each backup and archive: Ready, last success and staleAfter, restore-tested, size or rows "
        "moved, next scheduled run, suspended. Exit 0 when all are Ready, 1 when any is not.",
    )
    status.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    status.add_argument("-o", "--output", choices=["table", "json"], default="table")

    for job, kind in (("backup", "DatabaseBackup"), ("archive", "TableArchive")):
        verb = verbs.add_parser(
            job,
            parents=[common],
            help=f"run the {kind}'s CronJob now (--wait: follow its log, exit with its exit code)",
            description=f"A Job from the CronJob cellar-{job}-NAME, as kubectl create job --from=cronjob/... makes "
            "it. With --wait: follow the log of each Pod it runs and exit with the run's exit code (0 ok, "
            "1 retryable, 2 usage, 3 permanent).",
        )
        verb.add_argument("name", metavar="NAME", help=f"the {kind}")
        verb.add_argument("--wait", action="store_true", help="follow the run and exit with its exit code")

    for name, does in (("suspend", "skip the scheduled runs of"), ("resume", "run again on schedule")):
        verb = verbs.add_parser(
            name,
            parents=[common],
            help=f"{does} a backup or archive (annotation cellar.dev/suspended; helm upgrade keeps it)",
            description=f"{does.capitalize()} a backup or archive: the annotation cellar.dev/suspended on its "
            "resource, which the job honours (a suspended run does nothing, posts an Event and exits 0). "
            "The chart leaves the annotation alone, so helm upgrade neither undoes it nor conflicts.",
        )
        verb.add_argument("name", metavar="NAME", help="the backup or archive (backup/NAME or archive/NAME if both)")
    return parser


def run(args: argparse.Namespace) -> int:
    cluster, context_namespace = connect(args.kubeconfig, args.context)
    target = Target(args.namespace or context_namespace, getattr(args, "all_namespaces", False))
    if args.verb == "status":
        from cli.status import fleet, render_json, render_table

        now = datetime.now(UTC)
        rows = fleet(cluster, target, now)
        if args.output == "json":
            sys.stdout.write(render_json(rows))
        else:
            sys.stdout.write(render_table(rows, now, with_namespace=target.all_namespaces))
        return EXIT_OK if all(r.ready for r in rows) else EXIT_RETRYABLE
    if args.verb in ("backup", "archive"):
        return run_now(cluster, args.verb, target.namespace, args.name, wait=args.wait)
    if args.verb in ("suspend", "resume"):
        from cli.suspend import set_suspended

        sys.stdout.write(set_suspended(cluster, target.namespace, args.name, suspend=args.verb == "suspend") + "\n")
        return EXIT_OK
    raise AssertionError(f"unhandled verb {args.verb}")  # argparse allows only the verbs above


def run_now(cluster: Cluster, job: str, namespace: str, name: str, *, wait: bool) -> int:
    from cli.runs import follow_run, start_run

    job_name = start_run(cluster, job, namespace, name)
    sys.stderr.write(f"job.batch/{job_name} created in namespace {namespace}\n")
    if not wait:
        return EXIT_OK
    outcome = follow_run(cluster, namespace, job_name)
    if outcome.exit_code != EXIT_OK:
        # The run's own words: cellar writes `<Reason>: message` as the container's termination message.
        first_line = (outcome.message.splitlines() or [f"the run of {outcome.job} failed"])[0]
        sys.stderr.write(f"{first_line} (exit {outcome.exit_code}; kubectl logs -n {namespace} job/{outcome.job})\n")
    return outcome.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return EXIT_OK if exit_.code in (0, None) else EXIT_USAGE
    try:
        return run(args)
    except CellarError as error:
        sys.stderr.write(f"{error.reason.value}: {redact(error.message)}\n")
        return error.exit_code
    except KeyboardInterrupt:
        return 130


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
