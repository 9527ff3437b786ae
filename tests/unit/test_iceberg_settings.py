"""spec.format: Iceberg and spec.iceberg, read and checked before anything is touched."""

from __future__ import annotations

from typing import Any

import pytest

from common.errors import InvalidSpec
from common.secrets import StorageCredentials
from jobs.archive.iceberg import file_io_properties, table_location
from jobs.archive.settings import parse_archive_spec
from tests.unit.test_archive_pure import SPEC


def test_parquet_stays_the_default_and_iceberg_takes_its_defaults_from_the_source() -> None:
    assert parse_archive_spec(SPEC).format == "Parquet"
    assert parse_archive_spec(SPEC).iceberg is None
    settings = parse_archive_spec({**SPEC, "format": "Iceberg"})
    iceberg = settings.iceberg
    assert iceberg is not None
    assert (iceberg.namespace, iceberg.table) == (settings.schema, settings.table)
    assert iceberg.partition_by == "month"
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
        (
            {
                "storage": {
                    "provider": "AzureBlob",
                    "azureBlob": {"account": "lake", "container": "archive", "credentials": {"workloadIdentity": True}},
                }
            },
            "spec.storage.azureBlob.credentials.workloadIdentity",
        ),
    ],
)
def test_what_an_iceberg_archive_cannot_take_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        parse_archive_spec({**SPEC, "format": "Iceberg", **change})
    assert field in str(refused.value)


def test_spec_iceberg_without_format_iceberg_is_refused() -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.iceberg: only with format: Iceberg"):
        parse_archive_spec({**SPEC, "iceberg": {"partitionBy": "day"}})


def test_the_table_and_its_file_io_go_where_the_storage_says_with_its_credentials() -> None:
    azure = parse_archive_spec(
        {
            **SPEC,
            "format": "Iceberg",
            "storage": {
                "provider": "AzureBlob",
                "azureBlob": {
                    "account": "lake",
                    "container": "archive",
                    "credentials": {"sasToken": {"name": "s", "key": "t"}},
                },
            },
        }
    )
    assert table_location(azure, "p/public.Orders") == (
        "abfss://archive@lake.dfs.core.windows.net/p/public.Orders/iceberg"
    )
    properties = file_io_properties(azure, StorageCredentials(None, None, None, None, azure_sas_token="?sv=1&sig=x"))
    assert properties["py-io-impl"] == "pyiceberg.io.fsspec.FsspecFileIO"
    assert properties["adls.connection-string"] == (
        "DefaultEndpointsProtocol=https;AccountName=lake;SharedAccessSignature=sv=1&sig=x;"
        "BlobEndpoint=https://lake.blob.core.windows.net;"
    )
    gcs = parse_archive_spec(
        {
            **SPEC,
            "format": "Iceberg",
            "storage": {
                "provider": "GCS",
                "gcs": {"bucket": "archive", "endpoint": "http://127.0.0.1:4443", "credentials": {"anonymous": True}},
            },
        }
    )
    assert table_location(gcs, "public.Orders") == "gs://archive/public.Orders/iceberg"
    properties = file_io_properties(gcs, StorageCredentials(None, None, None, None))
    assert (properties["gcs.oauth2.token"], properties["gcs.service.host"]) == ("anon", "http://127.0.0.1:4443")
