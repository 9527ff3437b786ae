"""Bringing archived rows back: verify each object, stage it, INSERT ... ON CONFLICT DO NOTHING.

The manifests in storage are the source of truth (the ledger may be gone with its database): they
carry every column's PostgreSQL type, so each value is cast back exactly. Rows brought back into the
source table are put on hold (cellar.archive_holds) so the next run does not archive them again.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
import pyarrow as pa
from psycopg import sql

from common.conditions import format_time
from common.encryption import Identities
from common.errors import CellarError, DecryptionFailed, InvalidSpec, PermanentError, UsageError
from common.failpoints import failpoint
from common.kube import TABLE_ARCHIVE
from common.reasons import Reason
from common.run_status import RunStatus
from common.runtime import RunContext
from common.storage import ObjectStore
from jobs.archive.encoding import table_to_copy_csv
from jobs.archive.job import open_table
from jobs.archive.ledger_schema import ensure_ledger
from jobs.archive.manifest import ArchivedObject, BatchManifest
from jobs.archive.objects import ObjectLayout, read_verified
from jobs.archive.repartition import Repartitioner
from jobs.archive.settings import DEFAULT_TUNING, ArchiveSettings, Tuning
from jobs.archive.standbys import StandbyGate, check_lag_visible
from jobs.archive.statements import table_name
from jobs.archive.status import UNARCHIVE_RUNS, UnarchiveRecord
from jobs.archive.table import Column, Connection, TableInfo

log = logging.getLogger(__name__)
_SAFE_TYPE = set('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ ,()."[]')


@dataclass
class UnarchiveResult:
    objects: int = 0
    rows_read: int = 0
    rows_inserted: int = 0
    rows_in_range: int = 0


def _checked_type(pg_type: str, key: str) -> sql.SQL:
    # Types come from manifests in the bucket: refuse anything that is not a type name before using it as SQL.
    if not pg_type or not set(pg_type) <= _SAFE_TYPE or ";" in pg_type or "--" in pg_type:
        raise PermanentError(
            f"manifest {key}: column type {pg_type!r} is not a PostgreSQL type name", reason=Reason.INVALID_MANIFEST
        )
    return sql.SQL(pg_type)


def objects_in_range(
    store: ObjectStore, settings: ArchiveSettings, start: datetime, end: datetime
) -> list[tuple[BatchManifest, ArchivedObject]]:
    """(batch manifest, object) for every archived object whose rows may fall in [start, end)."""
    layout = ObjectLayout(store, settings)
    chosen = []
    for listed in store.list_objects(layout.manifest_prefix):
        manifest = BatchManifest.read(store.get_bytes(listed.key), listed.key)
        chosen += [(manifest, described) for described in manifest.objects if described.spans(start, end)]
    return sorted(chosen, key=lambda item: (item[1].time_span[0], item[1].object_key))


def prepare_target(conn: Connection, settings: ArchiveSettings, into: str, side_table: str | None) -> sql.Composed:
    if into == "source":
        return table_name(settings)
    name = side_table or f"{settings.table}_unarchived"
    target = sql.SQL("{}.{}").format(sql.Identifier(settings.schema), sql.Identifier(name))
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (LIKE {} INCLUDING ALL)").format(target, table_name(settings)))
    return target


def unarchive(
    conn: Connection,
    store: ObjectStore,
    settings: ArchiveSettings,
    info: TableInfo,
    start: datetime,
    end: datetime,
    *,
    into: str = "side",
    side_table: str | None = None,
    hold: bool = True,
    standbys: StandbyGate | None = None,
    identities: Identities | None = None,
) -> UnarchiveResult:
    """Load rows with start <= timestamp < end back; idempotent, one transaction per object. Each object
    waits for `standbys` first: loading rows back is WAL for the standbys to replay, like archiving."""
    if into not in ("side", "source"):
        raise InvalidSpec(f"--into must be side or source, not {into!r}")
    result = UnarchiveResult()
    chosen = objects_in_range(store, settings, start, end)
    encrypted = [d.object_key for m, d in chosen if m.encryption]
    if encrypted and identities is None:  # before anything is written, the side table included
        raise DecryptionFailed(
            f"{len(encrypted)} of the {len(chosen)} archived objects in range are encrypted (the first: "
            f"{encrypted[0]}); name the Secret holding an identity of their recipients in "
            "spec.encryption.identitySecretRef"
        )
    target = prepare_target(conn, settings, into, side_table)
    conn.commit()
    repartition = None
    if into == "source":  # the spans of timestamps about to be loaded
        spans = [(max(d.time_span[0], start), min(d.time_span[1], end)) for _, d in chosen]
        repartition = Repartitioner.plan(conn, settings, info, spans)
    for manifest, described in chosen:
        if standbys is not None:
            standbys.wait(conn, lambda: False)  # SIGTERM interrupts the wait (it is not deferred here)
        key = described.object_key
        columns = _manifest_columns(manifest, key, info)
        table = read_verified(store, manifest, described, columns, identities)
        inserted, in_range = load_rows(
            conn,
            settings,
            info,
            LoadedPiece(key, described.rows),
            columns,
            table,
            target,
            start,
            end,
            hold=hold and into == "source",
            repartition=repartition,
        )
        conn.execute("UPDATE cellar.archive_ledger SET restored_at = now() WHERE object_key = %s", (key,))
        failpoint("archive.unarchive-before-commit")
        conn.commit()
        result.objects += 1
        result.rows_read += table.num_rows
        result.rows_inserted += inserted
        result.rows_in_range += in_range
        log.info(
            "object unarchived", extra={"key": key, "rows": table.num_rows, "in_range": in_range, "inserted": inserted}
        )
    return result


def _manifest_columns(manifest: BatchManifest, key: str, info: TableInfo) -> list[Column]:
    by_name = {c.name: c for c in info.columns}
    columns = []
    for described in manifest.columns:
        column = by_name.get(described.name)
        if column is None:
            raise PermanentError(
                f"{key}: column {described.name!r} no longer exists in {manifest.relation}",
                reason=Reason.SCHEMA_MISMATCH,
            )
        columns.append(
            Column(
                column.name,
                described.type,
                column.base,
                column.is_array,
                column.numeric_precision,
                column.numeric_scale,
                column.generated,
                fields=column.fields,
            )
        )
    return columns


@dataclass(frozen=True)
class LoadedPiece:
    """What one transaction of an unarchive loads: an object (or an Iceberg data file) and its rows' count."""

    key: str
    rows: int


def load_rows(
    conn: Connection,
    settings: ArchiveSettings,
    info: TableInfo,
    piece: LoadedPiece,
    columns: list[Column],
    table: pa.Table,
    target: sql.Composed,
    start: datetime,
    end: datetime,
    *,
    hold: bool,
    repartition: Repartitioner | None = None,
) -> tuple[int, int]:
    """Stage `table`'s rows, insert those in [start, end) that the target lacks; (inserted, in range)."""
    key = piece.key
    staging_columns = []
    conversions = []
    for column in columns:
        name = sql.Identifier(column.name)
        pg_type = _checked_type(column.pg_type, key)
        if column.is_array:  # staged as PostgreSQL's array text, at any depth (table_to_copy_csv)
            staging_columns.append(sql.SQL("{} text").format(name))
            conversions.append(sql.SQL("s.{}::{}").format(name, pg_type))
        elif column.fields:  # a composite: JSON from a struct, or its text from a file written before structs
            staging_columns.append(sql.SQL("{} text").format(name))
            conversions.append(
                sql.SQL(
                    "CASE WHEN left(s.{0}, 1) = '{{' THEN jsonb_populate_record(NULL::{1}, s.{0}::jsonb) "
                    "ELSE s.{0}::{1} END"
                ).format(name, pg_type)
            )
        else:
            staging_columns.append(sql.SQL("{} {}").format(name, pg_type))
            conversions.append(sql.SQL("s.{}").format(name))
    conn.execute(
        sql.SQL("CREATE TEMP TABLE cellar_staging ({}) ON COMMIT DROP").format(sql.SQL(", ").join(staging_columns))
    )
    names = sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)
    with (
        conn.cursor() as cursor,
        cursor.copy(sql.SQL("COPY cellar_staging ({}) FROM STDIN (FORMAT csv)").format(names)) as copy,
    ):
        copy.write(table_to_copy_csv(table.select([c.name for c in columns]), [c.name for c in columns if c.is_array]))
    staged = conn.execute("SELECT count(*) FROM cellar_staging").fetchone()
    if not staged or int(str(staged[0])) != piece.rows:
        raise PermanentError(
            f"{key}: staged {staged[0] if staged else 0} rows, the manifest says {piece.rows}",
            reason=Reason.VERIFICATION_FAILED,
        )
    ts = sql.Identifier(info.timestamp_column.name)
    in_range_condition = sql.SQL("s.{} >= {} AND s.{} < {}").format(ts, sql.Literal(start), ts, sql.Literal(end))
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in info.primary_key)
    # A generated column's archived value is what the table computes again, and PostgreSQL refuses one
    # given; an identity column GENERATED ALWAYS takes the archived key only with OVERRIDING SYSTEM VALUE.
    stored = [(c, conversion) for c, conversion in zip(columns, conversions, strict=True) if not c.generated]
    inserted_names = sql.SQL(", ").join(sql.Identifier(c.name) for c, _ in stored)
    in_range = conn.execute(
        sql.SQL("SELECT count(*) FROM cellar_staging s WHERE {}").format(in_range_condition)
    ).fetchone()
    created = []
    if repartition is not None:  # the partitions these rows go to, made again in their transaction
        span = conn.execute(
            sql.SQL("SELECT min(s.{0})::timestamptz, max(s.{0})::timestamptz FROM cellar_staging s WHERE {1}").format(
                ts, in_range_condition
            )
        ).fetchone()
        if span is not None and isinstance(span[0], datetime) and isinstance(span[1], datetime):
            created = repartition.create_for(span[0], span[1])
    try:
        cursor = conn.execute(
            sql.SQL(
                "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM cellar_staging s WHERE {} "
                "ON CONFLICT ({}) DO NOTHING"
            ).format(target, inserted_names, sql.SQL(", ").join(c for _, c in stored), in_range_condition, keys)
        )
    except psycopg.errors.CheckViolation as exc:
        if "no partition of relation" not in str(exc):
            raise
        raise PermanentError(
            f"{key}: {exc.diag.message_primary}; cellar has no record of a partition it archived for these rows "
            "(the table was partitioned otherwise then, or archived by a cellar that did not record partition "
            "bounds): create a partition for them and run unarchive again (objects already loaded are skipped)",
            reason=Reason.SCHEMA_MISMATCH,
        ) from None
    inserted = cursor.rowcount
    if created:
        assert repartition is not None
        log.info("partitions created again", extra={"partitions": repartition.drop_empty(created)})
    if hold:
        conn.execute(
            sql.SQL(
                "INSERT INTO cellar.archive_holds (relation, key) SELECT {}, ROW({})::text FROM cellar_staging s "
                "WHERE {} ON CONFLICT DO NOTHING"
            ).format(
                sql.Literal(settings.relation),
                sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(k)) for k in info.primary_key),
                in_range_condition,
            )
        )
    return inserted, int(str(in_range[0])) if in_range else 0


def _date(text: str, flag: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not a date or time (ISO 8601, for example 2024-01-31)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class UnarchiveJob:
    name = "unarchive"
    kind = TABLE_ARCHIVE
    description = (
        "Load archived rows of a TableArchive back (start <= timestamp < end), verifying every object; idempotent."
    )

    def __init__(self, tuning: Tuning = DEFAULT_TUNING) -> None:
        self.tuning = tuning

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--from", dest="start", required=True, help="first timestamp to bring back (ISO 8601)")
        parser.add_argument("--to", dest="end", required=True, help="bring back rows older than this (ISO 8601)")
        parser.add_argument(
            "--into",
            choices=["side", "source"],
            default="side",
            help="side: a table <table>_unarchived beside the source (default); source: the table "
            "itself (those rows are then not archived again)",
        )
        parser.add_argument("--side-table", help="name of the side table (default <table>_unarchived)")
        parser.add_argument(
            "--allow-rearchive",
            action="store_true",
            help="with --into source: let the next run archive the restored rows again",
        )

    def run(self, ctx: RunContext, args: argparse.Namespace) -> str:
        start, end = _date(args.start, "--from"), _date(args.end, "--to")
        if end <= start:
            raise UsageError("--to must be after --from")
        opened = open_table(ctx, self.tuning, writes_to_store=False)
        settings, conn, store, info = opened.settings, opened.conn, opened.store, opened.info
        with conn, opened.owning:
            if ctx.dry_run:
                return f"dry run: would bring back {settings.relation} rows from {args.start} to {args.end}"
            check_lag_visible(conn, settings.max_replication_lag)
            ensure_ledger(conn)
            standbys = StandbyGate(settings.max_replication_lag)
            if opened.open_iceberg is not None:
                from jobs.archive.iceberg_unarchive import unarchive_iceberg

                result = unarchive_iceberg(
                    conn,
                    opened.open_iceberg(info),
                    settings,
                    info,
                    start,
                    end,
                    into=args.into,
                    side_table=args.side_table,
                    hold=not args.allow_rearchive,
                    standbys=standbys,
                )
            else:
                result = unarchive(
                    conn,
                    store,
                    settings,
                    info,
                    start,
                    end,
                    into=args.into,
                    side_table=args.side_table,
                    hold=not args.allow_rearchive,
                    standbys=standbys,
                    identities=opened.identities,
                )
        message = (
            f"{result.rows_inserted} rows brought back into "
            f"{settings.relation if args.into == 'source' else (args.side_table or settings.table + '_unarchived')}"
            f" from {result.objects} verified objects ({result.rows_in_range} in range, "
            f"{result.rows_in_range - result.rows_inserted} already there)" + standbys.waited_note()
        )
        record = UnarchiveRecord(
            format_time(datetime.now(UTC)),
            args.start,
            args.end,
            args.into,
            result.objects,
            result.rows_inserted,
            message,
        )
        RunStatus.of(ctx, UNARCHIVE_RUNS).succeeded(Reason.UNARCHIVED, message, record)
        return message

    def record_failure(self, ctx: RunContext, error: CellarError) -> None:
        RunStatus.of(ctx, UNARCHIVE_RUNS).failed(error)
