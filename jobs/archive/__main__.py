"""`python -m jobs.archive [archive|unarchive] --name NAME [--namespace NS] [--kubeconfig FILE] [--dry-run]`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from common.runtime import Job, run_job
from jobs.archive.job import ArchiveJob, UnarchiveJob

COMMANDS: dict[str, Job] = {"archive": ArchiveJob(), "unarchive": UnarchiveJob()}
USAGE = """usage: cellar-archive [archive|unarchive] --name NAME [--namespace NS] [--kubeconfig FILE] [--dry-run]

  archive    move the rows TableArchive NAME says are old into storage (the default command)
  unarchive  bring archived rows back: --from DATE --to DATE [--into side|source]

Run a command with --help for its options."""


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command = "archive"
    if arguments and not arguments[0].startswith("-"):
        command = arguments.pop(0)
        if command not in COMMANDS:
            print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
            return 2
    return run_job(COMMANDS[command], arguments, prog=f"cellar-archive {command}")


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
