"""Bringing rows back from an archive's Iceberg table: the range pushed down to PyIceberg's scan as a row filter (the
partitions and files outside it are never read), each planned data file loaded in a transaction of its own with
unarchive's staging and INSERT ... ON CONFLICT DO NOTHING, so a run again after a failure loads what is missing."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from common.errors import PermanentError
from common.reasons import Reason
from jobs.archive.arrow_types import schema_for
from jobs.archive.iceberg import IcebergTable
from jobs.archive.loading import LoadedPiece, LoadProgress, UnarchiveRequest, UnarchiveResult, load_rows, prepare_target
from jobs.archive.repartition import Repartitioner
from jobs.archive.table import Column

log = logging.getLogger(__name__)
FIELD_ID = b"PARQUET:field_id"


def _depth(arrow_type: pa.DataType) -> int:
    depth = 0
    while pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        depth, arrow_type = depth + 1, arrow_type.value_type
    return depth


def with_iceberg_dimensions(columns: list[Column], stored: pa.Schema) -> list[Column]:
    """The columns with each array's dimensions as the Iceberg table stores them (lists in lists), which unarchive
    cannot learn from the source's catalog: PostgreSQL keeps no dimensions in an array's type."""
    return [
        replace(c, dimensions=_depth(stored.field(c.name).type)) if c.is_array and c.name in stored.names else c
        for c in columns
    ]


def columns_written(scan: Any, path: str) -> set[str]:
    """The table's columns (by their current names) that a data file holds values of: its Parquet footer's field
    ids. A column added to the table after the file was written reads as null from it, not as the value archived."""
    schema = scan.table_metadata.schema()
    with scan.io.new_input(path).open() as stream:
        stored = pq.read_schema(stream)
    ids = [int(f.metadata[FIELD_ID]) for f in stored if f.metadata and FIELD_ID in f.metadata]
    return {name for name in (schema.find_column_name(i) for i in ids) if name is not None}


def unarchive_iceberg(request: UnarchiveRequest, table: IcebergTable) -> UnarchiveResult:
    """Load the request's rows back from the table's current snapshot."""
    settings, info = request.settings, request.info
    scan = table.scan(request.start, request.end)
    tasks = list(scan.plan_files())
    snapshot = scan.snapshot()
    in_table = int(snapshot.summary.get("total-data-files", "0")) if snapshot and snapshot.summary else 0
    log.info("Iceberg scan planned", extra={"data_files": len(tasks), "data_files_in_table": in_table})
    stored = scan.projection().as_arrow()
    key_columns = {*info.primary_key, info.timestamp_column.name}
    missing = sorted(key_columns - set(stored.names))
    if missing:
        raise PermanentError(
            f"the Iceberg table {table.iceberg.identifier} has no column {', '.join(missing)} of {settings.relation}'s "
            "key and timestamp; unarchive finds rows by them. Name the table this source was archived into "
            "(spec.iceberg.table)",
            reason=Reason.SCHEMA_MISMATCH,
        )
    spans = [(request.start, request.end)]
    repartition = Repartitioner.plan(request.conn, settings, info, spans) if request.into == "source" else None
    target = prepare_target(request, repartition)
    columns = with_iceberg_dimensions(info.columns, stored)
    result = UnarchiveResult()
    progress = LoadProgress(
        len(tasks),
        sum(t.file.record_count for t in tasks),
        sum(t.file.file_size_in_bytes for t in tasks),
        request.progress_seconds,
    )
    for task in tasks:
        request.wait_for_standbys()
        key = str(task.file.file_path)
        # The columns this file holds: one added to the source after it was written gets the table's default.
        held = columns_written(scan, key)
        written = [c for c in columns if c.name in held]
        # Iceberg's types back to the archive's Arrow types (an int2 column was widened to int, say).
        rows = table.read_task(scan, task).select([c.name for c in written]).cast(schema_for(written))
        inserted, in_range = load_rows(request, target, LoadedPiece(key, rows.num_rows), written, rows)
        request.conn.commit()
        result.add(rows.num_rows, inserted, in_range)
        progress.loaded(rows.num_rows, task.file.file_size_in_bytes, inserted)
    progress.summary(request.target_name)
    return result
