"""An archive's Iceberg table through PyIceberg: its catalog opened, the table made or checked, batches appended as
snapshots that carry cellar's batch id, and what a snapshot added read back.

The SQL catalog keeps its two tables in a PostgreSQL schema of cellar's (spec.iceberg.catalog.schema): the
catalog's connection sets search_path to it. A REST catalog is opened by iceberg_rest.py. Either way the data and
metadata files go to the resource's own storage (S3, Azure Blob Storage or GCS), under
`<prefix>/<schema>.<table>/iceberg/`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from common.db import connect
from common.errors import CellarError, PermanentError, RetryableError
from common.failpoints import failpoint
from common.reasons import Reason
from common.redact import redact, register_secret
from common.schema import Partitioning
from common.secrets import DatabaseSettings, StorageCredentials
from common.storage_spec import StorageSpec
from jobs.archive.encoding import schema_for
from jobs.archive.iceberg_rest import RestCredentials, open_rest_catalog, rest_failures
from jobs.archive.iceberg_schema import evolve, plan_changes, refusal
from jobs.archive.iceberg_settings import IcebergSettings
from jobs.archive.iceberg_writes import write_data_files
from jobs.archive.layout import TRANSFORMS, LayoutChoice
from jobs.archive.settings import ArchiveSettings
from jobs.archive.table import TableInfo

log = logging.getLogger(__name__)
# PyIceberg says at INFO which FileIO it loaded, on every load of the table.
logging.getLogger("pyiceberg.io").setLevel(logging.WARNING)

BATCH_PROPERTY = "cellar.batch-id"  # in each snapshot's summary: the ledger's batch id
RUN_PROPERTY = "cellar.run-id"
# The source table (schema.table) whose rows a snapshot holds: a run resolves only its own table's snapshots, even
# where two archives append to one Iceberg table.
RELATION_PROPERTY = "cellar.relation"
# PyIceberg loads the S3 FileIO by this name when a table is opened (a Parquet-mode run never imports it).
S3_FILE_IO = "jobs.archive.iceberg_io.S3FileIO"
COMMIT_ATTEMPTS = 12  # appends that lose the race for the catalog's commit before the run gives up
PARTITIONINGS_OF: dict[str, Partitioning] = {transform: partitioning for partitioning, transform in TRANSFORMS.items()}
# partitionBy: Auto: what measures the rows due and chooses, or None when none are due.
Chooser = Callable[[], LayoutChoice | None]
_ACCESS_REASONS = {
    Reason.AUTHENTICATION_FAILED,
    Reason.DATABASE_NOT_FOUND,
    Reason.DATABASE_ACCESS_DENIED,
    Reason.CERTIFICATE_REJECTED,
}


class NothingDue(Exception):
    """partitionBy: Auto, no table yet, and no rows due to choose its partitioning from."""


@dataclass(frozen=True)
class AppendedSnapshot:
    snapshot_id: int
    metadata_location: str
    data_files: int
    bytes: int


def catalog_uri(database: DatabaseSettings, schema: str) -> str:
    """The SQLAlchemy URL of the catalog's database (psycopg 3), its tables looked for in `schema` only."""
    from sqlalchemy.engine import URL

    query = {
        "sslmode": database.ssl_mode,
        "connect_timeout": str(database.connect_timeout),
        "application_name": database.application_name,
        "options": f"-csearch_path={schema}",
    }
    if database.ssl_root_cert:
        query["sslrootcert"] = database.ssl_root_cert
    url = URL.create(
        "postgresql+psycopg",
        username=database.user,
        password=database.password,
        host=database.host,
        port=database.port,
        database=database.dbname,
        query=query,
    ).render_as_string(hide_password=False)
    register_secret(url)
    return url


FSSPEC_FILE_IO = "pyiceberg.io.fsspec.FsspecFileIO"


def file_io_properties(settings: ArchiveSettings, credentials: StorageCredentials) -> dict[str, Any]:
    """PyIceberg's FileIO over the resource's own storage and credentials: on S3, iceberg_io.py's (cellar's S3
    client writes, PyArrow's S3 filesystem reads, verifying the endpoint with spec.storage.endpointCA where set);
    fsspec's adlfs for Azure Blob Storage and gcsfs for GCS (PyIceberg's FsspecFileIO)."""
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

    properties[STORE] = register_store(S3Store.connect(storage, credentials))  # writes the files (iceberg_io.py)
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
    """A failure of the catalog's database (SQLAlchemy's errors) as cellar's error, without the URL's password."""
    detail = redact(" ".join(str(getattr(exc, "orig", exc) or type(exc).__name__).split()))[:500]
    if "permission denied" in detail or "password authentication failed" in detail:
        return PermanentError(f"{field}: the Iceberg catalog {what}: {detail}", reason=Reason.CATALOG_ACCESS_DENIED)
    return RetryableError(f"{field}: the Iceberg catalog {what}: {detail}", reason=Reason.CATALOG_UNAVAILABLE)


def iceberg_schema(info: TableInfo) -> Any:
    """The Iceberg schema of the archived table's columns: the Arrow types of the Parquet archive (encoding.py),
    converted by PyIceberg (int2 widens to int; docs/design.md lists every type)."""
    from pyiceberg.catalog import Catalog
    from pyiceberg.schema import assign_fresh_schema_ids

    # Converted without field ids, then numbered as create_table numbers them: the partition spec names its
    # source column by id.
    return assign_fresh_schema_ids(Catalog._convert_schema_if_needed(schema_for(info.columns)))


def _partition_spec(schema: Any, column: str, transform_name: str) -> Any:
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.transforms import DayTransform, MonthTransform, YearTransform

    transform: Any = {"day": DayTransform(), "month": MonthTransform(), "year": YearTransform()}[transform_name]
    source = schema.find_field(column)
    return PartitionSpec(
        PartitionField(source_id=source.field_id, field_id=1000, transform=transform, name=f"{column}_{transform_name}")
    )


@dataclass(frozen=True)
class CatalogAccess:
    """How a run reaches its Iceberg table: the SQL catalog's database or the REST catalog's credentials, the
    store's credentials for the data files (under `prefix_key`, the archive's folder)."""

    database: DatabaseSettings | None
    credentials: StorageCredentials
    prefix_key: str
    rest: RestCredentials | None = None


@contextlib.contextmanager
def catalog_failures(iceberg: IcebergSettings, what: str) -> Iterator[None]:
    """The catalog's failures within as cellar's errors, naming the field to fix: SQLAlchemy's (SQL catalog) or
    HTTP's (REST catalog). A lost commit race or a missing table passes through to the caller."""
    from sqlalchemy.exc import SQLAlchemyError

    rest = iceberg.catalog.rest
    if rest is not None:
        with rest_failures(rest, what):
            yield
        return
    try:
        yield
    except SQLAlchemyError as exc:
        raise _catalog_failure(exc, what, _catalog_field(iceberg)) from None


def open_catalog(settings: ArchiveSettings, access: CatalogAccess) -> Any:
    """The archive's catalog, reached: PyIceberg's SqlCatalog (its schema made first) or RestCatalog."""
    from pyiceberg.catalog.sql import SqlCatalog

    iceberg = settings.iceberg
    assert iceberg is not None
    file_io = file_io_properties(settings, access.credentials)
    rest = iceberg.catalog.rest
    if rest is not None:
        return open_rest_catalog(iceberg.catalog.name, rest, access.rest or RestCredentials(), file_io)
    assert access.database is not None
    prepare_catalog_schema(access.database, iceberg)
    with catalog_failures(iceberg, "could not be opened"):
        return SqlCatalog(iceberg.catalog.name, uri=catalog_uri(access.database, iceberg.catalog.schema), **file_io)


class IcebergTable:
    """One archive's Iceberg table in its catalog. The run's lanes write their data files side by side and commit
    one at a time: committing side by side, every commit but one would lose the race. A commit that loses to
    another writer (CommitFailedException) is tried again with the same files."""

    def __init__(self, catalog: Any, iceberg: IcebergSettings, info: TableInfo, relation: str) -> None:
        self.catalog = catalog
        self.relation = relation
        self.iceberg = iceberg
        self.info = info
        self.identifier = (iceberg.namespace, iceberg.table)
        self.commit_retries = 0
        self.layout: LayoutChoice | None = None  # partitionBy: Auto, resolved by open()
        self.schema_changes: dict[str, list[str]] = {}  # what open() changed in the table's schema, for the summary
        self._appending = threading.Lock()
        self._base: Any = None  # the table as this run's last commit left it (commits only, under _appending)
        self._writing = threading.local()  # each lane's table for writing data files

    @classmethod
    def open(
        cls,
        settings: ArchiveSettings,
        info: TableInfo,
        access: CatalogAccess,
        *,
        create: bool = True,
        choose: Chooser | None = None,
    ) -> IcebergTable:
        """Open the catalog, make the namespace and the table when missing (`create`; else a missing table is
        refused), and check an existing table's schema and partitioning against the archived table's. Nothing is
        deleted from PostgreSQL before this passes."""
        iceberg = settings.iceberg
        assert iceberg is not None
        table = cls(open_catalog(settings, access), iceberg, info, settings.relation)
        with catalog_failures(iceberg, "failed a request"):
            table._make_or_check(table_location(settings, access.prefix_key), create, choose)
        return table

    def _make_or_check(self, location: str, create: bool, choose: Chooser | None = None) -> None:
        from pyiceberg.exceptions import NoSuchTableError, TableAlreadyExistsError

        expected = iceberg_schema(self.info)
        self.catalog.create_namespace_if_not_exists(self.iceberg.namespace)
        try:
            table = self.catalog.load_table(self.identifier)
        except NoSuchTableError:
            if not create:
                raise PermanentError(
                    f"spec.iceberg.table: the catalog holds no Iceberg table {self.iceberg.identifier}",
                    reason=Reason.NOT_FOUND,
                ) from None
            as_specified = self.iceberg
            self._choose_partitioning(choose)
            partition_spec = _partition_spec(expected, self.info.timestamp_column.name, self.iceberg.partition_by)
            try:
                self.catalog.create_table(
                    self.identifier,
                    schema=expected,
                    location=location,
                    partition_spec=partition_spec,
                    properties={**self.iceberg.table_properties(), RELATION_PROPERTY: self.relation},
                )
                log.info("Iceberg table created", extra={"table": self.iceberg.identifier, "location": location})
                return
            except TableAlreadyExistsError:  # another run created it first: its partitioning is the table's
                self.iceberg, self.layout = as_specified, None
                table = self.catalog.load_table(self.identifier)
        if create:  # an archive run appends as the table is now; unarchive reads what the table holds
            self._check(table, expected)

    def _choose_partitioning(self, choose: Chooser | None) -> None:
        """partitionBy: Auto, for a table about to be created: the transform chosen from the rows due (NothingDue
        when none are: the table is created by the first run that has rows to measure)."""
        if self.iceberg.partition_by != "Auto":
            return
        choice = choose() if choose is not None else None
        if choice is None:
            raise NothingDue(self.iceberg.identifier)
        self.iceberg = replace(self.iceberg, partition_by=choice.transform)
        self.layout = choice

    def _adopt_partitioning(self, table: Any) -> None:
        """partitionBy: Auto, for a table that exists: its partition spec says the transform, kept as it is."""
        if self.iceberg.partition_by != "Auto":
            return
        schema, column = table.schema(), self.info.timestamp_column.name
        found = [str(f.transform) for f in table.spec().fields if schema.find_column_name(f.source_id) == column]
        if len(table.spec().fields) == 1 and found and found[0] in PARTITIONINGS_OF:
            self.iceberg = replace(self.iceberg, partition_by=found[0])
            self.layout = LayoutChoice(PARTITIONINGS_OF[found[0]], "kept: the Iceberg table's partition spec")

    def _is_ours(self, table: Any) -> bool:
        """Whether cellar made the table for this source, or appended its rows to it: its schema then follows the
        source's changes (iceberg_schema.py); any other table must match as it is."""
        if table.properties.get(RELATION_PROPERTY) == self.relation:
            return True
        return any(True for _ in self.batch_snapshots())

    def _follow_source(self, table: Any, expected: Any) -> None:
        """The source's columns changed since the table was made: the changes Iceberg allows applied in one schema
        update, any other refused (SchemaMismatch), before any row moves."""
        changes = plan_changes(table.schema(), expected)
        if changes.refused:
            raise refusal(self.iceberg.identifier, self.relation, changes.refused)
        if changes.any:
            evolve(table, changes)
            self.schema_changes = changes.describe()

    def _check(self, table: Any, expected: Any) -> None:
        self._adopt_partitioning(table)
        found = table.schema().as_arrow()
        wanted = expected.as_arrow()
        if not found.equals(wanted, check_metadata=False) and self._is_ours(table):
            self._follow_source(table, expected)
        elif not found.equals(wanted, check_metadata=False):
            differs = [
                f"{f.name} ({f.type})"
                for f in wanted
                if f.name not in found.names or found.field(f.name).type != f.type
            ] + [f"{name} (not in the source)" for name in found.names if name not in wanted.names]
            raise PermanentError(
                f"spec.iceberg.table: the Iceberg table {self.iceberg.identifier} exists with another schema than the "
                f"archived table's columns give; these differ: {', '.join(differs) or 'the order of the columns'}. "
                "Name another table (spec.iceberg.table), or drop that one",
                reason=Reason.ICEBERG_TABLE_MISMATCH,
            )
        fields = table.spec().fields
        column = self.info.timestamp_column.name
        source = table.schema().find_field(column).field_id
        transforms = [str(f.transform) for f in fields if f.source_id == source]
        if len(fields) != 1 or transforms != [self.iceberg.partition_by]:
            found_spec = ", ".join(f"{f.transform}({table.schema().find_column_name(f.source_id)})" for f in fields)
            raise PermanentError(
                f"spec.iceberg.partitionBy: the Iceberg table {self.iceberg.identifier} is partitioned by "
                f"{found_spec or 'nothing'}, not by {self.iceberg.partition_by}({column}); set partitionBy to match, "
                "or name another table",
                reason=Reason.ICEBERG_TABLE_MISMATCH,
            )

    def load(self) -> Any:
        with catalog_failures(self.iceberg, f"failed to load the table {self.iceberg.identifier}"):
            return self.catalog.load_table(self.identifier)

    def state(self) -> tuple[int, int, int, str]:
        """(snapshots kept, data files, their bytes, the current snapshot's id) of the table now, from the current
        snapshot's summary totals; zeros before the first snapshot."""
        metadata = self.load().metadata
        current = metadata.current_snapshot()
        summary = current.summary if current is not None and current.summary is not None else {}
        return (
            len(metadata.snapshots),
            int(summary.get("total-data-files", "0")),
            int(summary.get("total-files-size", "0")),
            str(current.snapshot_id) if current is not None else "",
        )

    def append(self, rows: pa.Table, batch_id: str, run_id: str) -> AppendedSnapshot:
        """Write `rows` as data files, then commit them as one snapshot whose summary names the batch. Lanes write
        their files side by side and take turns only for the commit; a commit that another writer beat is tried
        again, with the same files, on the table as it is then."""
        properties = {BATCH_PROPERTY: batch_id, RUN_PROPERTY: run_id, RELATION_PROPERTY: self.relation}
        with catalog_failures(self.iceberg, f"failed to write batch {batch_id}'s data files"):
            data_files = self._write_data_files(rows)
        # The catalog's commit may have happened before its connection failed (or a REST catalog's answer was
        # lost): the run stops, and the next one finds the snapshot, if there is one, by its batch id.
        with self._appending, catalog_failures(self.iceberg, f"failed the commit of batch {batch_id}"):
            return self._commit(data_files, batch_id, properties)

    def _write_data_files(self, rows: pa.Table) -> list[Any]:
        """The batch's Parquet data files, written under the table's location (iceberg_writes.py), not yet in any
        snapshot: files of a batch whose commit never happens are orphans, which maintenance removes."""
        from pyiceberg.io.pyarrow import _check_pyarrow_schema_compatible

        # Only the table's schema, partition spec, location and properties matter here, so each lane writes with
        # the table as it first loaded it. Its own copy: PyIceberg caches in the metadata object as it reads it,
        # and a commit copies the committing table's metadata, which must not change meanwhile.
        table = getattr(self._writing, "table", None)
        if table is None:
            table = self._writing.table = self.load()
        metadata = table.metadata
        _check_pyarrow_schema_compatible(
            metadata.schema(), provided_schema=rows.schema, format_version=metadata.format_version
        )
        # Written once; each commit attempt commits the same list (the two-stage write PyIceberg's
        # Transaction.append documents for retried commits).
        return write_data_files(metadata, table.io, rows) if rows.num_rows else []

    def _commit(self, data_files: list[Any], batch_id: str, properties: dict[str, str]) -> AppendedSnapshot:
        from pyiceberg.exceptions import CommitFailedException

        for attempt in range(COMMIT_ATTEMPTS):
            # The table as this run's last commit left it: when another writer has committed since, the commit
            # fails and the next attempt loads the table anew.
            table = self._base or self.load()
            failpoint("archive.iceberg-append")  # a test holds a run here while another writer commits
            try:
                with (
                    table.transaction() as transaction,
                    transaction.update_snapshot(snapshot_properties=properties).fast_append() as append,
                ):
                    for data_file in data_files:
                        append.append_data_file(data_file)
            except CommitFailedException as exc:
                self._base = None
                self.commit_retries += 1
                log.info("Iceberg commit conflict; trying again", extra={"attempt": attempt + 1, "error": str(exc)})
                time.sleep(random.uniform(0.02, 0.1 * 2 ** min(attempt, 5)))  # noqa: S311 (jitter, not secrecy)
                continue
            self._base = table
            return self._appended(table, batch_id)
        raise RetryableError(
            f"the Iceberg table {self.iceberg.identifier} changed under each of {COMMIT_ATTEMPTS} commits of batch "
            f"{batch_id} (other writers); nothing of it was recorded, and the next run tries again",
            reason=Reason.CATALOG_CONFLICT,
        )

    def _appended(self, table: Any, batch_id: str) -> AppendedSnapshot:
        snapshot = table.current_snapshot()
        if snapshot is None or snapshot.summary is None or snapshot.summary.get(BATCH_PROPERTY) != batch_id:
            self._base = None
            raise RetryableError(
                f"the Iceberg table {self.iceberg.identifier}'s current snapshot after batch {batch_id}'s append "
                "is not that batch's",
                reason=Reason.CATALOG_CONFLICT,
            )
        summary = snapshot.summary
        return AppendedSnapshot(
            snapshot.snapshot_id,
            str(table.metadata_location),
            int(summary.get("added-data-files", "0")),
            int(summary.get("added-files-size", "0")),
        )

    def batch_snapshots(self) -> Iterator[tuple[str, Any]]:
        """(batch id, snapshot) of every snapshot cellar committed of this source table that the table still keeps."""
        for snapshot in self.load().metadata.snapshots:
            summary = snapshot.summary
            if summary is None or summary.get(RELATION_PROPERTY) != self.relation:
                continue
            batch = summary.get(BATCH_PROPERTY)
            if batch:
                yield batch, snapshot

    def rows_added_by(self, snapshot: Any, columns: list[str]) -> pa.Table:
        """The `columns` of the rows `snapshot` added: its own data files, read from its manifests."""
        from pyiceberg.manifest import ManifestEntryStatus

        table = self.load()
        io = table.io
        pieces = []
        for manifest in snapshot.manifests(io):
            if manifest.added_snapshot_id != snapshot.snapshot_id:
                continue
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=True):
                if entry.status == ManifestEntryStatus.ADDED and entry.snapshot_id == snapshot.snapshot_id:
                    with io.new_input(entry.data_file.file_path).open() as stream:
                        pieces.append(pq.read_table(stream, columns=columns))
        if not pieces:
            return pa.table({name: pa.array([], pa.string()) for name in columns})
        return pa.concat_tables(pieces, promote_options="permissive")

    def scan(self, start: datetime, end: datetime, snapshot_id: int | None = None) -> Any:
        """The rows with start <= timestamp < end, the filter pushed down (partitions and files pruned)."""
        from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

        column = self.info.timestamp_column
        if column.arrow_kind == "timestamptz":
            low, high = start.isoformat(), end.isoformat()
        else:  # a timestamp without time zone compares with wall time
            low, high = start.replace(tzinfo=None).isoformat(), end.replace(tzinfo=None).isoformat()
        # PyIceberg's predicates take (term, literal) positionally at run time; their pydantic fields read otherwise.
        row_filter = And(
            GreaterThanOrEqual(column.name, low),  # type: ignore[call-arg, arg-type]
            LessThan(column.name, high),  # type: ignore[call-arg, arg-type]
        )
        return self.load().scan(row_filter=row_filter, snapshot_id=snapshot_id)

    def read_task(self, scan: Any, task: Any) -> pa.Table:
        """The rows of one planned file of `scan` that pass its filter."""
        from pyiceberg.io.pyarrow import ArrowScan

        table = scan.table_metadata
        return ArrowScan(table, scan.io, scan.projection(), scan.row_filter, scan.case_sensitive).to_table([task])
