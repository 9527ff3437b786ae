"""Rows between PostgreSQL and files: COPY CSV -> typed Arrow -> Parquet (or gzip CSV), and back.

The batch statement streams its rows as CSV (`COPY (DELETE ... RETURNING ...) TO STDOUT`), which
Arrow's C++ CSV reader parses fast; columns whose text form Arrow cannot parse directly (decimals,
bytea, arrays, timestamptz) are converted afterwards. Every column's PostgreSQL type travels with the
file (Parquet metadata and the manifest), so a restore casts each value back exactly.
Each column's Arrow type, and the text it leaves PostgreSQL as, are arrow_types.py's.
"""

from __future__ import annotations

import gzip
import io
import json
import math
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from common.errors import PermanentError
from common.reasons import Reason
from jobs.archive.arrow_types import arrow_type, csv_read_type, schema_for
from jobs.archive.table import Column


def csv_to_table(data: bytes | bytearray, columns: Sequence[Column]) -> pa.Table:
    """Parse `COPY ... (FORMAT csv)` output into an Arrow table typed after `columns`."""
    names = [c.name for c in columns]
    if not data:
        return schema_for(columns).empty_table()
    try:
        table = pacsv.read_csv(
            pa.BufferReader(pa.py_buffer(data)),  # no copy of the batch's text
            # One batch is a few MB: parsed on the calling thread, it does not queue behind the Parquet
            # encoding that shares Arrow's thread pool (two threads on a two-core node).
            read_options=pacsv.ReadOptions(column_names=names, block_size=64 * 1024 * 1024, use_threads=False),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types={c.name: csv_read_type(c) for c in columns},
                true_values=["t"],
                false_values=["f"],
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
                timestamp_parsers=[pacsv.ISO8601],  # PostgreSQL's ISO DateStyle, with or without fractions
            ),
        )
    except pa.ArrowInvalid as exc:
        raise PermanentError(
            f"a value cannot be stored in Parquet as its column's type: {exc}", reason=Reason.ENCODING_FAILED
        ) from exc
    return _typed(table.columns, columns)


def _typed(arrays: Sequence[Any], columns: Sequence[Column]) -> pa.Table:
    """The columns as read (each of csv_read_type's type) as an Arrow table typed after `columns`."""
    finished = [_finish(column, array) for column, array in zip(columns, arrays, strict=True)]
    return pa.Table.from_arrays(finished, schema=schema_for(columns))


# The years a timestamp or date may have: what PostgreSQL prints with four digits and no era, which the CSV
# reader parses. infinity, BC and years past 9999 are refused alike on both paths.
_LOWEST_MICROSECOND = -62_135_596_800_000_000  # 0001-01-01 00:00:00
_HIGHEST_MICROSECOND = 253_402_300_799_999_999  # 9999-12-31 23:59:59.999999
_LOWEST_DAY, _HIGHEST_DAY = -719_162, 2_932_896  # 0001-01-01 and 9999-12-31 in days from 1970-01-01


def arrow_to_table(table: pa.Table, columns: Sequence[Column]) -> pa.Table:
    """Rows of `SELECT select_list(columns)` as the ADBC PostgreSQL driver returns them (COPY in binary),
    typed after `columns` exactly as csv_to_table types the same rows read as CSV.

    The driver wraps some types (numeric, json) in extension types over strings: their strings are what COPY
    CSV would send. Any other type than csv_to_table's reader would have produced raises PermanentError;
    `arrow_reads.readable` asks for that before a run reads a row."""
    arrays = []
    for column, received in zip(columns, table.columns, strict=True):
        array = received
        if isinstance(array.type, pa.BaseExtensionType):
            array = pa.chunked_array([chunk.storage for chunk in array.chunks], type=array.type.storage_type)
        expected = csv_read_type(column)
        if array.type != expected:
            raise PermanentError(
                f"column {column.name!r} ({column.pg_type}) arrived as {array.type} from the server, not as {expected}",
                reason=Reason.ENCODING_FAILED,
            )
        _check_years(column, array)
        arrays.append(array)
    return _typed(arrays, columns)


def _check_years(column: Column, array: Any) -> None:
    """The binary COPY hands over infinity and BC values that the CSV path refuses: refuse them too."""
    if array.null_count == len(array):
        return
    if pa.types.is_timestamp(array.type):
        low, high = _LOWEST_MICROSECOND, _HIGHEST_MICROSECOND
        bounds = pc.min_max(array.cast(pa.int64()))
    elif pa.types.is_date32(array.type):
        low, high = _LOWEST_DAY, _HIGHEST_DAY
        bounds = pc.min_max(pa.chunked_array([chunk.view(pa.int32()) for chunk in array.chunks], type=pa.int32()))
    else:
        return
    if bounds["min"].as_py() < low or bounds["max"].as_py() > high:
        raise PermanentError(
            f"column {column.name!r} ({column.pg_type}) holds a value outside the years 1 to 9999 (infinity, or "
            "a date BC), which Parquet readers cannot hold; filter those rows out (spec.filter) or change them",
            reason=Reason.ENCODING_FAILED,
        )


def _finish(column: Column, array: Any) -> Any:
    kind = column.arrow_kind
    target = arrow_type(column)
    if kind == "timestamptz":
        return array.cast(target)  # naive UTC wall time -> the same instant, marked UTC
    if kind == "decimal":
        try:
            return array.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise PermanentError(
                f"column {column.name!r} ({column.pg_type}) holds a value that is not a decimal "
                f"(NaN or Infinity?): {exc}",
                reason=Reason.ENCODING_FAILED,
            ) from exc
    if kind == "binary":
        return pa.array([None if v is None else bytes.fromhex(v) for v in array.to_pylist()], type=target)
    if kind == "struct":
        return _structs(column, array, target)
    if kind.startswith("list:"):
        values = [None if v is None else json.loads(v) for v in array.to_pylist()]
        if kind in ("list:float32", "list:float64"):  # to_json writes Infinity and NaN as strings
            values = [_special_floats(v) for v in values]
        if any(value and _depth(value) != column.dimensions for value in values):
            # Checked for the rows due before the first batch (with_array_dimensions): only a row written
            # into the range since then gets here, and its batch rolls back.
            raise PermanentError(
                f"column {column.name!r} ({column.pg_type}) holds an array of other dimensions than the "
                f"{column.dimensions} the run found before it started; the next run looks again",
                reason=Reason.ENCODING_FAILED,
            )
        return _typed_array(column, values, target)
    return array


def _typed_array(column: Column, values: list[Any], target: Any) -> Any:
    """`values` as an Arrow array of the column's type; a value that does not fit fails its batch clearly."""
    try:
        return pa.array(values, type=target)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise PermanentError(
            f"column {column.name!r} ({column.pg_type}) holds a value its Parquet type cannot: {exc}",
            reason=Reason.ENCODING_FAILED,
        ) from exc


def _structs(column: Column, array: Any, target: Any) -> Any:
    """to_json's objects as struct values: numbers and booleans as they are, every other field as its exact
    text (a numeric keeps its digits: JSON numbers are read as Decimal)."""
    values: list[dict[str, Any] | None] = []
    for text in array.to_pylist():
        if text is None:
            values.append(None)
            continue
        record = json.loads(text, parse_float=Decimal)
        value: dict[str, Any] = {}
        for name, kind in column.fields:
            field = record.get(name)
            if field is None or kind in ("int16", "int32", "int64", "bool"):
                value[name] = field
            elif kind in ("float32", "float64"):
                value[name] = _SPECIAL_FLOATS.get(field, field) if isinstance(field, str) else float(field)
            else:
                value[name] = field if isinstance(field, str) else str(field)
        values.append(value)
    return _typed_array(column, values, target)


def struct_as_json(value: dict[str, Any]) -> str:
    """A struct value as the JSON jsonb_populate_record reads: non-finite floats as PostgreSQL spells them."""
    return json.dumps({k: _json_float(v) if isinstance(v, float) else v for k, v in value.items()})


def _json_float(value: float) -> Any:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


_SPECIAL_FLOATS = {"Infinity": float("inf"), "-Infinity": float("-inf"), "NaN": float("nan")}


def _special_floats(value: Any) -> Any:
    if isinstance(value, list):
        return [_special_floats(v) for v in value]
    return _SPECIAL_FLOATS.get(value, value) if isinstance(value, str) else value


def _depth(value: Any) -> int:
    """How deep a (non-empty) nested list goes: a PostgreSQL array's elements all sit at one depth."""
    depth = 0
    while isinstance(value, list) and value:
        depth, value = depth + 1, value[0]
    return depth


def pg_array_literal(value: list[Any]) -> str:
    """A nested list as PostgreSQL's array text ({{1,2},{3,4}}, quoted strings), which casts back exactly."""
    return "{" + ",".join(_pg_array_element(v) for v in value) + "}"


def _pg_array_element(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return pg_array_literal(value)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int | float | Decimal):
        return repr(value) if isinstance(value, float) else str(value)  # repr: the shortest exact float
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


DICTIONARY_SAMPLE_ROWS = 1000


def repeating_columns(table: pa.Table) -> list[str]:
    """Columns whose values repeat, judged on the first rows: at most one distinct value in two.

    Dictionary encoding shrinks those (a status, a country, a tenant id); on mostly distinct values
    (ids, timestamps, free text, JSON) it costs about 40% more encoding time and makes files larger.
    """
    sample = table.slice(0, DICTIONARY_SAMPLE_ROWS)
    return [
        field.name
        for field, column in zip(table.schema, sample.columns, strict=True)
        if not pa.types.is_nested(field.type) and pc.count_distinct(column).as_py() * 2 <= sample.num_rows
    ]


def encode(table: pa.Table, file_format: str, dictionary_columns: list[str] | None = None) -> bytes:
    """One file. dictionary_columns: which columns to dictionary-encode (default: repeating_columns)."""
    if file_format == "Parquet":
        # An Arrow buffer, not io.BytesIO: each of the writer's writes to a Python file object takes the
        # GIL, which the lanes' threads and the other uploads contend for.
        sink = pa.BufferOutputStream()
        columns = repeating_columns(table) if dictionary_columns is None else dictionary_columns
        pq.write_table(table, sink, compression="zstd", use_dictionary=columns)
        body: bytes = sink.getvalue().to_pybytes()
        return body
    text = io.BytesIO()
    pacsv.write_csv(_structs_as_json(_lists_as_json(_binary_as_hex(table))), text)
    return gzip.compress(text.getvalue(), compresslevel=6)


def decode(data: bytes, file_format: str, columns: Sequence[Column]) -> pa.Table:
    if file_format == "Parquet":
        return pq.read_table(io.BytesIO(data))
    text = gzip.decompress(data)
    names = [c.name for c in columns]
    # Every column as text: COPY FROM into the staging table casts each one to its column type.
    return pacsv.read_csv(
        io.BytesIO(text),
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names}, strings_can_be_null=True, quoted_strings_can_be_null=False
        ),
    )


def _binary_as_hex(table: pa.Table) -> pa.Table:
    for index, field in enumerate(table.schema):
        if pa.types.is_binary(field.type):
            values = [None if v is None else "\\x" + v.hex() for v in table.column(index).to_pylist()]
            table = table.set_column(index, field.name, pa.array(values, type=pa.string()))
    return table


def _lists_as_json(table: pa.Table) -> pa.Table:
    for index, field in enumerate(table.schema):
        if pa.types.is_list(field.type):
            values = [
                None if v is None else json.dumps(v, default=_json_default) for v in table.column(index).to_pylist()
            ]
            table = table.set_column(index, field.name, pa.array(values, type=pa.string()))
    return table


def _structs_as_json(table: pa.Table) -> pa.Table:
    for index, field in enumerate(table.schema):
        if pa.types.is_struct(field.type):
            values = [None if v is None else struct_as_json(v) for v in table.column(index).to_pylist()]
            table = table.set_column(index, field.name, pa.array(values, type=pa.string()))
    return table


def _arrays_as_pg_text(table: pa.Table, array_columns: Sequence[str]) -> pa.Table:
    for index, field in enumerate(table.schema):
        if field.name not in array_columns and not pa.types.is_list(field.type):
            continue
        values = table.column(index).to_pylist()
        if not pa.types.is_list(field.type):  # a CSV-format file holds the JSON text of each array
            values = [None if v is None else json.loads(v) for v in values]
        texts = [None if v is None else pg_array_literal(v) for v in values]
        table = table.set_column(index, field.name, pa.array(texts, type=pa.string()))
    return table


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


def table_to_copy_csv(table: pa.Table, array_columns: Sequence[str] = ()) -> bytes:
    """CSV for `COPY staging FROM STDIN (FORMAT csv)`: arrays (lists, or the JSON text of a CSV-format file)
    as PostgreSQL array text at any depth, bytea as \\x hex."""
    prepared = _structs_as_json(_arrays_as_pg_text(_binary_as_hex(table), array_columns))
    # Timestamps without zone must not gain a 'Z'; tz-aware ones print with it, which PostgreSQL reads.
    buffer = io.BytesIO()
    pacsv.write_csv(prepared, buffer, write_options=pacsv.WriteOptions(include_header=False))
    return buffer.getvalue()


def key_range(table: pa.Table, key: str) -> tuple[str | None, str | None]:
    if table.num_rows == 0:
        return None, None
    bounds = pc.min_max(table.column(key))
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    return (None if low is None else str(low)), (None if high is None else str(high))
