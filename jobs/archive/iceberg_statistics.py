"""A data file's column statistics, read from its Parquet footer as PyIceberg reads them
(`data_file_statistics_from_parquet_metadata`), with the work per column done once per table rather than per file.

For every file, PyIceberg builds again for each column a metrics mode, an aggregator (checking the column's Parquet
type against its Iceberg type) and a truncate transform, and compares types by value (pydantic models): about 0.7
ms of CPU a file, all of it holding the GIL, where encoding the file itself releases it. A day a file makes that
thousands of times a run. Here each column's plan (what to collect, how to encode its bounds) is made once, and a
file costs the reading of its footer. The result is the same, field for field: a unit test compares the two on
files of every column type, several row groups and every metrics mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class _ColumnPlan:
    """What a Parquet column's statistics give its Iceberg field (PyIceberg's StatisticsCollector, worked out)."""

    field_id: int
    column_name: str
    iceberg_type: Any
    counts: bool  # value and null counts: every mode but none
    bounds: bool  # lower and upper bounds: the truncate and full modes
    trunc_length: int | None
    lower: Callable[[Any], bytes | None]  # the smallest value, as the lower bound's bytes
    upper: Callable[[Any], bytes | None]  # the largest, as the upper bound's (None: no bound fits the truncation)
    decimal_scale: int | None  # a decimal held as an integer: its min and max are read raw and scaled


def _column_plan(collector: Any) -> _ColumnPlan:
    from pyiceberg.conversions import to_bytes
    from pyiceberg.io.pyarrow import MetricModeTypes
    from pyiceberg.transforms import TruncateTransform
    from pyiceberg.types import BinaryType, DecimalType, StringType
    from pyiceberg.utils.truncate import truncate_upper_bound_binary_string, truncate_upper_bound_text_string

    iceberg_type, mode = collector.iceberg_type, collector.mode
    trunc_length = mode.length
    truncate = TruncateTransform(width=trunc_length).transform(iceberg_type) if trunc_length is not None else None

    def lower(value: Any) -> bytes | None:
        bound: Any = truncate(value) if truncate is not None else value
        return to_bytes(iceberg_type, bound)

    def upper(value: Any) -> bytes | None:
        if isinstance(iceberg_type, StringType):
            if not isinstance(value, str):
                raise ValueError("Expected the current_max to be a string")
            text = truncate_upper_bound_text_string(value, trunc_length)
            return to_bytes(iceberg_type, text) if text is not None else None
        if isinstance(iceberg_type, BinaryType):
            if not isinstance(value, bytes):
                raise ValueError("Expected the current_max to be bytes")
            data = truncate_upper_bound_binary_string(value, trunc_length)
            return to_bytes(iceberg_type, data) if data is not None else None
        if trunc_length is not None:
            raise ValueError(f"{iceberg_type} cannot be truncated")
        return to_bytes(iceberg_type, value)

    return _ColumnPlan(
        field_id=collector.field_id,
        column_name=collector.column_name,
        iceberg_type=iceberg_type,
        counts=mode.type != MetricModeTypes.NONE,
        bounds=mode.type in (MetricModeTypes.TRUNCATE, MetricModeTypes.FULL),
        trunc_length=trunc_length,
        lower=lower,
        upper=upper,
        decimal_scale=iceberg_type.scale if isinstance(iceberg_type, DecimalType) else None,
    )


class FileStatistics:
    """Reads data files' statistics for one table's schema and properties (DataFileWriter's)."""

    def __init__(self, statistics_plan: dict[int, Any], column_ids: dict[str, int]) -> None:
        self._plans = {path: _column_plan(statistics_plan[field_id]) for path, field_id in column_ids.items()}
        self._checked: set[tuple[int, str]] = set()  # (field id, Parquet physical type) found to fit

    def of(self, metadata: pq.FileMetaData) -> dict[str, Any]:
        """The statistics DataFile.from_args takes, as DataFileStatistics.to_serialized_dict gives them."""
        column_sizes: dict[int, int] = {}
        value_counts: dict[int, int] = {}
        null_value_counts: dict[int, int] = {}
        smallest: dict[int, Any] = {}
        largest: dict[int, Any] = {}
        plans: dict[int, _ColumnPlan] = {}
        unusable: set[int] = set()
        split_offsets = []
        for group in range(metadata.num_row_groups):
            row_group = metadata.row_group(group)
            split_offsets.append(_split_offset(row_group.column(0)))
            for position in range(metadata.num_columns):
                column = row_group.column(position)
                plan = self._plans[column.path_in_schema]
                field_id = plan.field_id
                column_sizes[field_id] = column_sizes.get(field_id, 0) + column.total_compressed_size
                if not plan.counts:
                    continue
                value_counts[field_id] = value_counts.get(field_id, 0) + column.num_values
                if not column.is_stats_set:
                    unusable.add(field_id)  # PyIceberg logs a warning and drops the column's bounds and nulls
                    continue
                try:
                    self._add_statistics(column.statistics, plan, null_value_counts, smallest, largest, plans)
                except pa.ArrowNotImplementedError:
                    unusable.add(field_id)
        for field_id in unusable:
            null_value_counts.pop(field_id, None)
            plans.pop(field_id, None)
        lower_bounds, upper_bounds = {}, {}
        for field_id, plan in plans.items():
            if (low := smallest.get(field_id)) is not None and (encoded := plan.lower(low)) is not None:
                lower_bounds[field_id] = encoded
            if (high := largest.get(field_id)) is not None and (encoded := plan.upper(high)) is not None:
                upper_bounds[field_id] = encoded
        return {
            "record_count": metadata.num_rows,
            "column_sizes": column_sizes,
            "value_counts": value_counts,
            "null_value_counts": null_value_counts,
            "nan_value_counts": {},
            "lower_bounds": lower_bounds,
            "upper_bounds": upper_bounds,
            "split_offsets": sorted(split_offsets),
        }

    def _add_statistics(
        self,
        statistics: Any,
        plan: _ColumnPlan,
        null_value_counts: dict[int, int],
        smallest: dict[int, Any],
        largest: dict[int, Any],
        plans: dict[int, _ColumnPlan],
    ) -> None:
        field_id = plan.field_id
        if statistics.has_null_count:
            null_value_counts[field_id] = null_value_counts.get(field_id, 0) + statistics.null_count
        if not plan.bounds:
            return
        physical_type = statistics.physical_type
        if field_id not in plans:
            self._check(plan, physical_type)
            plans[field_id] = plan
        if plan.decimal_scale is not None and physical_type != "FIXED_LEN_BYTE_ARRAY":
            from pyiceberg.utils.decimal import unscaled_to_decimal

            low_raw, high_raw = statistics.min_raw, statistics.max_raw
            low = unscaled_to_decimal(low_raw, plan.decimal_scale) if low_raw is not None else None
            high = unscaled_to_decimal(high_raw, plan.decimal_scale) if high_raw is not None else None
        else:
            low, high = statistics.min, statistics.max
        if low is not None:
            known = smallest.get(field_id)
            smallest[field_id] = low if known is None else min(low, known)
        if high is not None:
            known = largest.get(field_id)
            largest[field_id] = high if known is None else max(high, known)

    def _check(self, plan: _ColumnPlan, physical_type: str) -> None:
        """The column's Parquet type fits its Iceberg type, as PyIceberg's aggregator checks it (once a pair)."""
        from pyiceberg.io.pyarrow import StatsAggregator

        if (plan.field_id, physical_type) in self._checked:
            return
        try:
            StatsAggregator(plan.iceberg_type, physical_type, plan.trunc_length)
        except ValueError as exc:
            raise ValueError(f"{exc} for column '{plan.column_name}'") from exc
        self._checked.add((plan.field_id, physical_type))


def _split_offset(first_column: Any) -> int:
    """Where a row group starts: its first column's dictionary page, where that comes before its data."""
    data_offset, dictionary_offset = first_column.data_page_offset, first_column.dictionary_page_offset
    if first_column.has_dictionary_page and dictionary_offset < data_offset:
        return int(dictionary_offset)
    return int(data_offset)
