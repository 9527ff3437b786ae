"""Iceberg commit benchmark: the CPU of one archive commit as the snapshots of a table grow.

Each batch an archive run moves into an Iceberg table is one snapshot, and each commit writes a manifest list that
names every manifest and a metadata file that lists every snapshot: its cost grows with the table. This makes
--commits fast appends of one small data file each, through cellar's own SQL catalog in a PostgreSQL the harness
starts (a local directory holds the files), two ways, each in a process of its own:

  (y) PyIceberg's manifest lists and metadata file encoding (each entry and snapshot encoded at every commit, the
      parent's list read back and decoded)
  (c) cellar's (iceberg_manifest_lists.py, iceberg_commits.metadata_file_bytes)

Both commit with iceberg_commits.fast_append, the archive's own. Each prints the CPU seconds of all its commits, the
CPU milliseconds of single commits at a few snapshot counts, and (c)'s over (y)'s. CPU, not wall: on two shared
cores a busy neighbour stretches the wall time, not the work. Run:

    .venv/bin/python -m benchmarks.iceberg_commit_bench            (--commits 1000 by default)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa

from tests.harness.stack import LocalStack

MARKS = (1, 100, 250, 500, 1000, 2000, 4000)
SCHEMA = "cellar_iceberg"


def _pyicebergs_encoding() -> None:
    """Let PyIceberg encode the manifest lists and metadata files (cellar's commits otherwise install their own)."""
    from pyiceberg.serializers import ToOutputFile

    from jobs.archive import iceberg_manifest_lists
    from jobs.archive.iceberg_sql_catalog import PostgresCatalog

    iceberg_manifest_lists.install = lambda: None  # type: ignore[assignment]

    def write_metadata(metadata: Any, io: Any, metadata_path: str) -> None:
        ToOutputFile.table_metadata(metadata, io.new_output(metadata_path), overwrite=True)

    PostgresCatalog._write_metadata = staticmethod(write_metadata)  # type: ignore[method-assign]


def _table(dsn: str, warehouse: Path) -> Any:
    """A fresh table of two columns, by day, in cellar's SQL catalog (the one its integration tests make)."""
    from jobs.archive.iceberg_sql_catalog import PostgresCatalog
    from tests.integration.test_iceberg_sql_catalog import _new_table

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{SCHEMA}"')
    return _new_table(
        PostgresCatalog(
            "cellar", lambda: psycopg.connect(dsn, autocommit=True), SCHEMA, warehouse=f"file://{warehouse}"
        )
    )


def run_commits(dsn: str, commits: int, encoding: str) -> dict[str, Any]:
    """`commits` fast appends of a day's file; the CPU of all of them and of the ones at MARKS (milliseconds)."""
    from jobs.archive.iceberg_commits import fast_append
    from jobs.archive.iceberg_writes import DataFileWriter

    if encoding == "pyiceberg":
        _pyicebergs_encoding()
    with tempfile.TemporaryDirectory() as warehouse:
        table = _table(dsn, Path(warehouse))
        start = datetime(2024, 1, 1, tzinfo=UTC)
        stamps = [start + timedelta(minutes=6 * n) for n in range(240)]
        rows = pa.table(
            {"id": pa.array(range(240), pa.int64()), "created_at": pa.array(stamps, pa.timestamp("us", "UTC"))}
        )
        files = DataFileWriter(table.metadata).write(table.io, rows)
        marks: dict[int, float] = {}
        began = time.process_time()
        for number in range(1, commits + 1):
            commit_began = time.process_time()
            properties = {"cellar.batch-id": f"batch-{number}", "cellar.relation": "public.orders"}
            fast_append(table, files, properties)
            if number in MARKS:
                marks[number] = (time.process_time() - commit_began) * 1000
        total = time.process_time() - began
        snapshots = len(table.metadata.snapshots)
    return {"cpu": total, "marks": marks, "snapshots": snapshots}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--child", nargs=2, metavar=("DSN", "ENCODING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_commits(args.child[0], args.commits, args.child[1])))
        return
    stack = LocalStack().start(kubernetes=False, s3=False)
    try:
        results = {}
        for label, encoding in (("(y) PyIceberg's encoding", "pyiceberg"), ("(c) cellar's", "cellar")):
            child = [sys.executable, "-m", "benchmarks.iceberg_commit_bench", "--commits", str(args.commits)]
            output = subprocess.run(
                [*child, "--child", stack.pg_dsn(), encoding], check=True, capture_output=True, text=True
            ).stdout
            results[label] = json.loads(output.strip().splitlines()[-1])
            print(f"{label}: {results[label]['cpu']:.2f} CPU s for {results[label]['snapshots']} commits", flush=True)
    finally:
        stack.stop()
    marks = [m for m in MARKS if m <= args.commits]
    baseline = results["(y) PyIceberg's encoding"]
    print(f"\n{args.commits:,} fast appends of one file each, through cellar's SQL catalog in PostgreSQL")
    print("| encoding | CPU s, all commits | " + " | ".join(f"ms at commit {m:,}" for m in marks) + " | CPU over (y) |")
    print("|---|---:|" + "---:|" * len(marks) + "---:|")
    for label, result in results.items():
        at = " | ".join(f"{result['marks'][str(m)]:.1f}" for m in marks)
        print(f"| {label} | {result['cpu']:.2f} | {at} | {result['cpu'] / baseline['cpu']:.2f} |")


if __name__ == "__main__":
    main()
