"""An archive's Iceberg table through PyIceberg: its catalog opened, the table made or checked, batches appended as
snapshots that carry cellar's batch id, and what a snapshot added read back.

The SQL catalog keeps its two tables in a PostgreSQL schema of cellar's (spec.iceberg.catalog.schema): the
catalog's connection sets search_path to it. A REST catalog is opened by iceberg_rest.py. Either way the data and
metadata files go to the resource's own S3 storage, under `<prefix>/<schema>.<table>/iceberg/`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
from common.secrets import DatabaseSettings, StorageCredentials
from jobs.archive.encoding import schema_for
from jobs.archive.iceberg_rest import RestCredentials, open_rest_catalog, rest_failures
from jobs.archive.iceberg_settings import IcebergSettings
from jobs.archive.settings import ArchiveSettings
from jobs.archive.table import TableInfo

log = logging.getLogger(__name__)

BATCH_PROPERTY = "cellar.batch-id"  # in each snapshot's summary: the ledger's batch id
RUN_PROPERTY = "cellar.run-id"
# The source table (schema.table) whose rows a snapshot holds: a run resolves only its own table's snapshots, even
# where two archives append to one Iceberg table.
RELATION_PROPERTY = "cellar.relation"
COMMIT_ATTEMPTS = 12  # appends that lose the race for the catalog's commit before the run gives up
_ACCESS_REASONS = {
    Reason.AUTHENTICATION_FAILED,
    Reason.DATABASE_NOT_FOUND,
    Reason.DATABASE_ACCESS_DENIED,
    Reason.CERTIFICATE_REJECTED,
}


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


def file_io_properties(settings: ArchiveSettings, credentials: StorageCredentials) -> dict[str, str]:
    """PyIceberg's S3 FileIO over the resource's own storage and keys."""
    storage = settings.storage
    properties = {"s3.region": storage.region}
    if storage.endpoint:
        properties["s3.endpoint"] = storage.endpoint
    if not storage.force_path_style and not storage.endpoint:
        properties["s3.force-virtual-addressing"] = "true"
    if credentials.access_key_id and credentials.secret_access_key:
        properties["s3.access-key-id"] = credentials.access_key_id
        properties["s3.secret-access-key"] = credentials.secret_access_key
    if credentials.session_token:
        properties["s3.session-token"] = credentials.session_token
    return properties


def table_location(settings: ArchiveSettings, prefix_key: str) -> str:
    """`prefix_key`: the store's key of the table's folder (ObjectStore.key(relation))."""
    return f"s3://{settings.storage.bucket}/{prefix_key}/iceberg"


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
    """One archive's Iceberg table in its catalog. The run's lanes append one at a time (each on the table as it is
    then): side by side, every commit but one would lose the race and write its files again. A commit that loses
    to another writer (CommitFailedException) is tried again."""

    def __init__(self, catalog: Any, iceberg: IcebergSettings, info: TableInfo, relation: str) -> None:
        self.catalog = catalog
        self.relation = relation
        self.iceberg = iceberg
        self.info = info
        self.identifier = (iceberg.namespace, iceberg.table)
        self.commit_retries = 0
        self._appending = threading.Lock()

    @classmethod
    def open(
        cls, settings: ArchiveSettings, info: TableInfo, access: CatalogAccess, *, create: bool = True
    ) -> IcebergTable:
        """Open the catalog, make the namespace and the table when missing (`create`; else a missing table is
        refused), and check an existing table's schema and partitioning against the archived table's. Nothing is
        deleted from PostgreSQL before this passes."""
        iceberg = settings.iceberg
        assert iceberg is not None
        table = cls(open_catalog(settings, access), iceberg, info, settings.relation)
        with catalog_failures(iceberg, "failed a request"):
            table._make_or_check(table_location(settings, access.prefix_key), create)
        return table

    def _make_or_check(self, location: str, create: bool) -> None:
        from pyiceberg.exceptions import NoSuchTableError, TableAlreadyExistsError

        expected = iceberg_schema(self.info)
        partition_spec = _partition_spec(expected, self.info.timestamp_column.name, self.iceberg.partition_by)
        self.catalog.create_namespace_if_not_exists(self.iceberg.namespace)
        try:
            table = self.catalog.load_table(self.identifier)
        except NoSuchTableError:
            if not create:
                raise PermanentError(
                    f"spec.iceberg.table: the catalog holds no Iceberg table {self.iceberg.identifier}",
                    reason=Reason.NOT_FOUND,
                ) from None
            try:
                self.catalog.create_table(
                    self.identifier,
                    schema=expected,
                    location=location,
                    partition_spec=partition_spec,
                    properties=self.iceberg.table_properties(),
                )
                log.info("Iceberg table created", extra={"table": self.iceberg.identifier, "location": location})
                return
            except TableAlreadyExistsError:
                table = self.catalog.load_table(self.identifier)
        if create:  # an archive run appends as the table is now; unarchive reads what the table holds
            self._check(table, expected)

    def _check(self, table: Any, expected: Any) -> None:
        found = table.schema().as_arrow()
        wanted = expected.as_arrow()
        if not found.equals(wanted, check_metadata=False):
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

    def append(self, rows: pa.Table, batch_id: str, run_id: str) -> AppendedSnapshot:
        """Commit `rows` as one snapshot whose summary names the batch; a commit that another writer beat is
        tried again on the table as it is then (the data files are written again: the lost ones are orphans)."""
        properties = {BATCH_PROPERTY: batch_id, RUN_PROPERTY: run_id, RELATION_PROPERTY: self.relation}
        # The catalog's commit may have happened before its connection failed (or a REST catalog's answer was
        # lost): the run stops, and the next one finds the snapshot, if there is one, by its batch id.
        with self._appending, catalog_failures(self.iceberg, f"failed the commit of batch {batch_id}"):
            return self._append(rows, batch_id, properties)

    def _append(self, rows: pa.Table, batch_id: str, properties: dict[str, str]) -> AppendedSnapshot:
        from pyiceberg.exceptions import CommitFailedException

        for attempt in range(COMMIT_ATTEMPTS):
            table = self.load()
            failpoint("archive.iceberg-append")  # a test holds a run here while another writer commits
            try:
                table.append(rows, snapshot_properties=properties)
            except CommitFailedException as exc:
                self.commit_retries += 1
                log.info("Iceberg commit conflict; trying again", extra={"attempt": attempt + 1, "error": str(exc)})
                time.sleep(random.uniform(0.02, 0.1 * 2 ** min(attempt, 5)))  # noqa: S311 (jitter, not secrecy)
                continue
            snapshot = table.current_snapshot()
            if snapshot is None or snapshot.summary is None or snapshot.summary.get(BATCH_PROPERTY) != batch_id:
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
        raise RetryableError(
            f"the Iceberg table {self.iceberg.identifier} changed under each of {COMMIT_ATTEMPTS} commits of batch "
            f"{batch_id} (other writers); nothing of it was recorded, and the next run tries again",
            reason=Reason.CATALOG_CONFLICT,
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
