"""What the archiver needs to know about a table: columns and their types, key, safety checks.

Identifiers are always passed through `psycopg.sql.Identifier`; nothing from the spec is pasted
into SQL except the filter, which the CRD documents as trusted SQL.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from common.errors import ForeignKeyBlocked, InsufficientPrivilege, InvalidSpec
from jobs.archive.settings import ArchiveSettings

Connection = psycopg.Connection[tuple[object, ...]]

# PostgreSQL types with a native Arrow counterpart; everything else travels as its text form.
NATIVE = {
    "int2": "int16",
    "int4": "int32",
    "int8": "int64",
    "float4": "float32",
    "float8": "float64",
    "bool": "bool",
    "text": "string",
    "varchar": "string",
    "bpchar": "string",
    "name": "string",
    "date": "date32",
    "timestamp": "timestamp",
    "timestamptz": "timestamptz",
    "numeric": "decimal",
    "bytea": "binary",
    "uuid": "string",
    "json": "string",
    "jsonb": "string",
}
LIST_ELEMENTS = {"int2", "int4", "int8", "float4", "float8", "bool", "text", "varchar", "bpchar"}
TIMESTAMP_TYPES = {"timestamp", "timestamptz", "date"}


@dataclass(frozen=True)
class Column:
    name: str
    pg_type: str  # format_type(): what a restore casts back to, e.g. numeric(12,4), mood, integer[]
    base: str  # pg_type.typname of the column (or of the array's element for arrays)
    is_array: bool
    numeric_precision: int | None
    numeric_scale: int | None
    # pg_attribute.attgenerated: "" for an ordinary column, "s" stored, "v" virtual (PostgreSQL 18's
    # default). Its values are archived; a load back leaves it out and the table computes it again.
    generated: str = ""
    # For arrays: the dimensions of the values due (statements.with_array_dimensions); a Parquet list nests
    # that deep. PostgreSQL keeps no dimensions in a column's type: an integer[] may hold {{1,2},{3,4}}.
    dimensions: int = 1
    # A composite type whose fields are all scalars: (field, kind) pairs, stored as a Parquet struct.
    fields: tuple[tuple[str, str], ...] = ()

    @property
    def arrow_kind(self) -> str:
        """How the column is stored: a key of NATIVE's values, `list:<elem>`, `struct`, or `string`."""
        if self.fields:
            return "struct"
        if self.is_array:
            return f"list:{NATIVE[self.base]}" if self.base in LIST_ELEMENTS else "list:string"
        kind = NATIVE.get(self.base, "string")
        if kind == "decimal" and (self.numeric_precision is None or self.numeric_precision > 38):
            return "string"  # unconstrained (or too wide) numeric: exact text, never rounded
        return kind


@dataclass(frozen=True)
class TableInfo:
    oid: int
    columns: list[Column]
    primary_key: tuple[str, ...]
    timestamp_column: Column
    # An ordinary table without inheritance children: a row's ctid names it uniquely, so a batch can
    # delete the rows it locked by ctid. Partitioned and inherited tables are deleted by primary key.
    plain: bool = False
    server_version: str = ""

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)


_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod),
       CASE WHEN t.typcategory = 'A' THEN et.typname ELSE t.typname END,
       t.typcategory = 'A',
       CASE WHEN a.atttypid = 'numeric'::regtype AND a.atttypmod > 0 THEN ((a.atttypmod - 4) >> 16) & 65535 END,
       CASE WHEN a.atttypid = 'numeric'::regtype AND a.atttypmod > 0 THEN (a.atttypmod - 4) & 65535 END,
       a.attgenerated::text,
       CASE WHEN t.typtype = 'c' THEN t.typrelid END
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

# A composite's fields; one that is an array, a composite, or JSON makes the whole value travel as text.
_FIELDS = """
SELECT a.attname, t.typname, t.typtype IN ('b', 'e', 'r', 'm', 'd') AND t.typcategory <> 'A'
       AND t.typname NOT IN ('json', 'jsonb')
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
"""
STRUCT_FIELD_KINDS = ("int16", "int32", "int64", "float32", "float64", "bool")

_PRIMARY_KEY = """
SELECT a.attname FROM pg_index i
JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position) ON true
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.position
"""

_CASCADING_REFERENCES = """
SELECT format('%%I.%%I', n.nspname, c.relname), con.conname
FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE con.contype = 'f' AND con.confrelid = %s AND con.confdeltype = 'c'
"""


def composite_fields(conn: Connection, relid: int) -> tuple[tuple[str, str], ...]:
    """A flat composite's fields and how each is stored (a number or boolean natively, else its exact text);
    () when a field is itself an array, a composite or JSON: the value then travels as its text."""
    rows = conn.execute(_FIELDS, (relid,)).fetchall()
    if not rows or not all(bool(r[2]) for r in rows):
        return ()
    kinds = [NATIVE.get(str(r[1]), "string") for r in rows]
    return tuple(
        (str(r[0]), kind if kind in STRUCT_FIELD_KINDS else "string") for r, kind in zip(rows, kinds, strict=True)
    )


def describe_table(conn: Connection, settings: ArchiveSettings) -> TableInfo:
    """Look the table up by its quoted name and check that the spec fits it."""
    qualified = sql.SQL("{}.{}").format(sql.Identifier(settings.schema), sql.Identifier(settings.table))
    row = conn.execute(sql.SQL("SELECT to_regclass({})::oid").format(sql.Literal(qualified.as_string(conn)))).fetchone()
    if row is None or row[0] is None:
        raise InvalidSpec(f"spec.table: table {settings.relation!r} does not exist (names are case-sensitive)")
    oid = int(str(row[0]))
    kind = conn.execute("SELECT relkind = 'r' AND NOT relhassubclass FROM pg_class WHERE oid = %s", (oid,)).fetchone()
    columns = [
        Column(
            str(r[0]),
            str(r[1]),
            str(r[2]),
            bool(r[3]),
            int(str(r[4])) if r[4] is not None else None,
            int(str(r[5])) if r[5] is not None else None,
            str(r[6] or ""),
            fields=composite_fields(conn, int(str(r[7]))) if r[7] is not None else (),
        )
        for r in conn.execute(_COLUMNS, (oid,)).fetchall()
    ]
    names = {c.name for c in columns}
    primary_key = settings.primary_key or tuple(str(r[0]) for r in conn.execute(_PRIMARY_KEY, (oid,)).fetchall())
    if not primary_key:
        raise InvalidSpec(
            f"spec.primaryKey: table {settings.relation!r} has no primary key; name the columns that "
            "identify a row uniquely"
        )
    missing = [c for c in (*primary_key, settings.timestamp_column) if c not in names]
    if missing:
        raise InvalidSpec(f"spec: table {settings.relation!r} has no column {', '.join(map(repr, missing))}")
    timestamp = next(c for c in columns if c.name == settings.timestamp_column)
    if timestamp.is_array or timestamp.base not in TIMESTAMP_TYPES:
        raise InvalidSpec(
            f"spec.timestampColumn: {timestamp.name!r} is {timestamp.pg_type}; it must be timestamp, "
            "timestamptz or date"
        )
    if settings.primary_key:
        unique = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL "
            "AND (SELECT array_agg(a.attname ORDER BY a.attname) FROM pg_attribute a "
            "WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)) = (SELECT array_agg(x ORDER BY x) "
            "FROM unnest(%s::text[]) x)::name[])",
            (oid, list(primary_key)),
        ).fetchone()
        if not unique or not unique[0]:
            raise InvalidSpec(f"spec.primaryKey: no unique index on ({', '.join(primary_key)}); ON CONFLICT needs one")
    return TableInfo(
        oid=oid,
        columns=columns,
        primary_key=primary_key,
        timestamp_column=timestamp,
        plain=bool(kind and kind[0]),
        server_version=conn.info.parameter_status("server_version") or "",  # reported by libpq at login
    )


def check_cascades(conn: Connection, info: TableInfo, settings: ArchiveSettings) -> None:
    """Refuse a table that others reference with ON DELETE CASCADE: deleting its rows would delete theirs."""
    if settings.mode == "Copy" or settings.allow_cascade:
        return
    references = conn.execute(_CASCADING_REFERENCES, (info.oid,)).fetchall()
    if references:
        listed = ", ".join(f"{r[0]} ({r[1]})" for r in references)
        raise ForeignKeyBlocked(
            f"{settings.relation} is referenced with ON DELETE CASCADE by {listed}: archiving would delete their "
            "rows without archiving them. Archive those tables first, or set spec.allowCascade: true"
        )


def check_privileges(conn: Connection, info: TableInfo, settings: ArchiveSettings) -> None:
    """Refuse before any work when the connecting role lacks a privilege the run needs, naming the GRANT.

    Move mode locks the rows it deletes (FOR UPDATE), which PostgreSQL allows only with UPDATE too.
    """
    needed = ["SELECT"] if settings.mode == "Copy" else ["SELECT", "UPDATE", "DELETE"]
    checks = sql.SQL(", ").join(
        sql.SQL("has_table_privilege({}::oid, {})").format(sql.Literal(info.oid), sql.Literal(p)) for p in needed
    )
    row = conn.execute(
        sql.SQL(
            "SELECT current_user, current_database(), {}, "
            "to_regnamespace('cellar') IS NOT NULL OR has_database_privilege(current_database(), 'CREATE')"
        ).format(checks)
    ).fetchone()
    conn.rollback()
    assert row is not None
    user, database, *granted, can_keep_ledger = row
    missing = [p for p, ok in zip(needed, granted, strict=True) if not ok]
    if missing:
        why = " (UPDATE for the row locks of FOR UPDATE)" if "UPDATE" in missing else ""
        raise InsufficientPrivilege(
            f"role {user} lacks {', '.join(missing)} on {settings.relation}; a {settings.mode} run needs "
            f"{', '.join(needed)}{why}: GRANT {', '.join(missing)} ON {settings.relation} TO {user}"
        )
    if not can_keep_ledger:
        raise InsufficientPrivilege(
            f"role {user} cannot create the schema cellar (the ledger) in database {database}: "
            f"GRANT CREATE ON DATABASE {database} TO {user}, or create the schema cellar for it once"
        )


# A batch finds its rows through an index that starts with the timestamp column. Without one, each batch
# reads the whole table and sorts the due rows: fine for a small table, minutes per batch on a large one.

_TIMESTAMP_INDEX = """
WITH tables AS (
    SELECT %(oid)s::oid AS relid, true AS named
    UNION ALL
    SELECT inhrelid, false FROM pg_inherits WHERE inhparent = %(oid)s
), indexed AS (
    SELECT t.relid, t.named, EXISTS (
        SELECT 1 FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_am am ON am.oid = ic.relam AND am.amname = 'btree'
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = t.relid AND a.attname = %(column)s AND (i.indisvalid OR ic.relkind = 'I')
    ) AS has_index
    FROM tables t
)
SELECT bool_or(named AND has_index) OR (count(*) > 1 AND bool_and(has_index OR named)),
       coalesce(sum(pg_table_size(relid)), 0)
FROM indexed
"""


def unindexed_timestamp_warning(
    conn: Connection, info: TableInfo, settings: ArchiveSettings, warn_from_bytes: int
) -> str | None:
    """What to do when no btree index starts with the timestamp column (on the table, or on each of its
    partitions or children) and the table is at least `warn_from_bytes`; None when all is well."""
    column = info.timestamp_column.name
    row = conn.execute(_TIMESTAMP_INDEX, {"oid": info.oid, "column": column}).fetchone()
    conn.rollback()
    indexed, size = (bool(row[0]), int(str(row[1]))) if row else (True, 0)
    if indexed or size < warn_from_bytes:
        return None
    create = sql.SQL("CREATE INDEX CONCURRENTLY ON {}.{} ({})").format(
        sql.Identifier(settings.schema), sql.Identifier(settings.table), sql.Identifier(column)
    )
    return (
        f"{settings.relation} ({size // (1024 * 1024)} MiB) has no index that starts with {column!r}: every batch "
        f"reads the whole table to find its rows. Create one before archiving: {create.as_string(conn)};"
    )


_TIMESTAMP_STATISTICS = """
SELECT coalesce(bool_and(c.reltuples = 0 OR EXISTS (
    SELECT 1 FROM pg_stats s WHERE s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = %(column)s
)), false)
FROM (
    SELECT relid FROM pg_partition_tree(%(oid)s::oid::regclass) WHERE isleaf
    UNION ALL  -- a table that is not partitioned has no partition tree: it is its own leaf
    SELECT %(oid)s::oid WHERE NOT EXISTS (SELECT FROM pg_partition_tree(%(oid)s::oid::regclass))
) leaf
JOIN pg_class c ON c.oid = leaf.relid
JOIN pg_namespace n ON n.oid = c.relnamespace
"""


def has_timestamp_statistics(conn: Connection, info: TableInfo) -> bool:
    """Whether ANALYZE (or autovacuum) has gathered statistics on the timestamp column of the table, or of
    every partition of a partitioned one: without them the planner guesses a third of the rows for `ts < x`.
    A partition ANALYZE found empty (reltuples 0; -1 is never analyzed) has none to gather: pg_partman and
    most schemes create partitions ahead of their time."""
    row = conn.execute(_TIMESTAMP_STATISTICS, {"oid": info.oid, "column": info.timestamp_column.name}).fetchone()
    return bool(row and row[0])
