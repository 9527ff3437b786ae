"""archive_bench's variants that run in a process of their own without cellar's job: (a) the floor, (b) the hand
loop a team would write, (d) the capture-only diagnostic (archive_bench's docstring says what each measures).
Each prints one JSON line: rows moved, the longest transaction, bytes stored. Run by archive_bench as

    python -m benchmarks.archive_baselines floor|hand-loop|capture-only --dsn ... --cutoff ... [--endpoint --bucket]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import sys
import time
from datetime import datetime
from typing import Any

import psycopg

from benchmarks.archive_bench import BATCH, COLUMNS
from tests.harness.stack import S3_ACCESS_KEY, S3_SECRET_KEY, s3_client


def floor(dsn: str, cutoff: str) -> None:
    """(a): read every due row once, throw it away, delete them all in one statement."""
    started = time.monotonic()
    rows = copied = 0
    with psycopg.connect(dsn) as conn:
        with conn.cursor().copy(f"COPY (SELECT {COLUMNS} FROM orders WHERE created_at < '{cutoff}') TO STDOUT") as copy:
            for chunk in copy:
                copied += len(chunk)
        rows = conn.execute("DELETE FROM orders WHERE created_at < %s", (cutoff,)).rowcount
        conn.commit()
    print(
        json.dumps(
            {"rows": rows, "longest_transaction": time.monotonic() - started, "stored": 0, "copied_bytes": copied}
        )
    )


def orders_settings(storage: dict[str, Any], older_than: str) -> Any:
    """ArchiveSettings of a TableArchive over `orders`, for the archiver's parts a benchmark calls in its own
    process (nothing reads the Secrets it names)."""
    from jobs.archive.settings import parse_archive_spec

    reference = {"name": "unused", "key": "unused"}
    return parse_archive_spec(
        {
            "database": {"secretRef": {"name": "unused"}},
            "storage": {**storage, "credentials": {"accessKeyId": reference, "secretAccessKey": reference}},
            "table": {"name": "orders"},
            "timestampColumn": "created_at",
            "olderThan": older_than,
        }
    )


def capture_only(dsn: str, cutoff: str, endpoint: str, bucket: str) -> None:
    """(d), a diagnostic: cellar's capture step alone, batch after batch (its DELETE statement, reading and
    parsing the rows, COMMIT), with no files written. What the server side allows cellar at most."""
    from common.runtime import Interrupts
    from common.secrets import StorageCredentials
    from common.storage import open_store
    from jobs.archive.archiver import Archiver
    from jobs.archive.batches import RunScope
    from jobs.archive.lanes import Lane
    from jobs.archive.ledger_schema import ensure_ledger
    from jobs.archive.table import describe_table

    settings = orders_settings({"bucket": bucket, "endpoint": endpoint, "forcePathStyle": True}, "1d")
    rows = 0
    longest = 0.0
    with psycopg.connect(dsn) as conn:
        info = describe_table(conn, settings)
        conn.rollback()
        ensure_ledger(conn)
        credentials = StorageCredentials(S3_ACCESS_KEY, S3_SECRET_KEY, None, None)
        store = open_store(settings.storage, credentials)  # never written to
        scope = RunScope(conn, store, info, datetime.fromisoformat(cutoff), "bench")
        archiver = Archiver(scope, settings, Interrupts())
        lane = Lane()
        while (captured := archiver.batches.capture(conn, lane)) is not None:
            conn.commit()
            rows += captured.table.num_rows
            longest = max(longest, time.monotonic() - captured.began)
    print(json.dumps({"rows": rows, "longest_transaction": longest, "stored": 0}))


def hand_loop(dsn: str, cutoff: str, endpoint: str, bucket: str) -> None:
    """(b): what a team writes by hand: select, gzip CSV, upload, delete by id."""
    s3 = s3_client(endpoint)
    rows = stored = 0
    longest = 0.0
    with psycopg.connect(dsn) as conn:
        number = 0
        while True:
            began = time.monotonic()
            batch = conn.execute(
                f"SELECT {COLUMNS} FROM orders WHERE created_at < %s ORDER BY id LIMIT %s", (cutoff, BATCH)
            ).fetchall()
            if not batch:
                conn.rollback()
                break
            text = io.StringIO()
            csv.writer(text).writerows(batch)
            body = gzip.compress(text.getvalue().encode())
            s3.put_object(Bucket=bucket, Key=f"hand/part-{number:06d}.csv.gz", Body=body)
            conn.execute("DELETE FROM orders WHERE id = ANY(%s)", ([r[0] for r in batch],))
            conn.commit()
            longest = max(longest, time.monotonic() - began)
            rows += len(batch)
            stored += len(body)
            number += 1
    print(json.dumps({"rows": rows, "longest_transaction": longest, "stored": stored}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=["floor", "hand-loop", "capture-only"])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--cutoff", required=True)
    parser.add_argument("--endpoint")
    parser.add_argument("--bucket")
    args = parser.parse_args()
    if args.variant == "floor":
        floor(args.dsn, args.cutoff)
    elif args.variant == "capture-only":
        capture_only(args.dsn, args.cutoff, args.endpoint, args.bucket)
    else:
        hand_loop(args.dsn, args.cutoff, args.endpoint, args.bucket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
