"""Unarchive into a partitioned source: the partitions cellar archived whole (and dropped) are created again.

The archive run records each partition's definition (bound, sub-partitioning, children) in
cellar.archive_partitions before it detaches it (partitions.definition). Unarchive into the source:
  1. before anything is written, creates every partition it will need in a transaction it rolls back, so that
     one that cannot be created (a default partition now holds rows in its range, another partition overlaps it,
     the parent changed) refuses the run with exit 3 and a message saying what to create, and no row is loaded;
  2. creates each partition in the transaction that loads the first rows into it, and drops it again in that
     transaction when no row landed there, so a failure or a kill leaves neither rows nor an empty partition.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from common.errors import PermanentError
from common.reasons import Reason
from jobs.archive.settings import ArchiveSettings
from jobs.archive.statements import table_name
from jobs.archive.table import Connection, TableInfo

log = logging.getLogger(__name__)

_RANGE = re.compile(r"^FOR VALUES FROM \((.*)\) TO \((.*)\)$")
# What pg_get_expr writes for a partition bound and pg_get_partkeydef for a partition key: nothing else is run.
_BOUND = re.compile(r"^(FOR VALUES (FROM \(.*\) TO \(.*\)|IN \(.*\)|WITH \(modulus \d+, remainder \d+\))|DEFAULT)$")
_KEY = re.compile(r"^(RANGE|LIST|HASH) \(.*\)$")
_NAME = re.compile(r'^("([^"]|"")+"|[a-z_][a-z0-9_$]*)\.("([^"]|"")+"|[a-z_][a-z0-9_$]*)$')


@dataclass(frozen=True)
class DroppedPartition:
    """A partition cellar archived whole and dropped, and the range of timestamps it held."""

    name: str
    definition: dict[str, Any]
    lower: datetime | None  # None: MINVALUE
    upper: datetime
    kept_detached: bool = False  # its table is still there, detached (spec.partitions.keepDetached)

    def overlaps(self, low: datetime, high: datetime) -> bool:
        """Whether a row with a timestamp in [low, high] may belong here."""
        return (self.lower is None or self.lower <= high) and high >= low and self.upper > low


def _statements(parent: sql.Composable, described: dict[str, Any]) -> list[sql.Composed]:
    """CREATE TABLE statements that make `described` (partitions.definition) a partition of `parent` again."""
    name, bound, key = str(described["name"]), str(described.get("bound", "")), described.get("partitionBy")
    if not _NAME.match(name) or not _BOUND.match(bound) or (key is not None and not _KEY.match(str(key))):
        raise PermanentError(
            f"cellar.archive_partitions records partition {name!r} as {bound!r} {key or ''}, which is not a "
            "partition definition cellar wrote; create the partition by hand",
            reason=Reason.SCHEMA_MISMATCH,
        )
    statement = sql.SQL("CREATE TABLE {} PARTITION OF {} {}{}").format(
        sql.SQL(name), parent, sql.SQL(bound), sql.SQL(f" PARTITION BY {key}" if key else "")
    )
    children = [s for child in described.get("children", []) for s in _statements(sql.SQL(name), child)]
    return [statement, *children]


class Repartitioner:
    """The dropped partitions an unarchive into the source needs, created as their rows come back."""

    def __init__(self, conn: Connection, settings: ArchiveSettings, needed: list[DroppedPartition]) -> None:
        self.conn, self.settings, self.needed = conn, settings, needed

    @classmethod
    def plan(
        cls, conn: Connection, settings: ArchiveSettings, info: TableInfo, spans: Iterable[tuple[datetime, datetime]]
    ) -> Repartitioner | None:
        """For a partitioned source: the dropped partitions that rows in `spans` (closed ranges of timestamps
        about to be loaded) belong to, each checked by creating it in a transaction rolled back at once.
        None when the source is not partitioned (or cellar archived none of its partitions whole)."""
        row = conn.execute("SELECT relkind = 'p' FROM pg_class WHERE oid = %s", (info.oid,)).fetchone()
        recorded = conn.execute("SELECT to_regclass('cellar.archive_partitions') IS NOT NULL").fetchone()
        if not row or not row[0] or not recorded or not recorded[0]:
            conn.rollback()
            return None
        spans = list(spans)
        needed = [p for p in cls._dropped(conn, settings, info) if any(p.overlaps(low, high) for low, high in spans)]
        conn.rollback()
        if not needed:
            return None
        kept = next((p for p in needed if p.kept_detached), None)
        if kept is not None:
            raise PermanentError(
                f"partition {kept.name} of {settings.relation} was archived and kept detached "
                "(spec.partitions.keepDetached); attach it again before bringing its rows back: ALTER TABLE "
                f"{table_name(settings).as_string(conn)} ATTACH PARTITION {kept.name} {kept.definition['bound']}",
                reason=Reason.SCHEMA_MISMATCH,
            )
        repartitioner = cls(conn, settings, needed)
        repartitioner._check()
        log.info("partitions to create again", extra={"partitions": [p.name for p in needed]})
        return repartitioner

    @staticmethod
    def _dropped(conn: Connection, settings: ArchiveSettings, info: TableInfo) -> list[DroppedPartition]:
        conn.execute("SET LOCAL TimeZone = 'UTC'")  # a timestamp without time zone's bound reads as UTC
        rows = conn.execute(
            "SELECT p.partition, p.definition, c.relispartition FROM cellar.archive_partitions p "
            "LEFT JOIN pg_class c ON c.oid = to_regclass(p.partition) "
            "WHERE p.relation = %s AND p.state IN ('archived', 'kept') AND p.definition ? 'bound'",
            (settings.relation,),
        ).fetchall()
        found = []
        for name, described, attached in rows:
            if attached or not isinstance(described, dict):  # attached: created again already (unarchive, by hand)
                continue
            matched = _RANGE.match(str(described["bound"]))
            if matched is None:
                continue
            lower, upper = matched.groups()
            bounds = conn.execute(
                sql.SQL("SELECT {}, ({}::{})::timestamptz").format(
                    sql.SQL("NULL")
                    if "MINVALUE" in lower
                    else sql.SQL("({}::{})::timestamptz").format(
                        sql.SQL(lower), sql.SQL(info.timestamp_column.pg_type)
                    ),
                    sql.SQL(upper),
                    sql.SQL(info.timestamp_column.pg_type),
                )
            ).fetchone()
            assert bounds is not None
            lowest, highest = bounds
            assert lowest is None or isinstance(lowest, datetime)
            assert isinstance(highest, datetime)
            found.append(DroppedPartition(str(name), described, lowest, highest, attached is not None))
        return found

    def _check(self) -> None:
        """Create every needed partition and roll back: a refusal before the first row is written."""
        parent = table_name(self.settings)
        partition = self.needed[0]
        try:
            for partition in self.needed:
                for statement in _statements(parent, partition.definition):
                    self.conn.execute(statement)
        except psycopg.Error as exc:
            statements = "; ".join(s.as_string(self.conn) for s in _statements(parent, partition.definition))
            others = len(self.needed) - 1
            raise PermanentError(
                f"cannot create partition {partition.name} of {self.settings.relation} again, which cellar archived "
                f"whole and dropped ({type(exc).__name__}: {exc.diag.message_primary or exc}); nothing was loaded. "
                "Make room for it (a default partition holding rows of its range, or a partition overlapping it, "
                f"stops it) and run unarchive again, or create it yourself: {statements}"
                + (f"; {others} more partitions come back with it (cellar.archive_partitions)" if others else ""),
                reason=Reason.SCHEMA_MISMATCH,
            ) from None
        finally:
            self.conn.rollback()

    def create_for(self, low: datetime, high: datetime) -> list[DroppedPartition]:
        """In the current transaction: the needed partitions rows in [low, high] belong to that do not exist
        yet, created. Returns them, for `drop_empty` once the rows are in."""
        parent = table_name(self.settings)
        created = []
        for partition in self.needed:
            if not partition.overlaps(low, high):
                continue
            exists = self.conn.execute("SELECT to_regclass(%s) IS NOT NULL", (partition.name,)).fetchone()
            if exists and exists[0]:
                continue
            for statement in _statements(parent, partition.definition):
                self.conn.execute(statement)
            created.append(partition)
        return created

    def drop_empty(self, created: list[DroppedPartition]) -> list[str]:
        """In the same transaction: the partitions `create_for` made that no row landed in, dropped again."""
        kept = []
        for partition in created:
            empty = self.conn.execute(sql.SQL("SELECT NOT EXISTS (SELECT FROM {})").format(sql.SQL(partition.name)))
            found = empty.fetchone()
            if found and found[0]:
                self.conn.execute(sql.SQL("DROP TABLE {}").format(sql.SQL(partition.name)))
            else:
                kept.append(partition.name)
        return kept
