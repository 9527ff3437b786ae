"""`kubectl cellar unarchive NAME --from DATE --to DATE [--into side|source]`: archived rows back, run now.

A Job of the archive CronJob's own template, as `archive NAME` makes (owned by the CronJob, so its
`concurrencyPolicy: Forbid` keeps an unarchive and an archive run of the table apart), running
`cellar-archive unarchive` with the dates: the chart's ServiceAccount cellar-archive, which reads the store and
writes the table already.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from cli.cluster import JOB, Cluster
from cli.runs import cronjob_of, job_from
from common.errors import UsageError


@dataclass(frozen=True)
class UnarchiveRequest:
    archive: str
    start: str
    end: str
    into: str = "side"
    side_table: str | None = None
    allow_rearchive: bool = False

    def arguments(self) -> list[str]:
        for flag, text in (("--from", self.start), ("--to", self.end)):
            try:
                datetime.fromisoformat(text)
            except ValueError:
                raise UsageError(f"{flag} {text!r} is not a date or time (ISO 8601, for example 2024-01-31)") from None
        args = ["unarchive", "--from", self.start, "--to", self.end, "--into", self.into]
        if self.side_table:
            args += ["--side-table", self.side_table]
        if self.allow_rearchive:
            args.append("--allow-rearchive")
        return args


def start_unarchive(cluster: Cluster, namespace: str, request: UnarchiveRequest) -> str:
    arguments = request.arguments()
    cronjob = cronjob_of(cluster, "archive", namespace, request.archive, to_run=False)
    body = job_from(cronjob, secrets.token_hex(3))
    body["metadata"]["name"] = f"cellar-unarchive-{request.archive}-{secrets.token_hex(3)}"
    pod = body["spec"]["template"]["spec"]
    pod["containers"] = [{**pod["containers"][0], "args": arguments}, *pod["containers"][1:]]
    job_name = str(body["metadata"]["name"])
    cluster.call(
        "create", JOB, f'"{job_name}" in namespace "{namespace}"', cluster.batch.create_namespaced_job, namespace, body
    )
    return job_name
