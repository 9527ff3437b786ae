"""spec.format: Iceberg and spec.iceberg, read and checked before anything is touched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from common.errors import InvalidSpec
from common.secrets import StorageCredentials
from jobs.archive.iceberg_catalog import file_io_properties, table_location
from jobs.archive.iceberg_rest import RestCredentials, rest_catalog_properties
from jobs.archive.settings import DEFAULT_TUNING, parse_archive_spec
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
        (
            {
                "storage": {
                    "provider": "AzureBlob",
                    "azureBlob": {"account": "lake", "container": "archive", "credentials": {"workloadIdentity": True}},
                }
            },
            "spec.storage.azureBlob.credentials.workloadIdentity",
        ),
        ({"storage": {**SPEC["storage"], "insecureSkipTLSVerify": True}}, "spec.storage.endpointCA instead"),
    ],
)
def test_what_an_iceberg_archive_cannot_take_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        parse_archive_spec({**SPEC, "format": "Iceberg", **change})
    assert field in str(refused.value)


def test_spec_iceberg_without_format_iceberg_is_refused() -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.iceberg: only with format: Iceberg"):
        parse_archive_spec({**SPEC, "iceberg": {"partitionBy": "day"}})


def rest(**fields: Any) -> dict[str, Any]:
    return {**SPEC, "format": "Iceberg", "iceberg": {"catalog": {"type": "Rest", "rest": fields}}}


OAUTH2 = {
    "clientId": {"name": "lake", "key": "client-id"},
    "clientSecret": {"name": "lake", "key": "client-secret"},
    "scope": "PRINCIPAL_ROLE:ALL",
    "tokenEndpoint": "https://idp.example/realms/lake/token",
}


def test_a_rest_catalog_is_read_as_written_and_becomes_pyiceberg_properties() -> None:
    settings = parse_archive_spec(
        rest(
            uri="https://polaris.example:8181/api/catalog",
            warehouse="lake",
            prefix="/lake/",
            auth={"oauth2": OAUTH2},
            caBundle={"configMapKeyRef": {"name": "lake-ca", "key": "ca.pem"}},
            properties={"header.X-Iceberg-Access-Delegation": ""},
        )
    )
    assert settings.iceberg is not None
    spec = settings.iceberg.catalog.rest
    assert spec is not None
    assert settings.iceberg.catalog.database is None
    assert (spec.uri, spec.warehouse, spec.prefix) == ("https://polaris.example:8181/api/catalog", "lake", "lake")
    assert spec.ca_bundle is not None
    assert (spec.ca_bundle.kind, spec.ca_bundle.name, spec.ca_bundle.key) == ("ConfigMap", "lake-ca", "ca.pem")
    assert spec.oauth2 is not None
    assert spec.oauth2.client_secret.field == "spec.iceberg.catalog.rest.auth.oauth2.clientSecret"

    credentials = RestCredentials(client_id="archiver", client_secret="s3cret", ca_bundle_pem="PEM")
    assert rest_catalog_properties(spec, credentials, "/tmp/ca.pem") == {
        "uri": "https://polaris.example:8181/api/catalog",
        "warehouse": "lake",
        "prefix": "lake",
        "credential": "archiver:s3cret",
        "scope": "PRINCIPAL_ROLE:ALL",
        "oauth2-server-uri": "https://idp.example/realms/lake/token",
        "ssl": {"cabundle": "/tmp/ca.pem"},
        "header.X-Iceberg-Access-Delegation": "",
    }
    # What a refusal names: the fields and Secret keys, never their values.
    assert spec.credential_keys() == (
        'spec.iceberg.catalog.rest.auth.oauth2.clientId (Secret "lake" key "client-id") and '
        'spec.iceberg.catalog.rest.auth.oauth2.clientSecret (Secret "lake" key "client-secret")'
    )


def test_a_bearer_token_is_sent_as_the_token_property() -> None:
    settings = parse_archive_spec(
        rest(uri="http://nessie:19120/iceberg", auth={"bearerToken": {"name": "t", "key": "k"}})
    )
    assert settings.iceberg is not None
    spec = settings.iceberg.catalog.rest
    assert spec is not None
    assert rest_catalog_properties(spec, RestCredentials(token="abc"), None) == {
        "uri": "http://nessie:19120/iceberg",
        "token": "abc",
    }
    assert spec.credential_keys() == 'spec.iceberg.catalog.rest.auth.bearerToken (Secret "t" key "k")'


@pytest.mark.parametrize(
    ("catalog", "field"),
    [
        ({"type": "Rest"}, "spec.iceberg.catalog.rest: required with type Rest"),
        ({"rest": {"uri": "https://c"}}, "spec.iceberg.catalog.rest: only with type Rest"),
        (
            {"type": "Rest", "rest": {"uri": "https://c"}, "database": {"secretRef": {"name": "x"}}},
            "spec.iceberg.catalog.database: only with type Sql",
        ),
        ({"type": "Rest", "rest": {}}, "spec.iceberg.catalog.rest.uri: required"),
        ({"type": "Rest", "rest": {"uri": "catalog:8181"}}, "spec.iceberg.catalog.rest.uri"),
        ({"type": "Rest", "rest": {"uri": "https://u:p@c"}}, "must not hold credentials"),
        ({"type": "Rest", "rest": {"uri": "https://c?x=1"}}, "without a query"),
        (
            {
                "type": "Rest",
                "rest": {"uri": "https://c", "auth": {"bearerToken": {"name": "a", "key": "b"}, "oauth2": OAUTH2}},
            },
            "set one of bearerToken and oauth2",
        ),
        (
            {"type": "Rest", "rest": {"uri": "https://c", "auth": {"oauth2": {"clientId": {"name": "a", "key": "b"}}}}},
            "spec.iceberg.catalog.rest.auth.oauth2.clientSecret: required",
        ),
        (
            {"type": "Rest", "rest": {"uri": "https://c", "auth": {"oauth2": {**OAUTH2, "tokenEndpoint": "idp"}}}},
            "spec.iceberg.catalog.rest.auth.oauth2.tokenEndpoint",
        ),
        (
            {"type": "Rest", "rest": {"uri": "https://c", "caBundle": {}}},
            "spec.iceberg.catalog.rest.caBundle: set exactly one of configMapKeyRef and secretKeyRef",
        ),
        (
            {"type": "Rest", "rest": {"uri": "https://c", "properties": {"token": "t"}}},
            "token is set by spec.iceberg.catalog.rest.auth.bearerToken",
        ),
        (
            {"type": "Rest", "rest": {"uri": "https://c", "properties": {"s3.secret-access-key": "k"}}},
            "s3.secret-access-key is set by spec.storage",
        ),
        (
            {"type": "Rest", "rest": {"uri": "https://c", "properties": {"ssl.cabundle": "/x"}}},
            "ssl.cabundle is set by spec.iceberg.catalog.rest.caBundle",
        ),
        ({"type": "Rest", "rest": {"uri": "https://c", "warehouse": ""}}, "spec.iceberg.catalog.rest.warehouse"),
        ({"type": "Rest", "rest": {"uri": "https://c", "prefix": "/"}}, "spec.iceberg.catalog.rest.prefix"),
    ],
)
def test_a_bad_rest_catalog_is_refused_naming_the_field(catalog: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        parse_archive_spec({**SPEC, "format": "Iceberg", "iceberg": {"catalog": catalog}})
    assert field in str(refused.value)


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


def test_the_s3_file_io_writes_with_cellars_client_and_trusts_the_private_ca_and_only_it() -> None:
    """PyIceberg loads cellar's FileIO, which writes through cellar's S3 client and reads through PyIceberg's
    S3 filesystem, with spec.storage.endpointCA the bundle's file as its CA: that file holds the bundle,
    readable by its owner only, in a directory of its own, and is written once however often the catalog is
    opened."""
    from pyiceberg.io import load_file_io
    from pyiceberg.io.pyarrow import PyArrowFile

    from jobs.archive.iceberg_io import S3FileIO, UploadedFile

    spec = {**SPEC, "format": "Iceberg"}
    storage = {**SPEC["storage"], "endpoint": "https://s3.internal:9000", "forcePathStyle": True}
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    with_ca = parse_archive_spec({**spec, "storage": {**storage, "endpointCA": {"name": "ca", "key": "ca.crt"}}})
    io = load_file_io(file_io_properties(with_ca, StorageCredentials("AK", "SK", None, pem)), "s3://archive/t")
    assert isinstance(io, S3FileIO)
    options = io.fs_by_scheme("s3", "archive").__reduce__()[1][0]
    assert (options["endpoint_override"], options["access_key"], options["region"]) == (
        "https://s3.internal:9000",
        "AK",
        "us-east-1",
    )
    path = Path(options["tls_ca_file_path"])
    assert path.read_text() == pem
    assert (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    again = file_io_properties(with_ca, StorageCredentials("AK", "SK", None, pem))
    assert again["cellar.s3.ca-file"] == str(path)

    without = parse_archive_spec({**spec, "storage": storage})
    io = load_file_io(file_io_properties(without, StorageCredentials("AK", "SK", None, None)), "s3://archive/t")
    assert isinstance(io, S3FileIO)
    assert io.fs_by_scheme("s3", "archive").__reduce__()[1][0]["tls_ca_file_path"] == ""
    # Files in the archive's bucket are written by cellar's client; a table placed elsewhere keeps PyArrow's.
    assert isinstance(io.new_output("s3://archive/t/data/a.parquet"), UploadedFile)
    assert type(io.new_output("s3://elsewhere/t/data/a.parquet")) is PyArrowFile


def test_the_s3_file_io_reads_metadata_with_cellars_client_and_starts_arrows_s3_only_for_data_files() -> None:
    """Metadata files (the table's, manifest lists, manifests) in the archive's bucket are read by cellar's client
    and written by it, and neither starts PyArrow's S3 filesystem; a data file's read does, and a table placed in
    another bucket keeps PyArrow's files."""
    from pyiceberg.io import load_file_io
    from pyiceberg.io.pyarrow import PyArrowFile

    from jobs.archive.iceberg_io import UploadedFile, WholeFile, whole_file_reads

    spec = parse_archive_spec({**SPEC, "format": "Iceberg"})
    io = load_file_io(file_io_properties(spec, StorageCredentials("AK", "SK", None, None)), "s3://archive/t")
    made = io.fs_by_scheme.cache_info  # type: ignore[attr-defined]
    metadata = [
        "s3://archive/t/metadata/00001-0c7e.metadata.json",
        "s3://archive/t/metadata/snap-1-1-0c7e.avro",
        "s3://archive/t/metadata/0c7e-m0.avro",
    ]
    assert all(type(io.new_input(location)) is WholeFile for location in metadata)
    assert all(isinstance(io.new_output(location), UploadedFile) for location in metadata)
    assert type(io.new_input("s3://elsewhere/t/metadata/00001-0c7e.metadata.json")) is PyArrowFile
    assert made().currsize == 1  # only the other bucket's
    data_file = "s3://archive/t/data/created_at_day=2024-01-01/00000-0-0c7e.parquet"
    whole = whole_file_reads(io)  # compaction's, a crashed run's: every byte read, in one GET
    assert type(whole.new_input(data_file)) is WholeFile
    assert type(whole.new_input("s3://elsewhere/t/data/00000-0-0c7e.parquet")) is PyArrowFile
    assert made().currsize == 1
    data = io.new_input(data_file)
    assert type(data) is PyArrowFile
    assert made().currsize == 2


def test_an_iceberg_batch_defaults_to_a_snapshot_of_100000_rows_and_a_set_size_is_kept() -> None:
    """A batch is a snapshot: Iceberg batches default larger (read in pieces of Parquet's 25,000 rows)."""
    assert parse_archive_spec(SPEC).batch_rows == 25_000
    iceberg = parse_archive_spec({**SPEC, "format": "Iceberg"})
    assert iceberg.batch_rows == 100_000
    assert DEFAULT_TUNING.iceberg_piece_rows == 25_000
    assert parse_archive_spec({**SPEC, "format": "Iceberg", "batch": {"rows": 500}}).batch_rows == 500
