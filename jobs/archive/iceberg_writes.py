"""A batch's rows as the write tasks of an Iceberg table's data files: a file per partition (more where a partition
exceeds the table's target file size), written by PyIceberg's own writer (`write_file`: the table's schema and
field ids, its column statistics, its file names) on its pool of threads (as many as the cores and four more:
sixteen held two and a half times Parquet mode's memory for no gain in speed on two cores).

PyIceberg's `append` finds a batch's partitions by filtering the whole batch once per partition, a pass over every
row for each day a batch spans. A batch arrives sorted by its timestamp (objects.sort_batch), so here a partition
is a run of equal partition values: the transform is computed once over the column and run-length encoded, and each
partition is a zero-copy slice. Rows out of order would only make more, smaller files, each still in its own
partition. A spec of more than one field goes through PyIceberg's own filtering.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


def write_data_files(metadata: Any, io: Any, rows: pa.Table) -> list[Any]:
    """Write `rows` as the data files of the table `metadata` describes, through `io`; their DataFiles, in no
    snapshot yet."""
    from pyiceberg.io.pyarrow import write_file

    return list(write_file(io=io, table_metadata=metadata, tasks=_tasks(metadata, rows)))


def _tasks(metadata: Any, rows: pa.Table) -> Iterator[Any]:
    from pyiceberg.io.pyarrow import bin_pack_arrow_table, pyarrow_to_schema
    from pyiceberg.table import TableProperties, WriteTask
    from pyiceberg.utils.properties import property_as_int

    schema = metadata.schema()
    default_size = TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT
    target_file_size = property_as_int(metadata.properties, TableProperties.WRITE_TARGET_FILE_SIZE_BYTES, default_size)
    rows_schema = pyarrow_to_schema(
        rows.schema, name_mapping=schema.name_mapping, format_version=metadata.format_version
    )
    write_uuid, task_ids = uuid.uuid4(), itertools.count()
    for partition_key, part in _partitions(metadata.spec(), schema, rows):
        for batches in bin_pack_arrow_table(part, target_file_size or default_size):
            yield WriteTask(
                write_uuid=write_uuid,
                task_id=next(task_ids),
                schema=rows_schema,
                record_batches=batches,
                partition_key=partition_key,
            )


def _partitions(spec: Any, schema: Any, rows: pa.Table) -> Iterator[tuple[Any, pa.Table]]:
    """(partition key, its rows) of each partition of `rows`: None and all the rows for an unpartitioned table."""
    from pyiceberg.io.pyarrow import _determine_partitions
    from pyiceberg.partitioning import PartitionFieldValue, PartitionKey

    if spec.is_unpartitioned() or rows.num_rows == 0:
        yield None, rows
        return
    if len(spec.fields) > 1:
        for partition in _determine_partitions(spec=spec, schema=schema, arrow_table=rows):
            yield partition.partition_key, partition.arrow_table_partition
        return
    field = spec.fields[0]
    source = rows.column(schema.find_column_name(field.source_id)).combine_chunks()
    values = field.transform.pyarrow_transform(schema.find_field(field.source_id).field_type)(source)
    runs = pc.run_end_encode(values)
    start = 0
    for end, value in zip(runs.run_ends.to_pylist(), runs.values.to_pylist(), strict=True):
        key = PartitionKey(field_values=[PartitionFieldValue(field, value)], partition_spec=spec, schema=schema)
        yield key, rows.slice(start, end - start)
        start = end
