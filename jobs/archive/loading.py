"""Loading archived rows back into a table, one object (or Iceberg data file) per transaction: staged in a temporary
table, checked against the count its manifest gives, inserted where the target lacks them (ON CONFLICT DO
NOTHING, so a run again after a failure loads what is missing), held from the next archive run when they go back
into the source. Shared by unarchive from Parquet objects (unarchive.py) and from Iceberg (iceberg_unarchive.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import psycopg
import pyarrow as pa
from psycopg import sql

from common.errors import InvalidSpec, PermanentError
from common.progress import ProgressReporter
from common.reasons import Reason
from jobs.archive.encoding import table_to_copy_csv
from jobs.archive.repartition import DroppedPartition, Repartitioner
from jobs.archive.settings import ArchiveSettings
from jobs.archive.standbys import StandbyGate
from jobs.archive.statements import table_name
from jobs.archive.table import Column, Connection, TableInfo

log = logging.getLogger(__name__)
_SAFE_TYPE = set('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ ,()."[]')


def _checked_type(pg_type: str, key: str) -> sql.SQL:
    # Types come from manifests in the bucket: refuse anything that is not a type name before using it as SQL.
    if not pg_type or not set(pg_type) <= _SAFE_TYPE or ";" in pg_type or "--" in pg_type:
        raise PermanentError(
            f"manifest {key}: column type {pg_type!r} is not a PostgreSQL type name", reason=Reason.INVALID_MANIFEST
        )
    return sql.SQL(pg_type)


@dataclass(frozen=True)
class UnarchiveRequest:
    """One unarchive: the table's connection, settings and description, the range start <= timestamp < end, where
    the rows go (`side`: a table beside the source; `source`: the table itself), and how."""

    conn: Connection
    settings: ArchiveSettings
    info: TableInfo
    start: datetime
    end: datetime
    into: str = "side"
    side_table: str | None = None
    hold: bool = True  # into the source: the next archive runs leave these rows alone
    standbys: StandbyGate | None = None  # each object waits for them: loading rows back is WAL to replay too
    progress_seconds: float = 10.0  # at most one progress line this often (Tuning.progress_log_seconds)

    def __post_init__(self) -> None:
        if self.into not in ("side", "source"):
            raise InvalidSpec(f"--into must be side or source, not {self.into!r}")

    @property
    def target_name(self) -> str:
        if self.into == "source":
            return self.settings.relation
        return self.side_table or f"{self.settings.table}_unarchived"

    def wait_for_standbys(self) -> None:
        if self.standbys is not None:
            self.standbys.wait(self.conn, lambda: False)  # SIGTERM interrupts the wait (it is not deferred here)


@dataclass(frozen=True)
class LoadTarget:
    """Where loaded rows go: the table, whether they are held, and the partitions made again for them."""

    table: sql.Composed
    hold: bool
    repartition: Repartitioner | None = None


@dataclass
class UnarchiveResult:
    objects: int = 0
    rows_read: int = 0
    rows_inserted: int = 0
    rows_in_range: int = 0

    def add(self, read: int, inserted: int, in_range: int) -> None:
        self.objects += 1
        self.rows_read += read
        self.rows_inserted += inserted
        self.rows_in_range += in_range


class LoadProgress:
    """How far an unarchive is: a `progress` log line at most every `interval` seconds (rows done of the total, their
    rate and ETA, with bytes and objects done beside), and a summary at the end, instead of a line per object."""

    def __init__(self, objects: int, rows: int, stored_bytes: int, interval: float) -> None:
        self.rows = ProgressReporter("rows", rows, None, log_interval=interval)
        self.totals = {"objectsTotal": objects, "bytesTotal": stored_bytes}
        self.objects = self.bytes = self.inserted = 0

    def loaded(self, rows: int, stored_bytes: int, inserted: int) -> None:
        self.objects += 1
        self.bytes += stored_bytes
        self.inserted += inserted
        detail = {"objects": self.objects, "bytes": self.bytes, **self.totals}
        self.rows.update(self.rows.done + rows, detail)

    def summary(self, target: str) -> None:
        seconds = max(1e-6, self.rows.clock() - self.rows.started)
        log.info(
            "unarchive summary",
            extra={
                "into": target,
                "objects": self.objects,
                "rows": self.rows.done,
                "inserted": self.inserted,
                "bytes": self.bytes,
                "seconds": round(seconds, 3),
                "rows_per_second": round(self.rows.done / seconds, 1),
            },
        )


@dataclass(frozen=True)
class LoadedPiece:
    """What one transaction of an unarchive loads: an object (or an Iceberg data file) and its rows' count."""

    key: str
    rows: int


def prepare_target(request: UnarchiveRequest, repartition: Repartitioner | None = None) -> LoadTarget:
    """The table the rows go to, made (LIKE the source) when it is a side table that does not exist yet;
    committed, so a failure later keeps it for the next try."""
    settings = request.settings
    if request.into == "source":
        target = table_name(settings)
    else:
        name = request.side_table or f"{settings.table}_unarchived"
        target = sql.SQL("{}.{}").format(sql.Identifier(settings.schema), sql.Identifier(name))
        request.conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} (LIKE {} INCLUDING ALL)").format(target, table_name(settings))
        )
    request.conn.commit()
    return LoadTarget(target, request.hold and request.into == "source", repartition)


def load_rows(
    request: UnarchiveRequest, target: LoadTarget, piece: LoadedPiece, columns: list[Column], rows: pa.Table
) -> tuple[int, int]:
    """Stage `rows`, insert those in the request's range that the target lacks; (inserted, in range). The caller
    commits."""
    conn, info = request.conn, request.info
    conversions = _stage(conn, piece, columns, rows)
    ts = sql.Identifier(info.timestamp_column.name)
    in_range_condition = sql.SQL("s.{} >= {} AND s.{} < {}").format(
        ts, sql.Literal(request.start), ts, sql.Literal(request.end)
    )
    in_range = conn.execute(
        sql.SQL("SELECT count(*) FROM cellar_staging s WHERE {}").format(in_range_condition)
    ).fetchone()
    created = _partitions_for(conn, target, ts, in_range_condition)
    inserted = _insert(request, target, piece.key, columns, conversions, in_range_condition)
    if created:
        assert target.repartition is not None
        log.info("partitions created again", extra={"partitions": target.repartition.drop_empty(created)})
    if target.hold:
        conn.execute(
            sql.SQL(
                "INSERT INTO cellar.archive_holds (relation, key) SELECT {}, ROW({})::text FROM cellar_staging s "
                "WHERE {} ON CONFLICT DO NOTHING"
            ).format(
                sql.Literal(request.settings.relation),
                sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(k)) for k in info.primary_key),
                in_range_condition,
            )
        )
    return inserted, int(str(in_range[0])) if in_range else 0


def _stage(conn: Connection, piece: LoadedPiece, columns: list[Column], rows: pa.Table) -> list[sql.Composable]:
    """`rows` in a temporary table dropped at COMMIT, checked against the piece's count; how each column goes
    from there into the target (arrays and composites are staged as text and cast back)."""
    staging_columns: list[sql.Composable] = []
    conversions: list[sql.Composable] = []
    for column in columns:
        name = sql.Identifier(column.name)
        pg_type = _checked_type(column.pg_type, piece.key)
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
        copy.write(table_to_copy_csv(rows.select([c.name for c in columns]), [c.name for c in columns if c.is_array]))
    staged = conn.execute("SELECT count(*) FROM cellar_staging").fetchone()
    if not staged or int(str(staged[0])) != piece.rows:
        raise PermanentError(
            f"{piece.key}: staged {staged[0] if staged else 0} rows, the manifest says {piece.rows}",
            reason=Reason.VERIFICATION_FAILED,
        )
    return conversions


def _partitions_for(
    conn: Connection, target: LoadTarget, ts: sql.Identifier, in_range_condition: sql.Composable
) -> list[DroppedPartition]:
    """The dropped partitions the staged rows in range go to, made again in their transaction."""
    if target.repartition is None:
        return []
    span = conn.execute(
        sql.SQL("SELECT min(s.{0})::timestamptz, max(s.{0})::timestamptz FROM cellar_staging s WHERE {1}").format(
            ts, in_range_condition
        )
    ).fetchone()
    if span is None or not isinstance(span[0], datetime) or not isinstance(span[1], datetime):
        return []
    return target.repartition.create_for(span[0], span[1])


def _insert(
    request: UnarchiveRequest,
    target: LoadTarget,
    key: str,
    columns: list[Column],
    conversions: list[sql.Composable],
    in_range_condition: sql.Composable,
) -> int:
    """INSERT the staged rows in range that the target lacks; how many went in."""
    # A generated column's archived value is what the table computes again, and PostgreSQL refuses one
    # given; an identity column GENERATED ALWAYS takes the archived key only with OVERRIDING SYSTEM VALUE.
    stored = [(c, conversion) for c, conversion in zip(columns, conversions, strict=True) if not c.generated]
    inserted_names = sql.SQL(", ").join(sql.Identifier(c.name) for c, _ in stored)
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in request.info.primary_key)
    try:
        cursor = request.conn.execute(
            sql.SQL(
                "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM cellar_staging s WHERE {} "
                "ON CONFLICT ({}) DO NOTHING"
            ).format(target.table, inserted_names, sql.SQL(", ").join(c for _, c in stored), in_range_condition, keys)
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
    return cursor.rowcount
