"""`python -m jobs.backup [backup|restore|verify|list] --name NAME [--namespace NS] [--kubeconfig FILE] [--dry-run]`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from common.runtime import Job, run_command
from jobs.backup.backup.job import BackupJob, VerifyJob
from jobs.backup.listing import ListJob
from jobs.backup.restore.job import RestoreJob

COMMANDS: dict[str, Job] = {
    "backup": BackupJob(),
    "restore": RestoreJob(),
    "verify": VerifyJob(),
    "list": ListJob(),
}
USAGE = """usage: cellar-backup [backup|restore|verify|list] --name NAME [--namespace NS] [--kubeconfig FILE]
                     [--dry-run]

  backup   dump the database of DatabaseBackup NAME to storage (the default command)
  restore  restore the backup that DatabaseRestore NAME names
  verify   restore-test a backup of DatabaseBackup NAME in a scratch database
  list     list the backups of DatabaseBackup NAME in storage (-o json for scripts)

Run a command with --help for its options."""


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(COMMANDS, "backup", USAGE, argv, prog="cellar-backup")


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
