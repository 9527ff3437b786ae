"""`python -m jobs.backup [backup|restore|verify] --name NAME [--namespace NS] [--kubeconfig FILE] [--dry-run]`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from common.runtime import Job, run_job
from jobs.backup.job import BackupJob, VerifyJob
from jobs.backup.restore_job import RestoreJob

COMMANDS: dict[str, Job] = {"backup": BackupJob(), "restore": RestoreJob(), "verify": VerifyJob()}
USAGE = """usage: cellar-backup [backup|restore|verify] --name NAME [--namespace NS] [--kubeconfig FILE] [--dry-run]

  backup   dump the database of DatabaseBackup NAME to storage (the default command)
  restore  restore the backup that DatabaseRestore NAME names
  verify   restore-test a backup of DatabaseBackup NAME in a scratch database

Run a command with --help for its options."""


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command = "backup"
    if arguments and not arguments[0].startswith("-"):
        command = arguments.pop(0)
        if command not in COMMANDS:
            print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
            return 2
    return run_job(COMMANDS[command], arguments, prog=f"cellar-backup {command}")


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
