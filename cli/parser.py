"""The command line of kubectl-cellar: its verbs and flags (the completion reads them from here too)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # argparse's type for what add_subparsers returns (a private name, generic only in typeshed)
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

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
    for add_verb in (
        _add_status,
        _add_runs_now,
        _add_suspension,
        _add_logs,
        _add_listing,
        _add_restore,
        _add_unarchive,
        _add_adopt,
        _add_completion,
    ):
        add_verb(verbs, common)
    return parser


def _add_status(verbs: Subparsers, common: argparse.ArgumentParser) -> None:
    status = verbs.add_parser(
        "status",
        parents=[common],
        help="one table of every backup and archive; exit 1 when any is not Ready",
        description="Each backup and archive: Ready, last success and staleAfter, restore-tested, size or rows "
        "moved, next scheduled run, suspended. Exit 0 when all are Ready, 1 when any is not.",
    )
    status.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    status.add_argument("-o", "--output", choices=["table", "json"], default="table")


def _add_runs_now(verbs: Subparsers, common: argparse.ArgumentParser) -> None:
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


def _add_suspension(verbs: Subparsers, common: argparse.ArgumentParser) -> None:
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


def _add_logs(verbs: Subparsers, common: argparse.ArgumentParser) -> None:
    logs = verbs.add_parser(
        "logs",
        parents=[common],
        help="the log of the newest run of a backup, archive or restore",
        description="The log of the newest run (a Pod the chart's template labelled with the resource), or with "
        "--previous of the run before it; the CronJob's history limits decide how many are kept.",
    )
    logs.add_argument("name", metavar="NAME", help="backup, archive or restore (backup/NAME ... when several)")
    logs.add_argument("--previous", action="store_true", help="the run before the newest")
    logs.add_argument("-f", "--follow", action="store_true", help="follow the log until the run ends")


def _add_listing(verbs: Subparsers, common: argparse.ArgumentParser) -> None:
    listing = verbs.add_parser(
        "list",
        parents=[common],
        help="the backups of a DatabaseBackup in storage",
        description="The backups in storage: id, time, size, databases, encrypted, verified, what keeps them, "
        "object lock. By default a short Job under the chart's ServiceAccount cellar-backup lists them (you need "
        "no store credentials); --direct lists them from here, reading the spec's storage Secrets as you.",
    )
    listing.add_argument("name", metavar="NAME", help="the DatabaseBackup")
    listing.add_argument("-o", "--output", choices=["table", "json"], default="table")
    listing.add_argument("--direct", action="store_true", help="list from this machine with your permissions")


def _add_restore(verbs: Subparsers, common: argparse.ArgumentParser) -> None:
    restore = verbs.add_parser(
        "restore",
        parents=[common],
        help="restore a backup into the database a Secret names, as cellar-restore",
        description="Write a DatabaseRestore of DatabaseBackup NAME into the database Secret SECRET names, and "
        "run it now as the ServiceAccount cellar-restore (which must be allowed to read SECRET: "
        "extraSecrets.restore in the chart's values). --wait: follow it and exit with its exit code.",
    )
    restore.add_argument("name", metavar="NAME", help="the DatabaseBackup whose backup to restore")
    restore.add_argument("--to", required=True, metavar="SECRET", help="the Secret of the target database")
    restore.add_argument("--database", action="append", default=[], help="of a backup of several, this one")
    restore.add_argument("--table", action="append", default=[], metavar="T", help="only this table (schema.table)")
    restore.add_argument("--backup", metavar="ID", help="this backup (kubectl cellar list), not the newest")
    restore.add_argument("--dbname", help="the target database, instead of the Secret's dbname")
    restore.add_argument("--create-database", action="store_true", help="create the target database first")
    restore.add_argument("--identity", metavar="SECRET:KEY", help="an age identity, for an encrypted backup")
    restore.add_argument("--wait", action="store_true", help="follow the restore and exit with its exit code")


def _add_unarchive(verbs: Subparsers, common: argparse.ArgumentParser) -> None:
    unarchive = verbs.add_parser(
        "unarchive",
        parents=[common],
        help="bring a TableArchive's archived rows back (start <= timestamp < end), run now",
        description="Run cellar-archive unarchive now, as a Job of the archive's CronJob (ServiceAccount "
        "cellar-archive): the archived rows with FROM <= timestamp < TO, verified, into a side table "
        "<table>_unarchived (default) or the table itself. --wait: follow it and exit with its exit code.",
    )
    unarchive.add_argument("name", metavar="NAME", help="the TableArchive")
    unarchive.add_argument("--from", dest="start", required=True, metavar="DATE", help="first timestamp (ISO 8601)")
    unarchive.add_argument("--to", dest="end", required=True, metavar="DATE", help="rows older than this (ISO 8601)")
    unarchive.add_argument("--into", choices=["side", "source"], default="side", help="side table (default) or source")
    unarchive.add_argument("--side-table", help="the side table's name (default <table>_unarchived)")
    unarchive.add_argument("--allow-rearchive", action="store_true", help="with --into source: archive them again")
    unarchive.add_argument("--wait", action="store_true", help="follow the run and exit with its exit code")


def _add_adopt(verbs: Subparsers, common: argparse.ArgumentParser) -> None:
    adopt = verbs.add_parser(
        "adopt",
        parents=[common],
        help="hand re-created backups their predecessors' storage prefixes (PrefixInUse)",
        description="Read the owner record of each backup's storage prefix (with your permissions: the storage "
        "Secrets the spec names), show what would be taken over from a predecessor of the same name, and with "
        "--yes annotate each resource with its predecessor's uid (cellar.dev/take-over-prefix).",
    )
    adopt.add_argument("name", metavar="NAME", nargs="?", help="one DatabaseBackup (or --all)")
    adopt.add_argument("--all", action="store_true", help="every DatabaseBackup of the namespace")
    adopt.add_argument("--yes", action="store_true", help="annotate; without it, only show what would be done")


def _add_completion(verbs: Subparsers, common: argparse.ArgumentParser) -> None:
    completion = verbs.add_parser(
        "completion",
        help="a shell completion script: source <(kubectl-cellar completion bash)",
        description="Print a completion script for the console script kubectl-cellar. kubectl's own "
        "`kubectl cellar <TAB>` uses kubectl_complete-cellar, installed beside it.",
    )
    completion.add_argument("shell", choices=["bash", "zsh"])
