"""An archive's Iceberg catalog reached through PyIceberg, and the FileIO its table's files go through.

The SQL catalog (iceberg_sql_catalog.py) keeps its two tables in a PostgreSQL schema of cellar's
(spec.iceberg.catalog.schema). A REST catalog is opened by iceberg_rest.py. Either way the data and
metadata files go to the resource's own storage (S3, Azure Blob Storage or GCS), under
`<prefix>/<schema>.<table>/iceberg/`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from common.db import connect
from common.errors import CellarError, PermanentError, RetryableError
from common.reasons import Reason
from common.redact import redact, register_secret
from common.secrets import DatabaseSettings, StorageCredentials
from common.storage_spec import StorageSpec
from jobs.archive.iceberg_rest import RestCredentials, open_rest_catalog, rest_failures
from jobs.archive.iceberg_settings import IcebergSettings
from jobs.archive.settings import ArchiveSettings

# PyIceberg loads the S3 FileIO by this name when a table is opened (a Parquet-mode run never imports it).
S3_FILE_IO = "jobs.archive.iceberg_io.S3FileIO"
_ACCESS_REASONS = {
    Reason.AUTHENTICATION_FAILED,
    Reason.DATABASE_NOT_FOUND,
    Reason.DATABASE_ACCESS_DENIED,
    Reason.CERTIFICATE_REJECTED,
}


FSSPEC_FILE_IO = "pyiceberg.io.fsspec.FsspecFileIO"


def file_io_properties(settings: ArchiveSettings, credentials: StorageCredentials, store: Any = None) -> dict[str, Any]:
    """PyIceberg's FileIO over the resource's own storage and credentials: on S3, iceberg_io.py's (cellar's S3
    client writes, PyArrow's S3 filesystem reads, verifying the endpoint with spec.storage.endpointCA where set);
    fsspec's adlfs for Azure Blob Storage and gcsfs for GCS (PyIceberg's FsspecFileIO). `store`: the run's own
    S3Store, which then writes the table's files too (a client of its own costs a boto3 session, its service model
    parsed again: a few MB and a tenth of a second)."""
    storage = settings.storage
    if storage.provider == "AzureBlob":
        return _azure_properties(storage, credentials)
    if storage.provider == "GCS":
        return _gcs_properties(storage, credentials)
    properties: dict[str, Any] = {"py-io-impl": S3_FILE_IO, "s3.region": storage.region}
    if storage.endpoint:
        properties["s3.endpoint"] = storage.endpoint
    if not storage.force_path_style and not storage.endpoint:
        properties["s3.force-virtual-addressing"] = "true"
    if credentials.access_key_id and credentials.secret_access_key:
        properties["s3.access-key-id"] = credentials.access_key_id
        properties["s3.secret-access-key"] = credentials.secret_access_key
    if credentials.session_token:
        properties["s3.session-token"] = credentials.session_token
    from common.storage.s3 import S3Store
    from jobs.archive.iceberg_io import CA_FILE, STORE, ca_file, register_store

    writer = store if isinstance(store, S3Store) else S3Store.connect(storage, credentials)
    properties[STORE] = register_store(writer)  # writes the files (iceberg_io.py)
    if storage.endpoint_ca is not None and credentials.ca_bundle_pem:
        # PyIceberg passes PyArrow no CA: cellar's FileIO adds the endpoint's, for reading.
        properties[CA_FILE] = ca_file(credentials.ca_bundle_pem)
    return properties


def _azure_properties(storage: StorageSpec, credentials: StorageCredentials) -> dict[str, Any]:
    """adlfs over a connection string naming the account's blob endpoint (Azure's, a private one, or Azurite's)
    and the Secret's account key or SAS token."""
    azure = storage.azure_blob
    assert azure is not None  # workloadIdentity is refused with format: Iceberg (settings.py)
    secret = (
        f"SharedAccessSignature={credentials.azure_sas_token.lstrip('?')}"
        if credentials.azure_sas_token
        else f"AccountKey={credentials.azure_account_key or ''}"
    )
    protocol = "http" if azure.endpoint.startswith("http://") else "https"
    connection = (
        f"DefaultEndpointsProtocol={protocol};AccountName={azure.account};{secret};BlobEndpoint={azure.endpoint};"
    )
    register_secret(connection)
    return {"py-io-impl": FSSPEC_FILE_IO, "adls.connection-string": connection, "adls.account-name": azure.account}


def _gcs_properties(storage: StorageSpec, credentials: StorageCredentials) -> dict[str, Any]:
    """gcsfs signed in as the GCS store is (common/storage/gcs.py): a service account key, workload identity, or
    anonymous against an emulator."""
    from common.storage.gcs import gcs_credentials

    gcs = storage.gcs
    assert gcs is not None
    # gcsfs (2025.x and later) by default first asks the Storage Control API over gRPC what kind of bucket it is
    # (zonal, hierarchical namespace): not the JSON API cellar's GCS store speaks, and against an emulator or a
    # private endpoint each ask waits 60 s and an upload hung (tests/integration/test_iceberg_stores.py). The
    # plain JSON API it is, set before PyIceberg first imports gcsfs.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    found, project = gcs_credentials(storage, credentials)
    properties: dict[str, Any] = {
        "py-io-impl": FSSPEC_FILE_IO,
        "gcs.project-id": project,
        # gcsfs takes a google-auth Credentials object as its token; "anon" signs nothing.
        "gcs.oauth2.token": "anon" if gcs.anonymous else found,
    }
    if gcs.endpoint:
        properties["gcs.service.host"] = gcs.endpoint
    return properties


def table_location(settings: ArchiveSettings, prefix_key: str) -> str:
    """`prefix_key`: the store's key of the table's folder (ObjectStore.key(relation)). On Azure, the form Iceberg's
    Java ADLSFileIO and PyIceberg both read: abfss://container@account.dfs.core.windows.net/path."""
    storage = settings.storage
    if storage.azure_blob is not None:
        azure = storage.azure_blob
        return f"abfss://{azure.container}@{azure.account}.dfs.core.windows.net/{prefix_key}/iceberg"
    if storage.gcs is not None:
        return f"gs://{storage.gcs.bucket}/{prefix_key}/iceberg"
    return f"s3://{storage.bucket}/{prefix_key}/iceberg"


def _catalog_field(iceberg: IcebergSettings) -> str:
    return "spec.iceberg.catalog.database" if iceberg.catalog.database else "spec.database (the catalog's database)"


def prepare_catalog_schema(database: DatabaseSettings, iceberg: IcebergSettings) -> None:
    """CREATE SCHEMA for the catalog's tables; a database that refuses or cannot be reached says which field."""
    field = _catalog_field(iceberg)
    try:
        conn = connect(database, autocommit=True)
    except CellarError as exc:
        reason = Reason.CATALOG_ACCESS_DENIED if exc.reason in _ACCESS_REASONS else Reason.CATALOG_UNAVAILABLE
        error_class = PermanentError if reason is Reason.CATALOG_ACCESS_DENIED else RetryableError
        raise error_class(f"the Iceberg catalog's database ({field}): {exc}", reason=reason) from None
    with conn:
        schema = iceberg.catalog.schema
        try:
            exists = conn.execute("SELECT to_regnamespace(%s) IS NOT NULL", (schema,)).fetchone()
            if not (exists and exists[0]):
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise PermanentError(
                f"spec.iceberg.catalog.schema: the role cannot create schema {schema!r} for the Iceberg catalog in "
                f"{database.describe()} ({exc.diag.message_primary}); create it for the role, or GRANT CREATE ON "
                "DATABASE",
                reason=Reason.CATALOG_ACCESS_DENIED,
            ) from None


def _catalog_failure(exc: Exception, what: str, field: str) -> CellarError:
    """A failure of the catalog's database as cellar's error, without any password."""
    detail = redact(" ".join(str(exc or type(exc).__name__).split()))[:500]
    if "permission denied" in detail or "password authentication failed" in detail:
        return PermanentError(f"{field}: the Iceberg catalog {what}: {detail}", reason=Reason.CATALOG_ACCESS_DENIED)
    return RetryableError(f"{field}: the Iceberg catalog {what}: {detail}", reason=Reason.CATALOG_UNAVAILABLE)


@dataclass(frozen=True)
class CatalogAccess:
    """How a run reaches its Iceberg table: the SQL catalog's database or the REST catalog's credentials, the
    store's credentials for the data files (under `prefix_key`, the archive's folder), and the run's store."""

    database: DatabaseSettings | None
    credentials: StorageCredentials
    prefix_key: str
    rest: RestCredentials | None = None
    store: Any = None  # the run's ObjectStore: on S3 it writes the table's files too


@contextlib.contextmanager
def catalog_failures(iceberg: IcebergSettings, what: str) -> Iterator[None]:
    """The catalog's failures within as cellar's errors, naming the field to fix: PostgreSQL's (SQL catalog) or
    HTTP's (REST catalog). A lost commit race or a missing table passes through to the caller."""
    rest = iceberg.catalog.rest
    if rest is not None:
        with rest_failures(rest, what):
            yield
        return
    try:
        yield
    except psycopg.Error as exc:
        raise _catalog_failure(exc, what, _catalog_field(iceberg)) from None


def open_catalog(settings: ArchiveSettings, access: CatalogAccess) -> Any:
    """The archive's catalog, reached: the SQL catalog in PostgreSQL (iceberg_sql_catalog.py; its schema made
    first) or PyIceberg's RestCatalog."""
    iceberg = settings.iceberg
    assert iceberg is not None
    file_io = file_io_properties(settings, access.credentials, access.store)
    rest = iceberg.catalog.rest
    if rest is not None:
        return open_rest_catalog(iceberg.catalog.name, rest, access.rest or RestCredentials(), file_io)
    database = access.database
    assert database is not None
    prepare_catalog_schema(database, iceberg)
    from jobs.archive.iceberg_sql_catalog import PostgresCatalog

    with catalog_failures(iceberg, "could not be opened"):
        return PostgresCatalog(
            iceberg.catalog.name, lambda: connect(database, autocommit=True), iceberg.catalog.schema, **file_io
        )
