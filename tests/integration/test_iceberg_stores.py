"""An Iceberg archive's data and metadata files on Azure Blob Storage (Azurite) and Google Cloud Storage
(fake-gcs-server), written with the credentials the resource already has: archived, listed by the store's own
client no one here wrote (the Azure CLI, gsutil), read back by PyIceberg through its own FileIO and by DuckDB, both
compared with PostgreSQL's rows, and unarchived value for value.

DuckDB reads the data files, not the table: its azure extension (1.5.5) reaches Azurite for az:// URLs, but
resolves the abfss://container@account.dfs.core.windows.net/ paths inside Iceberg's metadata to
http://account.blob.core.windows.net whatever the secret's BlobEndpoint says ("Fail to get a new connection for:
http://devstoreaccount1.blob.core.windows.net. Could not resolve host"), and its GCS support is the S3-compatible
XML API, which fake-gcs-server does not serve. So DuckDB reads Azure's data files over az:// and GCS's as gsutil
downloaded them; every data file is the table's (one run, no commit lost to another writer).

On S3, an endpoint whose certificate a private CA signed (spec.storage.endpointCA): a TLS proxy with its own CA in
front of MinIO, through which the table's files are written, maintained and unarchived; DuckDB reads the table from
MinIO itself. A CA that did not sign the endpoint's certificate fails the run before any row moves."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from tests.harness.emulators import AZURITE_ACCOUNT, AZURITE_KEY
from tests.harness.faults import FaultProxy, self_signed
from tests.harness.stack import S3_ACCESS_KEY, S3_SECRET_KEY, LocalStack
from tests.integration.archive_helpers import dsn, ids_in_table
from tests.integration.environments import ArchiveEnv
from tests.integration.iceberg_helpers import (
    _extension,
    duckdb_over_minio,
    figures_in_duckdb,
    iceberg_catalog,
    metadata_location,
    setup_iceberg_archive,
)
from tests.integration.providers import SECRET, Provider, azure_provider, gcs_provider
from tests.integration.test_iceberg import figures_in_postgres, make_orders

ROWS = 1500


@pytest.fixture(params=["AzureBlob", "AzureBlob-SAS", "GCS"], ids=["azure", "azure-sas", "gcs"])
def provider(request: pytest.FixtureRequest, stack: LocalStack) -> Provider:
    if request.param == "GCS":
        return gcs_provider(request.getfixturevalue("fake_gcs"))
    found = azure_provider(request.getfixturevalue("azurite"))
    if request.param == "AzureBlob-SAS":
        from datetime import UTC, datetime, timedelta

        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        token = generate_container_sas(
            AZURITE_ACCOUNT,
            found.bucket,
            account_key=AZURITE_KEY,
            permission=ContainerSasPermissions(read=True, add=True, create=True, write=True, delete=True, list=True),
            expiry=datetime.now(UTC) + timedelta(hours=1),
        )
        spec = {**found.spec, "azureBlob": {**found.spec["azureBlob"]}}
        spec["azureBlob"]["credentials"] = {"sasToken": {"name": SECRET, "key": "AZURE_SAS_TOKEN"}}
        found = dataclasses.replace(found, spec=spec, secret={"AZURE_SAS_TOKEN": token})
    return found


def reader_properties(provider: Provider, request: pytest.FixtureRequest) -> dict[str, Any]:
    """PyIceberg's FileIO settings a reader of that store gives (the emulator's endpoint and key)."""
    if provider.name == "GCS":
        return {
            "py-io-impl": "pyiceberg.io.fsspec.FsspecFileIO",
            "gcs.service.host": request.getfixturevalue("fake_gcs").endpoint,
            "gcs.oauth2.token": "anon",
        }
    return {
        "py-io-impl": "pyiceberg.io.fsspec.FsspecFileIO",
        "adls.connection-string": request.getfixturevalue("azurite").connection_string,
    }


def listed_by_foreign_client(provider: Provider, request: pytest.FixtureRequest, prefix: str) -> set[str]:
    """The object names under `prefix`, as the Azure CLI or gsutil list them."""
    if provider.name == "GCS":
        out = request.getfixturevalue("fake_gcs").gsutil("ls", "-r", f"gs://{provider.bucket}/{prefix}**").stdout
        return {line.removeprefix(f"gs://{provider.bucket}/") for line in out.decode().split() if line}
    listing = request.getfixturevalue("azurite").az(
        "storage", "blob", "list", "-c", provider.bucket, "--prefix", prefix, "--num-results", "*", "-o", "json"
    )
    return {blob["name"] for blob in json.loads(listing.stdout)}


def figures_in_duckdb_data_files(
    provider: Provider, request: pytest.FixtureRequest, prefix: str, tmp_path: Path
) -> tuple[Any, ...]:
    """count, distinct ids, sum, min and max of amount over the data files under `prefix`, as DuckDB reads them."""
    conn = duckdb.connect()
    if provider.name == "GCS":
        local = tmp_path / "data"
        local.mkdir()
        request.getfixturevalue("fake_gcs").gsutil("-q", "cp", "-r", f"gs://{provider.bucket}/{prefix}*", str(local))
        files = f"{local}/**/*.parquet"
    else:
        conn.load_extension(_extension("duckdb_extension_azure", "azure"))
        connection = request.getfixturevalue("azurite").connection_string
        conn.execute(f"CREATE SECRET azurite (TYPE azure, CONNECTION_STRING '{connection}')")
        files = f"az://{provider.bucket}/{prefix}**/*.parquet"
    found = conn.execute(
        f"SELECT count(*), count(DISTINCT id), sum(amount), min(amount), max(amount) FROM read_parquet('{files}')"
    ).fetchone()
    assert found is not None
    return tuple(found)


def test_an_iceberg_archive_on_azure_and_gcs_is_written_listed_read_and_unarchived(
    provider: Provider, archive_env: ArchiveEnv, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    env = dataclasses.replace(archive_env, storage_spec=provider.spec)
    env.create_secret(SECRET, provider.secret)
    make_orders(env, rows=ROWS)
    expected = figures_in_postgres(env, f"id <= {ROWS}")
    with psycopg.connect(dsn(env.database)) as conn:
        february = conn.execute(
            "SELECT t::text FROM orders t WHERE created_at >= '2025-02-01' AND created_at < '2025-03-01' ORDER BY id"
        ).fetchall()
    # Monthly partitions and no compaction at the run's end: the batches' own files are what the store's client lists.
    setup_iceberg_archive(env, batch={"rows": 500}, iceberg={"partitionBy": "month", "maintenance": {"enabled": False}})
    assert env.run() == 0
    assert ids_in_table(env.database) == set(range(1_000_001, 1_000_011))

    table = iceberg_catalog(env, properties=reader_properties(provider, request)).load_table(("public", "orders"))
    scheme = "gs://" if provider.name == "GCS" else f"abfss://{provider.bucket}@{AZURITE_ACCOUNT}.dfs.core.windows.net/"
    assert table.location().startswith(scheme)
    rows = table.scan().to_arrow()
    amounts = rows.column("amount").to_pylist()
    ids = rows.column("id").to_pylist()
    assert (len(ids), len(set(ids)), sum(amounts), min(amounts), max(amounts)) == expected

    # The store's own client lists every data file the current snapshot holds, and the metadata file.
    listed = listed_by_foreign_client(provider, request, "test/public.orders/iceberg/")
    data_files = {task.file.file_path for task in table.scan().plan_files()}
    assert len(data_files) >= len(table.metadata.snapshots) >= 3  # batches of at most 500, split by month
    assert {path.split("/test/", 1)[1] for path in data_files} <= {name.removeprefix("test/") for name in listed}
    assert any(name.endswith(".metadata.json") for name in listed)
    assert figures_in_duckdb_data_files(provider, request, "test/public.orders/iceberg/data/", tmp_path) == expected

    assert env.run("unarchive", "--from", "2025-02-01", "--to", "2025-03-01") == 0
    with psycopg.connect(dsn(env.database)) as conn:
        back = conn.execute("SELECT t::text FROM orders_unarchived t ORDER BY id").fetchall()
    assert back == february


def _through_tls_proxy(env: ArchiveEnv, proxy: FaultProxy, ca_pem: str) -> None:
    """The archive's storage: MinIO through `proxy`, its certificate checked with `ca_pem` (spec.storage.endpointCA)."""
    # In the storage Secret: the Roles the tests' jobs run with name it (tests/harness/chart-values.yaml).
    env.create_secret(
        "cellar-object-storage",
        {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY, "ca.crt": ca_pem},
    )
    ca = {"name": "cellar-object-storage", "key": "ca.crt"}
    storage = {**env.storage_spec, "endpoint": proxy.url, "endpointCA": ca}
    setup_iceberg_archive(env, storage=storage, batch={"rows": 500}, iceberg={"partitionBy": "month"})


def _iceberg_requests(proxy: FaultProxy, methods: tuple[str, ...], client: str = "") -> list[str]:
    """The paths of the table's files the proxy saw asked with `methods`, by `client` (a User-Agent part: cellar's
    boto3 writes, PyArrow's AWS SDK for C++, "aws-sdk-cpp", reads) or any client."""
    found = []
    for seen in proxy.seen:
        agent = next((v for k, v in seen.request.headers.items() if k.lower() == "user-agent"), "")
        if seen.request.method in methods and "/iceberg/" in seen.request.path and client in agent:
            found.append(seen.request.path)
    return found


def test_an_iceberg_archive_through_an_s3_endpoint_with_a_private_ca_is_written_maintained_and_unarchived(
    archive_env: ArchiveEnv,
) -> None:
    env = archive_env
    proxy = FaultProxy(env.stack.s3_endpoint, tls=True).start()
    try:
        assert proxy.ca_file is not None
        make_orders(env, rows=ROWS)
        expected = figures_in_postgres(env, f"id <= {ROWS}")
        with psycopg.connect(dsn(env.database)) as conn:
            february = conn.execute(
                "SELECT t::text FROM orders t WHERE created_at >= '2025-02-01' AND created_at < '2025-03-01' "
                "ORDER BY id"
            ).fetchall()
        _through_tls_proxy(env, proxy, proxy.ca_file.read_text())
        assert env.run() == 0
        assert ids_in_table(env.database) == set(range(1_000_001, 1_000_011))
        written = _iceberg_requests(proxy, ("PUT", "POST"))
        assert any("/iceberg/data/" in path and ".parquet" in path for path in written)
        assert any(path.split("?")[0].endswith(".metadata.json") for path in written)
        # The run (its compaction too) reads whole files with cellar's client: PyArrow's filesystem never starts.
        assert not _iceberg_requests(proxy, ("GET", "HEAD"), "aws-sdk-cpp")
        # DuckDB reads the table from MinIO itself: what went through the proxy is the table.
        assert figures_in_duckdb(duckdb_over_minio(env), metadata_location(env)) == expected

        before = len(proxy.seen)
        assert env.run("maintain") == 0
        assert len(proxy.seen) > before  # maintenance read the table through the endpoint
        assert env.run("unarchive", "--from", "2025-02-01", "--to", "2025-03-01") == 0
        assert _iceberg_requests(proxy, ("GET", "HEAD"), "aws-sdk-cpp")  # unarchive's reads, PyArrow's, trust the CA
        with psycopg.connect(dsn(env.database)) as conn:
            back = conn.execute("SELECT t::text FROM orders_unarchived t ORDER BY id").fetchall()
        assert back == february
    finally:
        proxy.stop()


def test_an_iceberg_archive_through_an_endpoint_its_ca_did_not_sign_deletes_nothing(
    archive_env: ArchiveEnv, tmp_path: Path
) -> None:
    env = archive_env
    proxy = FaultProxy(env.stack.s3_endpoint, tls=True).start()
    try:
        other_ca, _ = self_signed("some other CA", tmp_path)
        make_orders(env, rows=ROWS)
        _through_tls_proxy(env, proxy, other_ca.read_text())
        assert env.run() != 0
        failed = env.conditions("TableArchive", "orders")["ArchiveSucceeded"]
        assert failed["status"] == "False"
        assert failed["reason"] == "StorageCertificateRejected"  # as the storage path says it for every format
        assert "certificate verify failed" in failed["message"]
        assert "spec.storage.endpointCA" in failed["message"]
        assert len(ids_in_table(env.database)) == ROWS + 10  # nothing deleted
        assert _iceberg_requests(proxy, ("PUT", "POST")) == []  # and nothing of the table written
    finally:
        proxy.stop()
