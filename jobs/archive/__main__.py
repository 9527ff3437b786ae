"""`python -m jobs.archive [archive|unarchive|maintain] --name NAME [--namespace NS] [--kubeconfig FILE]
[--dry-run]`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from common.runtime import Job, run_command
from jobs.archive.job import ArchiveJob
from jobs.archive.maintain import MaintainJob
from jobs.archive.settings import DEFAULT_TUNING, Tuning
from jobs.archive.unarchive import UnarchiveJob

USAGE = """usage: cellar-archive [archive|unarchive|maintain] --name NAME [--namespace NS] [--kubeconfig FILE]
                      [--dry-run]

  archive    move the rows TableArchive NAME says are old into storage (the default command)
  unarchive  bring archived rows back: --from DATE --to DATE [--into side|source]
  maintain   an Iceberg archive's table: compact small files, expire old snapshots, delete orphan files

Run a command with --help for its options."""


def main(argv: Sequence[str] | None = None, *, tuning: Tuning = DEFAULT_TUNING) -> int:
    """`tuning`: how runs pace and bound themselves (tests pass their own)."""
    commands: dict[str, Job] = {
        "archive": ArchiveJob(tuning),
        "unarchive": UnarchiveJob(tuning),
        "maintain": MaintainJob(tuning),
    }
    return run_command(commands, "archive", USAGE, argv, prog="cellar-archive")


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
