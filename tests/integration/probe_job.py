"""A minimal job on the shared runtime, used to test the runtime itself against the real API server.

It marks its DatabaseBackup Progressing, then waits up to --seconds (so a test can SIGTERM it), then
records success. Failures go through the runtime's one exit-code mapping and `record_failure`.
"""

from __future__ import annotations

import argparse
import sys
import time

from common.errors import CellarError
from common.kube import DATABASE_BACKUP
from common.runtime import RunContext, run_job


class ProbeJob:
    name = "probe"
    kind = DATABASE_BACKUP
    description = "test probe"
    application_name = "cellar-probe"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--seconds", type=float, default=0.0)

    def run(self, ctx: RunContext, args: argparse.Namespace) -> str:
        ctx.update_status([("Progressing", "True", "Running", "probe running")])
        print("PROBE-READY", flush=True)
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
        ctx.update_status(
            [("Progressing", "False", "Completed", "probe done"), ("Ready", "True", "Completed", "probe done")]
        )
        ctx.event("Completed", "probe done", action="Probe")
        return "probe done"

    def record_failure(self, ctx: RunContext, error: CellarError) -> None:
        ctx.update_status(
            [("Progressing", "False", error.reason, str(error)), ("Ready", "False", error.reason, str(error))]
        )
        ctx.event(error.reason, str(error), action="Probe", warning=True)


def main(argv: list[str] | None = None) -> int:
    return run_job(ProbeJob(), argv, prog="probe")


if __name__ == "__main__":
    sys.exit(main())
