"""iceberg_statistics.FileStatistics reads a data file's footer into the statistics PyIceberg's own reader gives,
field for field: every column type cellar writes, nulls, several row groups, and every metrics mode."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from jobs.archive.iceberg_statistics import FileStatistics
from jobs.archive.iceberg_writes import DataFileWriter
from tests.unit.test_iceberg_writes import _every_kind_of_column

MODES = [
    {},  # the default: truncate(16)
    {"write.metadata.metrics.default": "full"},
    {"write.metadata.metrics.default": "counts"},
    {"write.metadata.metrics.default": "none", "write.metadata.metrics.column.status": "truncate(3)"},
    {"write.metadata.metrics.default": "truncate(2)", "write.metadata.metrics.column.id": "none"},
]


@pytest.mark.parametrize("properties", MODES)
@pytest.mark.parametrize("row_group_rows", [64, 1000])
def test_the_statistics_are_those_pyiceberg_reads(
    tmp_path: Path, properties: dict[str, str], row_group_rows: int
) -> None:
    from dataclasses import replace

    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.io.pyarrow import (
        compute_statistics_plan,
        data_file_statistics_from_parquet_metadata,
        parquet_path_to_id_mapping,
    )

    rows = _every_kind_of_column(300)
    rows = rows.set_column(0, "id", pa.array([None if n % 11 == 0 else n for n in range(300)], pa.int64()))
    catalog = SqlCatalog("local", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/warehouse")
    catalog.create_namespace("archive")
    table = catalog.create_table("archive.everything", rows.schema, properties=properties)
    writer = DataFileWriter(table.metadata)
    file = writer.open_file(writer.layout(rows.schema), None, "statistics.parquet")
    file = replace(file, row_group_rows=row_group_rows)
    file.append(rows)
    file.out.close()
    metadata = file.out.writer.metadata
    assert metadata.num_row_groups == -(-300 // row_group_rows)
    plan = compute_statistics_plan(writer.file_schema, table.metadata.properties)
    column_ids = parquet_path_to_id_mapping(writer.file_schema)

    theirs = data_file_statistics_from_parquet_metadata(metadata, plan, column_ids).to_serialized_dict()
    ours = FileStatistics(plan, column_ids).of(metadata)
    assert ours == theirs
    assert theirs["column_sizes"]
    assert theirs["split_offsets"]
    assert theirs["null_value_counts"] or properties.get("write.metadata.metrics.default") == "none"
    if properties.get("write.metadata.metrics.default") not in ("counts", "none"):
        assert theirs["lower_bounds"]
        assert theirs["upper_bounds"]
