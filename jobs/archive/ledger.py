"""The ledger: one row per archived object, written in the transaction that deletes its rows.

It lives in the archived database (schema `cellar`, made and migrated by ledger_schema), so "the rows are
gone" and "the object that holds them is recorded" commit or roll back together. Status totals are rebuilt
from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg

Connection = psycopg.Connection[tuple[object, ...]]


@dataclass(frozen=True)
class LedgerEntry:
    object_key: str
    batch_id: str
    manifest_key: str
    rows: int
    bytes: int
    sha256: str
    min_ts: datetime | None
    max_ts: datetime | None
    min_key: str | None
    max_key: str | None
    last_row: str | None  # JSON {"ts": ..., "key": [...]}: where a Copy-mode run continues


def record(
    conn: Connection, entries: list[LedgerEntry], *, relation: str, cutoff: datetime, mode: str, run_id: str
) -> None:
    """The batch's objects, in the transaction that deleted their rows (one round trip: pipelined)."""
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO cellar.archive_ledger (object_key, batch_id, relation, manifest_key, rows, bytes, sha256, "
            "min_ts, max_ts, min_key, max_key, last_row, cutoff, mode, run_id) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    entry.object_key,
                    entry.batch_id,
                    relation,
                    entry.manifest_key,
                    entry.rows,
                    entry.bytes,
                    entry.sha256,
                    entry.min_ts,
                    entry.max_ts,
                    entry.min_key,
                    entry.max_key,
                    entry.last_row,
                    cutoff,
                    mode,
                    run_id,
                )
                for entry in entries
            ],
        )


def recorded_keys(conn: Connection, relation: str) -> set[str]:
    rows = conn.execute("SELECT object_key FROM cellar.archive_ledger WHERE relation = %s", (relation,)).fetchall()
    return {str(r[0]) for r in rows}


@dataclass(frozen=True)
class Totals:
    rows: int
    bytes: int
    batches: int


def totals(conn: Connection, relation: str) -> Totals:
    row = conn.execute(
        "SELECT coalesce(sum(rows), 0), coalesce(sum(bytes), 0), count(DISTINCT batch_id) "
        "FROM cellar.archive_ledger WHERE relation = %s",
        (relation,),
    ).fetchone()
    assert row is not None
    return Totals(int(str(row[0])), int(str(row[1])), int(str(row[2])))


def copy_watermark(conn: Connection, relation: str) -> dict[str, object] | None:
    """Copy mode archives each row once: it continues after the last row the last Copy batch stored."""
    row = conn.execute(
        "SELECT last_row FROM cellar.archive_ledger WHERE relation = %s AND mode = 'Copy' AND last_row IS NOT NULL "
        "ORDER BY archived_at DESC, max_ts DESC LIMIT 1",
        (relation,),
    ).fetchone()
    return None if row is None else dict(row[0])  # type: ignore[call-overload]


def pending_partitions(conn: Connection, relation: str, *, detached_only: bool = False) -> list[str]:
    """Partitions a run recorded `detaching` and did not finish whose table still exists (`detached_only`:
    those already detached from the parent, where a rolled-back read left its rows)."""
    exists = conn.execute("SELECT to_regclass('cellar.archive_partitions') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return []
    rows = conn.execute(
        "SELECT p.partition FROM cellar.archive_partitions p JOIN pg_class c ON c.oid = to_regclass(p.partition) "
        "WHERE p.relation = %s AND p.state = 'detaching' AND (NOT %s OR NOT c.relispartition) ORDER BY p.updated_at",
        (relation, detached_only),
    ).fetchall()
    conn.rollback()
    return [str(r[0]) for r in rows]
