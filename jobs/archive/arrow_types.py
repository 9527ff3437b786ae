"""Each column's Arrow type, after the kind table.py gives its PostgreSQL type, and how it leaves PostgreSQL.

The archive's files, the Iceberg schema and the manifest all hold these types; select_list makes each column's
text (COPY CSV) parse back as its type, and csv_read_type is what Arrow's CSV reader (or the ADBC driver) hands
over before encoding.py converts it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from psycopg import sql

from jobs.archive.table import Column

_ARROW_SCALARS: dict[str, Any] = {
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "string": pa.string(),
    "date32": pa.date32(),
}


def arrow_type(column: Column) -> Any:
    kind = column.arrow_kind
    if kind.startswith("list:"):
        nested = _ARROW_SCALARS.get(kind.removeprefix("list:"), pa.string())
        for _ in range(max(column.dimensions, 1)):
            nested = pa.list_(nested)
        return nested
    if kind == "struct":
        return pa.struct([pa.field(name, _ARROW_SCALARS[field_kind]) for name, field_kind in column.fields])
    if kind in ("timestamp", "timestamptz"):
        return pa.timestamp("us", tz="UTC" if kind == "timestamptz" else None)
    if kind == "decimal":
        return pa.decimal128(column.numeric_precision or 38, column.numeric_scale or 0)
    if kind == "binary":
        return pa.binary()
    return _ARROW_SCALARS[kind]


def select_list(columns: Sequence[Column]) -> sql.Composed:
    """How each column leaves PostgreSQL so that its CSV text parses back exactly."""
    parts = []
    for column in columns:
        name = sql.Identifier(column.name)
        kind = column.arrow_kind
        expression: sql.Composable
        if kind == "timestamptz":
            expression = sql.SQL("({} AT TIME ZONE 'UTC')").format(name)
        elif kind == "binary":
            expression = sql.SQL("encode({}, 'hex')").format(name)
        elif kind.startswith("list:string"):
            expression = sql.SQL("to_json({}::text[])").format(name)
        elif kind.startswith("list:") or kind == "struct":
            expression = sql.SQL("to_json({})").format(name)
        elif kind == "string" and column.base not in ("text", "varchar", "bpchar", "name"):
            expression = sql.SQL("{}::text").format(name)
        else:
            expression = name
        parts.append(sql.SQL("{} AS {}").format(expression, name))
    return sql.SQL(", ").join(parts)


def csv_read_type(column: Column) -> Any:
    """The type a column is read as from COPY CSV (or the ADBC driver), before encoding.py gives it arrow_type's."""
    kind = column.arrow_kind
    if kind in ("timestamp", "timestamptz"):
        return pa.timestamp("us")
    if kind in ("decimal", "binary", "struct") or kind.startswith("list:"):
        return pa.string()
    return arrow_type(column)


def schema_for(columns: Sequence[Column]) -> pa.Schema:
    metadata = {b"cellar.pg_types": json.dumps({c.name: c.pg_type for c in columns}).encode()}
    return pa.schema([pa.field(c.name, arrow_type(c)) for c in columns], metadata=metadata)
