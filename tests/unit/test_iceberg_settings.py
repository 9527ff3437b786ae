"""spec.format: Iceberg and spec.iceberg, read and checked before anything is touched."""

from __future__ import annotations

from typing import Any

import pytest

from common.errors import InvalidSpec
from jobs.archive.settings import parse_archive_spec
from tests.unit.test_archive_pure import SPEC


def test_parquet_stays_the_default_and_iceberg_takes_its_defaults_from_the_source() -> None:
    assert parse_archive_spec(SPEC).format == "Parquet"
    assert parse_archive_spec(SPEC).iceberg is None
    settings = parse_archive_spec({**SPEC, "format": "Iceberg"})
    iceberg = settings.iceberg
    assert iceberg is not None
    assert (iceberg.namespace, iceberg.table) == (settings.schema, settings.table)
    assert iceberg.partition_by == "Auto"  # chosen when the table is made (layout.py)
    assert iceberg.catalog.database is None  # the archived database
    assert iceberg.catalog.schema == "cellar_iceberg"
    assert iceberg.table_properties() == {"write.target-file-size-bytes": str(128 * 1024 * 1024)}


def test_iceberg_settings_are_read_as_written() -> None:
    settings = parse_archive_spec(
        {
            **SPEC,
            "format": "Iceberg",
            "iceberg": {
                "catalog": {"database": {"secretRef": {"name": "lake"}}, "schema": "lake_catalog"},
                "namespace": "sales",
                "table": "orders_archive",
                "partitionBy": "day",
                "targetFileSizeMiB": 64,
                "properties": {"write.parquet.compression-codec": "zstd"},
            },
        }
    )
    iceberg = settings.iceberg
    assert iceberg is not None
    assert iceberg.identifier == "sales.orders_archive"
    assert iceberg.catalog.database is not None
    assert iceberg.catalog.database.secret_name == "lake"
    assert iceberg.table_properties()["write.target-file-size-bytes"] == str(64 * 1024 * 1024)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"iceberg": {"partitionBy": "hour"}}, "spec.iceberg.partitionBy"),
        ({"iceberg": {"catalog": {"type": "Glue"}}}, "spec.iceberg.catalog.type"),
        ({"iceberg": {"namespace": "a.b"}}, "spec.iceberg.namespace"),
        ({"iceberg": {"properties": {"write.target-file-size-bytes": "1"}}}, "spec.iceberg.properties"),
        ({"mode": "Copy"}, "spec.mode"),
        ({"encryption": {"recipients": ["age1" + "q" * 58]}}, "spec.encryption"),
    ],
)
def test_what_an_iceberg_archive_cannot_take_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        parse_archive_spec({**SPEC, "format": "Iceberg", **change})
    assert field in str(refused.value)


def test_spec_iceberg_without_format_iceberg_is_refused() -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.iceberg: only with format: Iceberg"):
        parse_archive_spec({**SPEC, "iceberg": {"partitionBy": "day"}})
