"""A batch's rows as an Iceberg table's data files: a file per partition (more where a partition exceeds the table's
target file size), written on PyIceberg's pool of threads (as many as the cores and four more: sixteen held two and
a half times Parquet mode's memory for no gain in speed on two cores).

The files hold what PyIceberg's own writer (`write_file`) writes, with less work per file: the table's schema with
its field ids, its Parquet options, its file names and locations, and each file's column statistics read from its
footer, as PyIceberg reads them (iceberg_statistics.py; a unit test compares the two writers' files column for
column). PyIceberg works all of that out again for every file (and reads its configuration files again) and
converts each file's rows column by column; here it is worked out once per table and batch schema
(DataFileWriter), and a column is converted only where its type widens (int2 to int). Dictionaries are only for the
columns whose values repeat, as in Parquet mode.

PyIceberg's `append` finds a batch's partitions by filtering the whole batch once per partition, a pass over every
row for each day a batch spans. A batch arrives sorted by its timestamp (objects.sort_batch), so here a partition
is a run of equal partition values: the transform is computed once over the column (a year, month or day in Arrow's
kernels, which release the GIL) and run-length encoded, and each partition is a zero-copy slice. Rows out of order
would only make more, smaller files, each still in its own partition. A spec of more than one field goes through
PyIceberg's own filtering.

A batch read in pieces (iceberg_pieces.py) is written by PieceFiles: the file of the partition a piece ends in stays
open for the next piece's rows, so a batch's files are one per partition it reaches, as for a batch held whole.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.archive.encoding import DICTIONARY_SAMPLE_ROWS, repeating_columns
from jobs.archive.iceberg_statistics import FileStatistics


@dataclass(frozen=True)
class _FileLayout:
    """How rows of one Arrow schema become a data file's columns."""

    schema: pa.Schema  # the files' Arrow schema (DataFileWriter.layout)
    sources: tuple[int | None, ...]  # each file column's index among the rows' columns (None: the rows lack it)
    converted: tuple[bool, ...]  # whether its values are converted (widened, or given nested field ids)
    dictionary_columns: tuple[str, ...] = ()

    def file_rows(self, rows: pa.Table) -> pa.Table:
        """`rows` as the file's columns: the same buffers where the types already match, converted where they
        widen, nulls for a column the rows lack (an optional one the table gained since)."""
        columns = []
        for field, source, convert in zip(self.schema, self.sources, self.converted, strict=True):
            if source is None:
                columns.append(pa.chunked_array([pa.nulls(rows.num_rows, type=field.type)], type=field.type))
            else:
                columns.append(rows.column(source).cast(field.type) if convert else rows.column(source))
        return pa.Table.from_arrays(columns, schema=self.schema)


@dataclass(frozen=True)
class _FileTask:
    name: str
    partition_key: Any
    rows: pa.Table


class DataFileWriter:
    """Writes data files of the table `metadata` describes (its schema, partition spec, location and properties
    as they were then). One per lane: IcebergTable keeps each lane's in a thread-local."""

    def __init__(self, metadata: Any) -> None:
        from pyiceberg.io.pyarrow import (
            _get_parquet_writer_kwargs,
            compute_statistics_plan,
            parquet_path_to_id_mapping,
        )
        from pyiceberg.schema import sanitize_column_names
        from pyiceberg.table import TableProperties
        from pyiceberg.table.locations import load_location_provider
        from pyiceberg.utils.properties import property_as_int

        properties = metadata.properties
        self.schema = metadata.schema()
        self.spec = metadata.spec()
        self.spec_id = metadata.default_spec_id
        # Names Avro cannot hold are written sanitized, as PyIceberg writes them; readers match columns by field id.
        self.file_schema = sanitize_column_names(self.schema)
        self.statistics = FileStatistics(
            compute_statistics_plan(self.file_schema, properties), parquet_path_to_id_mapping(self.file_schema)
        )
        self.parquet_options = _get_parquet_writer_kwargs(properties)
        self.row_group_rows = property_as_int(
            properties, TableProperties.PARQUET_ROW_GROUP_LIMIT, TableProperties.PARQUET_ROW_GROUP_LIMIT_DEFAULT
        )
        default_size = TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT
        self.target_file_size = (
            property_as_int(properties, TableProperties.WRITE_TARGET_FILE_SIZE_BYTES, default_size) or default_size
        )
        self.locations = load_location_provider(table_location=metadata.location, table_properties=properties)
        self.format_version = metadata.format_version
        self._layouts: dict[pa.Schema, _FileLayout] = {}

    def write(self, io: Any, rows: pa.Table) -> list[Any]:
        """`rows` written as data files through `io`; their DataFiles, in no snapshot yet."""
        from pyiceberg.utils.concurrent import ExecutorFactory

        if rows.num_rows == 0:
            return []
        layout = self.batch_layout(rows)
        return list(
            ExecutorFactory.get_or_create().map(lambda task: self._write_file(io, layout, task), self._tasks(rows))
        )

    def batch_layout(self, rows: pa.Table) -> _FileLayout:
        """The layout of a batch's files: `rows`' schema laid out (layout), with dictionaries only for the columns
        whose values repeat, as Parquet mode encodes its files, judged once for the batch on its first rows
        (encoding.repeating_columns): on distinct values they cost time and bytes."""
        layout = self.layout(rows.schema)
        sample = layout.file_rows(rows.slice(0, DICTIONARY_SAMPLE_ROWS))
        return replace(layout, dictionary_columns=tuple(repeating_columns(sample)))

    def layout(self, rows_schema: pa.Schema) -> _FileLayout:
        """How rows of `rows_schema` become files: the table's columns, names, field ids and nullability, with the
        rows' own types but where a type widens (a narrower integer or float, a timestamp in other units), as
        PyIceberg's writer converts them."""
        known = self._layouts.get(rows_schema)
        if known is None:
            from pyiceberg.io.pyarrow import _check_pyarrow_schema_compatible

            # Checked once for each schema: a run's batches and pieces mostly share one.
            _check_pyarrow_schema_compatible(
                self.schema, provided_schema=rows_schema, format_version=self.format_version
            )
            indexes = [rows_schema.get_field_index(field.name) for field in self.schema.fields]
            sources = tuple(index if index >= 0 else None for index in indexes)
            types = [rows_schema.field(source).type if source is not None else None for source in sources]
            fields = [
                _file_field(field, named, source_type)
                for field, named, source_type in zip(self.schema.fields, self.file_schema.fields, types, strict=True)
            ]
            converted = tuple(
                source_type is not None and _needs_conversion(source_type, field.type)
                for source_type, field in zip(types, fields, strict=True)
            )
            known = self._layouts[rows_schema] = _FileLayout(pa.schema(fields), sources, converted)
        return known

    def _tasks(self, rows: pa.Table) -> Iterator[_FileTask]:
        write_uuid, task_ids = uuid.uuid4(), itertools.count()
        # A batch whose buffers are within the target size is a file per partition, without weighing each slice.
        whole = rows.get_total_buffer_size() <= self.target_file_size
        for partition_key, part in _partitions(self.spec, self.schema, rows):
            for file_rows in [part] if whole else self._packed(part):
                yield _FileTask(_file_name(write_uuid, next(task_ids)), partition_key, file_rows)

    def _packed(self, part: pa.Table) -> Iterator[pa.Table]:
        """A partition's rows in files of about the table's target size (PyIceberg's bin packing)."""
        from pyiceberg.io.pyarrow import bin_pack_arrow_table

        for batches in bin_pack_arrow_table(part, self.target_file_size):
            yield pa.Table.from_batches(batches, schema=part.schema)

    def _write_file(self, io: Any, layout: _FileLayout, task: _FileTask) -> Any:
        file = self.open_file(layout, task.partition_key, task.name)
        file.append(task.rows)
        return self.finish(io, file)

    def open_file(self, layout: _FileLayout, partition_key: Any, name: str) -> _OpenFile:
        """A data file of the partition `partition_key` whose rows are still to come (_OpenFile.append)."""
        # Encoded into an Arrow buffer, then sent in one write: each write to a Python file object takes the GIL,
        # which the other lanes and uploads contend for.
        sink = pa.BufferOutputStream()
        out = pq.ParquetWriter(
            sink,
            schema=layout.schema,
            store_decimal_as_integer=True,
            use_dictionary=list(layout.dictionary_columns),
            **self.parquet_options,
        )
        return _OpenFile(layout, partition_key, name, out, sink, self.row_group_rows)

    def finish(self, io: Any, file: _OpenFile) -> Any:
        """`file` closed and sent through `io`; its DataFile, with the column statistics its footer holds."""
        from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
        from pyiceberg.typedef import Record

        file.out.close()
        body = file.sink.getvalue()
        location = self.locations.new_data_location(data_file_name=file.name, partition_key=file.partition_key)
        with io.new_output(location).create(overwrite=True) as stream:
            stream.write(body)
        return DataFile.from_args(
            content=DataFileContent.DATA,
            file_path=location,
            file_format=FileFormat.PARQUET,
            partition=file.partition_key.partition if file.partition_key else Record(),
            file_size_in_bytes=body.size,
            sort_order_id=None,
            spec_id=self.spec_id,
            equality_ids=None,
            key_metadata=None,
            **self.statistics.of(file.out.writer.metadata),
        )


@dataclass
class _OpenFile:
    """A data file being written: its rows so far encoded in `sink`, its footer not yet."""

    layout: _FileLayout
    partition_key: Any
    name: str
    out: pq.ParquetWriter
    sink: pa.BufferOutputStream
    row_group_rows: int | None
    rows_bytes: int = 0  # the Arrow buffers of the rows appended, the measure of the target file size

    def append(self, rows: pa.Table) -> None:
        self.out.write_table(self.layout.file_rows(rows), row_group_size=self.row_group_rows)
        self.rows_bytes += rows.get_total_buffer_size()

    def holds(self, partition_key: Any, layout: _FileLayout) -> bool:
        """Whether rows of `partition_key`, as `layout` lays them out, belong in this file."""
        if layout is not self.layout:
            return False
        if partition_key is None or self.partition_key is None:
            return partition_key is None and self.partition_key is None
        return bool(partition_key.partition == self.partition_key.partition)


class PieceFiles:
    """A batch's data files written a piece of its rows at a time (iceberg_pieces.py). A batch's rows arrive in
    time order, so the partition a piece ends in mostly goes on in the next piece: that partition's file stays
    open for the next piece's rows, and every other file is finished (sent, its statistics read) as soon as the
    piece is written. A batch of four pieces within one month is one file, not four, as in Parquet mode, where a
    batch is held whole. A file is finished too when its rows reach the table's target file size. Pieces are
    written one after another (by any thread); close() finishes the last file."""

    def __init__(self, writer: DataFileWriter, io: Any) -> None:
        self._writer = writer
        self._io = io
        self._layout: _FileLayout | None = None
        self._layout_base: _FileLayout | None = None
        self._open: _OpenFile | None = None
        self._write_uuid, self._file_numbers = uuid.uuid4(), itertools.count()

    def write(self, rows: pa.Table) -> list[Any]:
        """Append a piece's rows to the batch's files; the DataFiles of the files this piece finished."""
        from pyiceberg.utils.concurrent import ExecutorFactory

        if rows.num_rows == 0:
            return []
        layout = self._layout_of(rows)
        target = self._writer.target_file_size
        finished: list[_OpenFile] = []
        for partition_key, part in _partitions(self._writer.spec, self._writer.schema, rows):
            for file_rows in [part] if part.get_total_buffer_size() <= target else self._writer._packed(part):
                open_file = self._open
                if open_file is not None and (
                    not open_file.holds(partition_key, layout)
                    or open_file.rows_bytes + file_rows.get_total_buffer_size() > target
                ):
                    finished.append(open_file)
                    open_file = None
                if open_file is None:
                    name = _file_name(self._write_uuid, next(self._file_numbers))
                    open_file = self._writer.open_file(layout, partition_key, name)
                open_file.append(file_rows)
                self._open = open_file
        return list(ExecutorFactory.get_or_create().map(lambda file: self._writer.finish(self._io, file), finished))

    def close(self) -> list[Any]:
        """Finish the file still open; its DataFile (none where the batch had no rows)."""
        open_file, self._open = self._open, None
        return [] if open_file is None else [self._writer.finish(self._io, open_file)]

    def discard(self) -> None:
        """Drop the file still open, unsent (the batch failed: its rows roll back)."""
        open_file, self._open = self._open, None
        if open_file is not None:
            open_file.out.close()

    def _layout_of(self, rows: pa.Table) -> _FileLayout:
        """The batch's layout, its dictionary columns judged on its first piece (DataFileWriter.batch_layout); a
        piece of other columns (never cellar's) gets a layout of its own."""
        base = self._writer.layout(rows.schema)
        if self._layout is None or base is not self._layout_base:
            self._layout = self._writer.batch_layout(rows)
            self._layout_base = base
        return self._layout


def _file_name(write_uuid: uuid.UUID, number: int) -> str:
    """Named as Iceberg's Java writer names its files (OutputFileFactory), as PyIceberg's WriteTask does."""
    return f"00000-{number}-{write_uuid}.parquet"


def _field_type(arrow_type: pa.Schema | pa.StructType | None, name: str) -> pa.DataType | None:
    """The type of the field `name` of the rows' schema or struct; None where the rows have no such field."""
    if arrow_type is None:
        return None
    index = arrow_type.get_field_index(name)
    return arrow_type.field(index).type if index >= 0 else None


def _file_field(field: Any, named: Any, source: pa.DataType | None) -> pa.Field:
    """The Arrow field a file holds for the table's `field` (`named`: the same field as the file names it) where
    the rows hold `source`."""
    from pyiceberg.io.pyarrow import PYARROW_FIELD_DOC_KEY, PYARROW_PARQUET_FIELD_ID_KEY

    metadata = {PYARROW_PARQUET_FIELD_ID_KEY: str(field.field_id).encode()}
    if field.doc:
        metadata[PYARROW_FIELD_DOC_KEY] = field.doc.encode()
    file_type = _file_type(field.field_type, named.field_type, source)
    return pa.field(named.name, file_type, nullable=field.optional, metadata=metadata)


def _file_type(iceberg_type: Any, named_type: Any, source: pa.DataType | None) -> pa.DataType:
    from pyiceberg.io.pyarrow import schema_to_pyarrow
    from pyiceberg.types import ListType, NestedField, StructType

    if isinstance(iceberg_type, ListType):
        element = NestedField(
            iceberg_type.element_id, "element", iceberg_type.element_type, required=iceberg_type.element_required
        )
        named = NestedField(
            named_type.element_id, "element", named_type.element_type, required=named_type.element_required
        )
        source_element = source.value_type if source is not None and pa.types.is_list(source) else None
        return pa.list_(_file_field(element, named, source_element))
    if isinstance(iceberg_type, StructType):
        sources = source if source is not None and pa.types.is_struct(source) else None
        return pa.struct(
            [
                _file_field(sub, named_sub, _field_type(sources, sub.name))
                for sub, named_sub in zip(iceberg_type.fields, named_type.fields, strict=True)
            ]
        )
    target: pa.DataType = schema_to_pyarrow(iceberg_type)
    return target if source is None or _widens(source, target) else source


def _widens(source: pa.DataType, target: pa.DataType) -> bool:
    """Whether rows of type `source` are written as `target` (the conversions PyIceberg's writer makes)."""
    if pa.types.is_integer(source) and pa.types.is_integer(target):
        return bool(source.bit_width < target.bit_width)
    if pa.types.is_floating(source) and pa.types.is_floating(target):
        return bool(source.bit_width < target.bit_width)
    if pa.types.is_timestamp(source) and pa.types.is_timestamp(target):
        return bool(source != target)  # to microseconds, and a UTC zone by the name Iceberg gives it
    return False


def _needs_conversion(source: pa.DataType, target: pa.DataType) -> bool:
    nested = pa.types.is_list(target) or pa.types.is_struct(target)  # its children carry field ids to set
    return bool(nested or not source.equals(target, check_metadata=False))


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
    values = _time_partitions(field.transform, source)
    if values is None:
        values = field.transform.pyarrow_transform(schema.find_field(field.source_id).field_type)(source)
    runs = pc.run_end_encode(values)
    start = 0
    for end, value in zip(runs.run_ends.to_pylist(), runs.values.to_pylist(), strict=True):
        key = PartitionKey(field_values=[PartitionFieldValue(field, value)], partition_spec=spec, schema=schema)
        yield key, rows.slice(start, end - start)
        start = end


UTC_ZONES = (None, "UTC", "+00:00")


def _time_partitions(transform: Any, column: pa.Array) -> pa.Array | None:
    """Iceberg's year, month or day of each timestamp or date (years, months or days since 1970, in UTC), as
    PyIceberg's transforms compute them, but in Arrow's kernels, which release the GIL where PyIceberg's hold it
    (a unit test compares the two). None for any other transform or type."""
    from pyiceberg.transforms import DayTransform, MonthTransform, YearTransform

    if not isinstance(transform, DayTransform | MonthTransform | YearTransform):
        return None
    if pa.types.is_timestamp(column.type):
        if column.type.tz not in UTC_ZONES:  # not cellar's rows (arrow_types.py): PyIceberg's own
            return None
        column = column.cast(pa.timestamp(column.type.unit))  # the instants as UTC wall-clock time
    elif not pa.types.is_date(column.type):
        return None
    if isinstance(transform, DayTransform):
        return column.cast(pa.date32()).cast(pa.int32())
    years = pc.subtract(pc.year(column), 1970)
    if isinstance(transform, YearTransform):
        return years.cast(pa.int32())
    return pc.add(pc.multiply(years, 12), pc.subtract(pc.month(column), 1)).cast(pa.int32())
