"""The archive job's SQL: the batch statement, the rows due, and the per-transaction settings.

Identifiers always pass through `psycopg.sql.Identifier`; the one piece of SQL from the spec is the
filter, which the CRD documents as trusted.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from psycopg import sql

from common.conditions import format_time
from common.errors import PermanentError
from common.reasons import Reason
from jobs.archive.arrow_types import select_list
from jobs.archive.lanes import Lane
from jobs.archive.settings import DEFAULT_TUNING, ArchiveSettings, Tuning
from jobs.archive.table import Connection, TableInfo, has_timestamp_statistics


def sql_settings(conn: Connection, settings: ArchiveSettings, info: TableInfo) -> None:
    """Per-transaction settings that make every value's text form predictable and the batch bounded."""
    settings_sql = [
        sql.SQL("SET LOCAL lock_timeout = {}").format(
            sql.Literal(f"{int(settings.lock_timeout.total_seconds() * 1000)}ms")
        ),
        sql.SQL("SET LOCAL statement_timeout = {}").format(
            sql.Literal(f"{int(settings.statement_timeout.total_seconds() * 1000)}ms")
        ),
        sql.SQL("SET LOCAL TimeZone = 'UTC'"),
        sql.SQL("SET LOCAL DateStyle = 'ISO, YMD'"),
        sql.SQL("SET LOCAL extra_float_digits = 3"),
        sql.SQL("SET LOCAL bytea_output = 'hex'"),
        # A batch's statement is estimated costly enough for JIT compilation, which then costs more
        # server time than it saves on a few thousand rows.
        sql.SQL("SET LOCAL jit = off"),
    ]
    if not info.plain:
        settings_sql += [sql.SQL("SET LOCAL enable_hashjoin = off"), sql.SQL("SET LOCAL enable_mergejoin = off")]
    conn.execute(sql.SQL("; ").join(settings_sql))  # one round trip


def eligible_condition(
    settings: ArchiveSettings, info: TableInfo, cutoff: datetime, *, holds: bool = True
) -> sql.Composable:
    """`ts < cutoff`, the trusted filter, and not a row that unarchive brought back into the table."""
    ts = sql.Identifier(info.timestamp_column.name)
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in info.primary_key)
    parts: list[sql.Composable] = [sql.SQL("{} < {}").format(ts, sql.Literal(cutoff))]
    if settings.filter_sql:
        parts.append(sql.SQL("({})").format(sql.SQL(settings.filter_sql)))  # trusted by contract (CRD docs)
    if holds:
        # Two tests, not one anti-join: the first runs once per statement, so while no row of the table is
        # held the per-row look-up never runs. As a filter it also keeps the index scan's timestamp order,
        # so a batch reads about its own rows; planned as one anti-join, every batch read and sorted all
        # the rows still due (test_a_batch_reads_about_its_own_rows).
        parts.append(
            sql.SQL(
                "(NOT EXISTS (SELECT 1 FROM cellar.archive_holds WHERE relation = {relation}) OR "
                "NOT EXISTS (SELECT 1 FROM cellar.archive_holds h WHERE h.relation = {relation} "
                "AND h.key = ROW({keys})::text))"
            ).format(relation=sql.Literal(settings.relation), keys=keys)
        )
    return sql.SQL(" AND ").join(parts)


def table_name(settings: ArchiveSettings) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(settings.schema), sql.Identifier(settings.table))


def copy_out(query: sql.Composable) -> sql.Composed:
    """A query whose rows the server sends as CSV (one batch's statement is copy_out(batch_query(...)))."""
    return sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(query)


@dataclass(frozen=True)
class BatchPlan:
    """What every batch of a run selects from: the table as described, the spec's settings (as they are for this
    batch), the cutoff and the tuning; `holds`: whether cellar.archive_holds exists (a dry run creates nothing)."""

    settings: ArchiveSettings
    info: TableInfo
    cutoff: datetime
    tuning: Tuning = DEFAULT_TUNING
    holds: bool = True


def batch_query(
    plan: BatchPlan, limit: int, watermark: dict[str, Any] | None = None, lane: Lane | None = None
) -> sql.Composed:
    """The query of one batch, within `lane`'s time range, from the lane's `resume_from` on; in Copy mode after
    the `watermark` (the last row the previous Copy batch stored).

    A lane takes rows in (timestamp, key) order, so the rows before its `resume_from` (the newest
    timestamp of its previous batch) are gone, or locked by an application (SKIP LOCKED passed them).
    Starting the index scan there saves walking the index entries of every row deleted earlier in the
    run, which VACUUM has not removed yet: without it the time per batch grows with the rows archived.
    """
    settings, info = plan.settings, plan.info
    ts = sql.Identifier(info.timestamp_column.name)
    condition = eligible_condition(settings, info, plan.cutoff, holds=plan.holds)
    lane = lane or Lane()
    for bound, operator in ((lane.start, ">="), (lane.end, "<"), (lane.resume_from, ">="), (lane.until, "<")):
        if bound is not None:
            condition = sql.SQL("{} AND {} " + operator + " {}").format(condition, ts, sql.Literal(bound))
    if settings.mode == "Copy" and watermark is not None:
        condition = _after_watermark(info, condition, watermark)
    if settings.partitioning != "None":
        condition = _within_partitions(plan, condition)
    order = sql.SQL("{}, {}").format(ts, sql.SQL(", ").join(sql.Identifier(k) for k in info.primary_key))
    if settings.mode == "Copy":
        return sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT {}").format(
            select_list(info.columns), table_name(settings), condition, order, sql.Literal(limit)
        )
    return _delete_returning(plan, condition, order, limit)


def _after_watermark(info: TableInfo, condition: sql.Composable, watermark: dict[str, Any]) -> sql.Composed:
    """Copy mode archives each row once: only rows after the last one the previous Copy batch stored."""
    ts = sql.Identifier(info.timestamp_column.name)
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in info.primary_key)
    key_types = [info.column(k).pg_type for k in info.primary_key]
    values = sql.SQL(", ").join(
        sql.SQL("{}::{}").format(sql.Literal(v), sql.SQL(t)) for v, t in zip(watermark["key"], key_types, strict=True)
    )
    since = sql.SQL("{}::{}").format(sql.Literal(watermark["ts"]), sql.SQL(info.timestamp_column.pg_type))
    return sql.SQL("{} AND {} >= {} AND ROW({}, {}) > ROW({}, {})").format(
        condition, ts, since, ts, keys, since, values
    )


def _within_partitions(plan: BatchPlan, condition: sql.Composable) -> sql.Composed:
    """A batch writes one object per partition it touches: on a sparse table 10,000 rows can span years of days,
    and a thousand uploads would hold the transaction open for seconds. Taking only rows within
    tuning.max_partitions_per_batch periods of the oldest due row bounds that."""
    settings = plan.settings
    ts = sql.Identifier(plan.info.timestamp_column.name)
    unit = {"Daily": "days", "Monthly": "months"}.get(settings.partitioning, "years")
    span = sql.SQL(f"interval '{int(plan.tuning.max_partitions_per_batch)} {unit}'")
    # Move: the window starts at the oldest row no application holds locked, so locked rows never stall it.
    start = (
        "(SELECT min({ts}) FROM {table} WHERE {condition})"
        if settings.mode == "Copy"
        else "(SELECT {ts} FROM {table} WHERE {condition} ORDER BY {ts} LIMIT 1 FOR UPDATE SKIP LOCKED)"
    )
    return sql.SQL("{condition} AND {ts} < " + start + " + {span}").format(
        condition=condition, ts=ts, table=table_name(settings), span=span
    )


def _delete_returning(plan: BatchPlan, condition: sql.Composable, order: sql.Composable, limit: int) -> sql.Composed:
    """One statement chooses the batch's rows, locks them, deletes exactly those and returns them."""
    settings, info = plan.settings, plan.info
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in info.primary_key)

    def locked(identity: sql.Composable, relation: sql.Composable) -> sql.Composed:
        return sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT {} FOR UPDATE SKIP LOCKED").format(
            identity, relation, condition, order, sql.Literal(limit)
        )

    if info.plain:
        # The rows this statement locked cannot move while it runs, so their ctids name exactly them: a
        # TID scan deletes them without a lookup in the key's index per row (docs/design.md has the
        # figure). ONLY: an inheritance child created meanwhile is not this table.
        only = sql.SQL("ONLY {}").format(table_name(settings))
        target = sql.SQL("{} WHERE ctid = ANY(ARRAY({}))").format(only, locked(sql.SQL("ctid"), only))
    else:
        # Partitioned and inherited tables, where a ctid is not unique: by key. sql_settings turns hash and
        # merge joins off for this transaction, so this is a nested loop over the key's unique index; a
        # hash join would read the whole table for every batch.
        target = sql.SQL("{} WHERE ({}) IN ({})").format(table_name(settings), keys, locked(keys, table_name(settings)))
    return sql.SQL("DELETE FROM {} RETURNING {}").format(target, select_list(info.columns))


def due_range(conn: Connection, settings: ArchiveSettings, info: TableInfo, cutoff: datetime) -> tuple[object, object]:
    """The oldest and the newest timestamp of the rows due (None, None when none are)."""
    ts = sql.Identifier(info.timestamp_column.name)
    row = conn.execute(
        sql.SQL("SELECT min({ts}), max({ts}) FROM {table} WHERE {condition}").format(
            ts=ts, table=table_name(settings), condition=eligible_condition(settings, info, cutoff)
        )
    ).fetchone()
    conn.rollback()
    return (row[0], row[1]) if row else (None, None)


def lock_id(info: TableInfo) -> int:
    """One advisory lock per table: cellar's namespace in the high bits, the table's oid in the low."""
    return (zlib.crc32(b"cellar.archive") << 32 | info.oid) - (1 << 63)


def try_lock(conn: Connection, info: TableInfo) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_id(info),)).fetchone()
    conn.commit()
    return bool(row and row[0])


def dry_run_report(
    conn: Connection, settings: ArchiveSettings, info: TableInfo, cutoff: datetime, tuning: Tuning = DEFAULT_TUNING
) -> dict[str, Any]:
    """Rows, bytes and days that would move, and the plan of one batch (as the run's `tuning` makes it); changes
    nothing."""
    holds = conn.execute("SELECT to_regclass('cellar.archive_holds') IS NOT NULL").fetchone()
    condition = eligible_condition(settings, info, cutoff, holds=bool(holds and holds[0]))
    ts = sql.Identifier(info.timestamp_column.name)
    row = conn.execute(
        sql.SQL(
            "SELECT count(*), coalesce(sum(pg_column_size(t.*)), 0), count(DISTINCT {}::date), min({}), max({}), "
            "count(DISTINCT date_trunc('month', {})) FROM {} t WHERE {}"
        ).format(ts, ts, ts, ts, table_name(settings), condition)
    ).fetchone()
    assert row is not None
    # The plan of the statement a run's first batch executes (EXPLAIN without ANALYZE runs nothing).
    query = batch_query(BatchPlan(settings, info, cutoff, tuning, holds=bool(holds and holds[0])), settings.batch_rows)
    plan_rows = conn.execute(sql.SQL("EXPLAIN {}").format(query)).fetchall()
    conn.rollback()
    return {
        "rows": int(str(row[0])),
        "bytes": int(str(row[1])),
        "days": int(str(row[2])),
        "oldest": row[3],
        "newest": row[4],
        "months": int(str(row[5])),
        "plan": "\n".join(str(r[0]) for r in plan_rows),
    }


def count_due(
    conn: Connection, settings: ArchiveSettings, info: TableInfo, cutoff: datetime, estimate_from_rows: int
) -> tuple[int, bool]:
    """The progress total, and whether it is the planner's estimate rather than a count.

    Counting reads every due row's index entry: on the first run over years of rows, millions of them,
    on the primary, beside the batches. The
    planner's estimate, from the table's statistics, is free and close enough for a rate and an ETA,
    so it is the total from `estimate_from_rows` rows on. Below, when rows of the table are held (the
    planner cannot see which), or when the timestamp column has no statistics yet (the planner would
    guess a third of the table), the rows are counted. Without held rows the count needs no per-row
    look-up in the holds table.
    """
    held_row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM cellar.archive_holds WHERE relation = %s)", (settings.relation,)
    ).fetchone()
    held = bool(held_row and held_row[0])
    due = sql.SQL("FROM {} WHERE {}").format(
        table_name(settings), eligible_condition(settings, info, cutoff, holds=held)
    )
    if not held and has_timestamp_statistics(conn, info):
        plan: Any = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 {}").format(due)).fetchone()
        estimate = int(plan[0][0]["Plan"]["Plan Rows"]) if plan else 0
        if estimate >= estimate_from_rows:
            conn.rollback()
            return estimate, True
    row = conn.execute(sql.SQL("SELECT count(*) {}").format(due)).fetchone()
    conn.rollback()
    return (int(str(row[0])) if row else 0), False


def oldest_row_time(conn: Connection, settings: ArchiveSettings, info: TableInfo) -> str | None:
    """When the oldest row left in the table was stamped (RFC 3339), or None for an empty table."""
    row = conn.execute(
        sql.SQL("SELECT min({})::timestamptz FROM {}").format(
            sql.Identifier(info.timestamp_column.name), table_name(settings)
        )
    ).fetchone()
    conn.rollback()
    return format_time(row[0]) if row and row[0] else None  # type: ignore[arg-type]


def with_array_dimensions(conn: Connection, settings: ArchiveSettings, info: TableInfo, cutoff: datetime) -> TableInfo:
    """The table with each array column's dimensions as the rows due hold them, so that Parquet lists nest as
    deep as the arrays do. Arrays that no one Parquet type stores exactly (a column whose due rows mix
    dimensions, or lower bounds other than 1, as in '[0:2]={1,2,3}') are refused here, before the first batch.
    One read of the rows due, only for a table with array columns."""
    arrays = [c for c in info.columns if c.is_array]
    if not arrays:
        return info
    measures = []
    for column in arrays:
        name = sql.Identifier(column.name)
        measures.append(
            sql.SQL("min(array_ndims({0})), max(array_ndims({0})), bool_or(array_dims({0}) !~ {1})").format(
                name, sql.Literal(r"^(\[1:[0-9]+\])+$")
            )
        )
    holds = conn.execute("SELECT to_regclass('cellar.archive_holds') IS NOT NULL").fetchone()  # none before a run
    condition = eligible_condition(settings, info, cutoff, holds=bool(holds and holds[0]))
    row = conn.execute(
        sql.SQL("SELECT {} FROM {} WHERE {}").format(sql.SQL(", ").join(measures), table_name(settings), condition)
    ).fetchone()
    conn.rollback()
    assert row is not None  # an aggregate always returns one row
    dimensions: dict[str, int] = {}
    for index, column in enumerate(arrays):
        least, most, shifted = row[3 * index : 3 * index + 3]
        quoted = '"' + column.name.replace('"', '""') + '"'
        if least is not None and least != most:
            raise PermanentError(
                f"column {column.name!r} ({column.pg_type}) holds arrays of {least} to {most} dimensions in the rows "
                f"due; a Parquet list nests one depth. Archive one kind at a time with spec.filter, for example "
                f"'coalesce(array_ndims({quoted}), {most}) = {most}'",
                reason=Reason.ENCODING_FAILED,
            )
        if shifted:
            raise PermanentError(
                f"column {column.name!r} ({column.pg_type}) holds arrays whose subscripts do not start at 1 "
                f"(array_dims like [0:2]), which a Parquet list cannot keep; leave them out with spec.filter, for "
                f"example 'array_lower({quoted}, 1) = 1'",
                reason=Reason.ENCODING_FAILED,
            )
        dimensions[column.name] = int(str(most)) if most is not None else 1
    columns = [replace(c, dimensions=dimensions[c.name]) if c.is_array else c for c in info.columns]
    timestamp = next(c for c in columns if c.name == info.timestamp_column.name)
    return replace(info, columns=columns, timestamp_column=timestamp)
