"""Bringing rows back from an archive's Iceberg table: the range pushed down to PyIceberg's scan as a row filter (the
partitions and files outside it are never read), each planned data file loaded in a transaction of its own with
unarchive's staging and INSERT ... ON CONFLICT DO NOTHING, so a run again after a failure loads what is missing."""

from __future__ import annotations

import logging
from dataclasses import replace

import pyarrow as pa

from common.errors import PermanentError
from common.reasons import Reason
from jobs.archive.encoding import schema_for
from jobs.archive.iceberg import IcebergTable
from jobs.archive.loading import LoadedPiece, UnarchiveRequest, UnarchiveResult, load_rows, prepare_target
from jobs.archive.repartition import Repartitioner
from jobs.archive.table import Column

log = logging.getLogger(__name__)


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


def unarchive_iceberg(request: UnarchiveRequest, table: IcebergTable) -> UnarchiveResult:
    """Load the request's rows back from the table's current snapshot."""
    settings, info = request.settings, request.info
    scan = table.scan(request.start, request.end)
    tasks = list(scan.plan_files())
    snapshot = scan.snapshot()
    in_table = int(snapshot.summary.get("total-data-files", "0")) if snapshot and snapshot.summary else 0
    log.info("Iceberg scan planned", extra={"data_files": len(tasks), "data_files_in_table": in_table})
    stored = scan.projection().as_arrow()
    missing = [c.name for c in info.columns if c.name not in stored.names]
    if missing:
        raise PermanentError(
            f"the Iceberg table {table.iceberg.identifier} has no column {', '.join(missing)} of {settings.relation}; "
            "unarchive loads whole rows",
            reason=Reason.SCHEMA_MISMATCH,
        )
    spans = [(request.start, request.end)]
    repartition = Repartitioner.plan(request.conn, settings, info, spans) if request.into == "source" else None
    target = prepare_target(request, repartition)
    columns = with_iceberg_dimensions(info.columns, stored)
    schema = schema_for(columns)
    result = UnarchiveResult()
    for task in tasks:
        request.wait_for_standbys()
        # Iceberg's types back to the archive's Arrow types (an int2 column was widened to int, say).
        rows = table.read_task(scan, task).select([c.name for c in columns]).cast(schema)
        key = str(task.file.file_path)
        inserted, in_range = load_rows(request, target, LoadedPiece(key, rows.num_rows), columns, rows)
        request.conn.commit()
        result.add(rows.num_rows, inserted, in_range)
        log.info("data file unarchived", extra={"key": key, "rows": rows.num_rows, "inserted": inserted})
    return result
