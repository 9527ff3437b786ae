"""A batch into an Iceberg table, exactly once: its rows leave PostgreSQL only in the transaction that records, in
the ledger, the snapshot that added them.

In one batch: the rows are deleted and returned (the transaction stays open), appended to the Iceberg table (the
catalog's commit: a snapshot whose summary carries the batch id), recorded in the ledger with the snapshot's id,
and COMMIT. A run that dies between the two commits leaves a snapshot of rows that are still in the table (the
server rolled back); the next run, before any batch, finds the snapshot's batch id missing from the ledger and
deletes exactly those rows by primary key, in a transaction that records the snapshot. Those rows are never
appended again. docs/design.md has the whole argument.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import psycopg
import pyarrow as pa
from psycopg import sql

from common.errors import CommitInDoubt, SnapshotUnrecorded
from common.failpoints import failpoint
from jobs.archive import ledger
from jobs.archive.batch_records import BatchResult, CapturedBatch, RowsSummary, rollback_quietly
from jobs.archive.iceberg import AppendedSnapshot, IcebergTable
from jobs.archive.settings import ArchiveSettings
from jobs.archive.statements import table_name
from jobs.archive.table import Connection, TableInfo

log = logging.getLogger(__name__)

BETWEEN_COMMITS = "archive.iceberg-between-commits"


def _when(value: object) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def snapshot_entry(
    table: IcebergTable, batch_id: str, snapshot: AppendedSnapshot, rows: RowsSummary
) -> ledger.LedgerEntry:
    """The ledger's row of one snapshot: its key names the table and snapshot; its manifest is the metadata file."""
    return ledger.LedgerEntry(
        object_key=f"iceberg:{table.iceberg.identifier}:snapshot:{snapshot.snapshot_id}",
        batch_id=batch_id,
        manifest_key=snapshot.metadata_location,
        rows=rows.rows,
        bytes=snapshot.bytes,
        sha256="",  # Iceberg's files are its own: their list and sizes are in the snapshot's manifests
        min_ts=_when(rows.min_ts),
        max_ts=_when(rows.max_ts),
        min_key=None if rows.min_key is None else str(rows.min_key),
        max_key=None if rows.max_key is None else str(rows.max_key),
        last_row=None,
    )


def summary_of(table: IcebergTable, rows: pa.Table) -> RowsSummary:
    info = table.info
    return RowsSummary.of(rows, info.timestamp_column.name, info.primary_key[0])


def publish_to_iceberg(
    table: IcebergTable, captured: CapturedBatch, settings: ArchiveSettings, cutoff: datetime, run_id: str
) -> BatchResult:
    """Append the captured rows as one snapshot, record it, COMMIT (the order the module doc gives)."""
    conn, batch_id = captured.conn, captured.batch_id
    appended: AppendedSnapshot | None = None
    written = captured.written
    summary = written.summary if written is not None else summary_of(table, captured.rows)
    try:
        if written is not None:  # read and written in pieces while the transaction was open
            appended = table.commit_files(written.data_files(), batch_id, run_id)
        else:
            appended = table.append(captured.rows, batch_id, run_id)
        entry = snapshot_entry(table, batch_id, appended, summary)
        ledger.record(conn, [entry], relation=settings.relation, cutoff=cutoff, mode=settings.mode, run_id=run_id)
        failpoint(BETWEEN_COMMITS)
    except Exception as error:
        rollback_quietly(conn)
        if appended is not None:
            raise SnapshotUnrecorded(
                f"batch {batch_id}'s Iceberg snapshot {appended.snapshot_id} committed, then its transaction failed "
                f"({error}); its rows are still in {settings.relation}, and the next run deletes them and records "
                "the snapshot"
            ) from error
        raise
    except BaseException:
        rollback_quietly(conn)
        raise
    try:
        conn.commit()
    except psycopg.OperationalError as exc:
        raise CommitInDoubt(batch_id, str(exc)) from exc
    result = BatchResult(rows=summary.rows, bytes=appended.bytes, objects=appended.data_files)
    result.transaction_seconds = time.monotonic() - captured.began
    log.info(
        "batch committed",
        extra={
            "batch_id": batch_id,
            "rows": result.rows,
            "bytes": result.bytes,
            "objects": result.objects,
            "snapshot_id": appended.snapshot_id,
            "transaction_seconds": round(result.transaction_seconds, 4),
        },
    )
    return result


def recorded_batches(conn: Connection, relation: str) -> set[str]:
    rows = conn.execute(
        "SELECT DISTINCT batch_id::text FROM cellar.archive_ledger WHERE relation = %s", (relation,)
    ).fetchall()
    conn.rollback()
    return {str(r[0]) for r in rows}


def _delete_keys(conn: Connection, settings: ArchiveSettings, info: TableInfo, keys: pa.Table) -> int:
    """DELETE the rows with these primary keys from the table and from the partitions a crashed run detached to
    archive whole (their rows are there, not in the parent; that run's successor reads what is left of them);
    how many there were."""
    names = list(info.primary_key)
    arrays = sql.SQL(", ").join(
        sql.SQL("{}::{}[]").format(
            sql.Literal([None if v is None else str(v) for v in keys.column(k).to_pylist()]),
            sql.SQL(info.column(k).pg_type),
        )
        for k in names
    )
    match = sql.SQL(" AND ").join(sql.SQL("t.{0} = k.{0}").format(sql.Identifier(k)) for k in names)
    columns = sql.SQL(", ").join(sql.Identifier(k) for k in names)
    sources = [
        table_name(settings),
        *(sql.SQL(name) for name in ledger.pending_partitions(conn, settings.relation, detached_only=True)),
    ]
    deleted = 0
    for source in sources:
        statement = sql.SQL("DELETE FROM {} t USING unnest({}) AS k({}) WHERE {}").format(
            source, arrays, columns, match
        )
        deleted += conn.execute(statement).rowcount
    return deleted


def resolve_unrecorded(
    conn: Connection, table: IcebergTable, settings: ArchiveSettings, info: TableInfo, cutoff: datetime, run_id: str
) -> int:
    """Before any batch, with the table's archive lock held: every snapshot cellar committed whose batch the ledger
    lacks (a run died between the two commits) has its rows deleted from the table, by primary key, in the
    transaction that records it. Returns how many snapshots were resolved."""
    recorded = recorded_batches(conn, settings.relation)
    resolved = 0
    for batch_id, snapshot in list(table.batch_snapshots()):
        if batch_id in recorded:
            continue
        columns = list(dict.fromkeys([*info.primary_key, info.timestamp_column.name]))
        rows = table.rows_added_by(snapshot, columns)
        summary = snapshot.summary
        appended = AppendedSnapshot(
            snapshot.snapshot_id,
            table.load().metadata_location,
            int(summary.get("added-data-files", "0")),
            int(summary.get("added-files-size", "0")),
        )
        try:
            deleted = _delete_keys(conn, settings, info, rows)
            ledger.record(
                conn,
                [snapshot_entry(table, batch_id, appended, summary_of(table, rows))],
                relation=settings.relation,
                cutoff=cutoff,
                mode=settings.mode,
                run_id=run_id,
            )
            conn.commit()
        except BaseException:
            rollback_quietly(conn)
            raise
        resolved += 1
        log.warning(
            "an Iceberg snapshot of a run that died before its COMMIT: its rows deleted from the table, not "
            "appended again",
            extra={
                "batch_id": batch_id,
                "snapshot_id": snapshot.snapshot_id,
                "rows": rows.num_rows,
                "deleted": deleted,  # fewer: the application deleted some of them meanwhile
            },
        )
    return resolved
