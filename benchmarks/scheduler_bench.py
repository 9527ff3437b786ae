"""What each part of the archive job's scheduler earns: the job with one part off against all of them on.

The parts: lanes side by side (spec.batch.parallelism, 2 by default), batch ends aligned to partition
boundaries, reading libpq's buffered COPY rows directly, and one malloc arena (jobs/archive/__init__.py).
Each is switched off in turn (the two in the middle replaced in the benchmark's own process); every
configuration runs on its own copy of the same table, and the configurations take turns,
round after round, so that a slow minute on shared cores weighs on all alike. docs/design.md keeps the
figures, and those of the parts measured here and removed (lanes split by the column's statistics, and
lane take-over).

Two tables of --rows rows (default 2 million), the archive benchmark's columns, 5 years of rows:
  uniform  as many rows every day (80% due)
  growing  rows per day growing with the square of time, as a business that grew (51% due): lanes of
           equal time leave the older lane an eighth of the rows

For each configuration: the best and the median wall time of its rounds, the job's CPU seconds, peak
RSS, objects written, and its median wall time against all-on's in the same rounds (above 1: slower
without the part). Run:

    .venv/bin/python -m benchmarks.scheduler_bench            (--rows 500000 --rounds 2 for a quick look)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.archive_bench import CUTOFF_AGE_DAYS, UNIFORM, cellar, drop, fresh_copy, generate
from benchmarks.measure import install_cellar
from tests.harness.stack import LocalStack, s3_client

# Row g of N is (1 - cbrt(g / N)) * 5 years old: the density of rows grows with the square of time.
GROWING = "1 - cbrt(g::float8 / %s)"
GLIBC_DEFAULT_ARENAS = str(8 * (os.cpu_count() or 1))  # what glibc allows without a limit


UNALIGNED = "unaligned_batch_ends"  # the benchmark's own switches, besides Tuning's
PLAIN_COPY_READ = "plain_copy_read"


@dataclass
class Configuration:
    label: str
    table: str
    tuning: dict[str, bool] = field(default_factory=dict)  # Tuning fields switched off, or the bench's own parts
    env: dict[str, str] = field(default_factory=dict)
    batch: dict[str, int] = field(default_factory=dict)  # spec.batch


CONFIGURATIONS = [
    Configuration("growing: all on", "growing"),
    Configuration("growing: one lane", "growing", batch={"parallelism": 1}),
    Configuration("uniform: all on", "uniform"),
    Configuration("uniform: one lane", "uniform", batch={"parallelism": 1}),
    Configuration("uniform: batch ends not aligned", "uniform", {UNALIGNED: True}),
    Configuration("uniform: psycopg's COPY read", "uniform", {PLAIN_COPY_READ: True}),
    Configuration("uniform: glibc's default arenas", "uniform", env={"MALLOC_ARENA_MAX": GLIBC_DEFAULT_ARENAS}),
]


def job_with_tuning(switches: str, argv: list[str]) -> int:
    """The archive job with the given Tuning fields (a JSON object), as `python -m jobs.archive` runs it. Two
    parts production always runs are replaced here, in the benchmark's own process, to measure what they earn:
    batch ends aligned to partitions, and the COPY read that takes the rows libpq already holds."""
    import jobs.archive.__main__ as archive
    from jobs.archive import batches
    from jobs.archive.settings import Tuning

    chosen = json.loads(switches)
    if chosen.pop(UNALIGNED, False):
        batches.aligned_batch_end = lambda *_: None  # type: ignore[assignment]
    if chosen.pop(PLAIN_COPY_READ, False):
        batches.read_copy = _read_copy_plainly  # type: ignore[assignment]
    return archive.main(argv, tuning=Tuning(**chosen))


def _read_copy_plainly(conn: Any, copy: Any) -> bytearray:
    """All the data of a COPY TO through psycopg's own read, chunk by chunk."""
    data = bytearray()
    while chunk := copy.read():
        data += chunk
    return data


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "job":
        return job_with_tuning(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only", action="append", help="run the configurations whose label contains this (the all-on ones always)"
    )
    args = parser.parse_args()
    chosen = [
        c
        for c in CONFIGURATIONS
        if not args.only or c.label.endswith("all on") or any(text in c.label for text in args.only)
    ]

    stack = LocalStack().start()
    try:
        print(f"servers: {stack.pg_version}, MinIO, kube-apiserver {stack.kube_version}; cores: {os.cpu_count()}")
        for table, age in (("uniform", UNIFORM), ("growing", GROWING)):
            started = time.monotonic()
            generate(stack, args.rows, f"template_{table}", age)
            print(f"generated {table}: {args.rows} rows in {time.monotonic() - started:.0f}s", flush=True)
        s3_client(stack.s3_endpoint).create_bucket(Bucket="scheduler-bench")
        kubeconfig, api = install_cellar(stack, "archive")
        cutoff_age = timedelta(days=CUTOFF_AGE_DAYS)
        print(f"cutoff: {(datetime.now(UTC) - cutoff_age).date()}")
        runs: dict[str, list[dict[str, Any]]] = {c.label: [] for c in chosen}
        for attempt in range(args.rounds):
            for number, configuration in enumerate(chosen):
                database = f"sched_{number}_{attempt}"
                fresh_copy(stack, database, f"template_{configuration.table}")
                result = cellar(
                    stack,
                    database,
                    "scheduler-bench",
                    kubeconfig,
                    api,
                    "Daily",
                    attempt,
                    configuration.batch,
                    name=f"sched-{number}-{attempt}",
                    job=("benchmarks.scheduler_bench", "job", json.dumps(configuration.tuning)),
                    env=configuration.env,
                )
                drop(stack, database)
                runs[configuration.label].append(result)
                print(f"round {attempt + 1}: {configuration.label}: {result['wall']:.1f}s", flush=True)
        report(chosen, runs)
    finally:
        stack.stop()
    return 0


def report(chosen: list[Configuration], runs: dict[str, list[dict[str, Any]]]) -> None:
    print(
        f"\n{'configuration':36} {'rows':>8} {'best s':>7} {'median s':>9} {'vs all on':>10} {'job CPU s':>10} "
        f"{'peak RSS MB':>12} {'objects':>8}"
    )
    baseline: dict[str, float] = {}
    for configuration in chosen:
        measured = runs[configuration.label]
        walls = [r["wall"] for r in measured]
        if configuration.label.endswith("all on"):
            baseline[configuration.table] = statistics.median(walls)
        ratio = statistics.median(walls) / baseline[configuration.table]
        best = min(measured, key=lambda r: r["wall"])
        print(
            f"{configuration.label:36} {best['rows']:>8} {best['wall']:7.1f} {statistics.median(walls):9.1f} "
            f"{ratio:10.2f} {statistics.median(r['job_cpu'] for r in measured):10.1f} "
            f"{max(r['rss'] for r in measured):12.0f} {best['objects']:>8}"
        )
    print("\nvs all on: median wall time over all-on's median on the same table (above 1: slower without it)")


if __name__ == "__main__":
    sys.exit(main())
