"""The SQL catalog of an Iceberg archive: the two tables PyIceberg's SqlCatalog and Iceberg's JDBC catalog keep
(`iceberg_tables`, `iceberg_namespace_properties`, the same columns and keys), in cellar's schema of a PostgreSQL
database, reached through psycopg.

PyIceberg's SqlCatalog reaches the same tables through SQLAlchemy, which cost an archive run 18 MB at import (of the
60 MB more than a Parquet-mode run held) and an ORM session for each query. Any catalog that reads those tables
(PyIceberg's SqlCatalog, Spark's JDBC catalog) sees what this one writes, and the other way round.

A commit works as the Iceberg spec's catalogs do: the new metadata file is written, then the table's row is moved to
it only where the row still names the metadata file the commit was made on (compare and swap in one UPDATE), else
CommitFailedException. The commit is made on the committing table itself where the row names its metadata file (a
metadata file is never rewritten, so the table holds what it holds), without reading that file back from the store,
and the new metadata is worked out without a deep copy (iceberg_commits.py). One connection serves the catalog, in
autocommit; the statements are few and short, and one lock keeps the threads that share it in turn.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from pyiceberg.catalog import Catalog, MetastoreCatalog, PropertiesUpdateSummary
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NamespaceNotEmptyError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC
from pyiceberg.serializers import FromInputFile
from pyiceberg.table import CommitTableResponse, StagedTable, Table
from pyiceberg.table.locations import load_location_provider
from pyiceberg.table.sorting import UNSORTED_SORT_ORDER

from jobs.archive.iceberg_commits import metadata_file_bytes, staged_metadata

TABLE_TYPE = "TABLE"  # iceberg_type of a table's row (a view's, written by other catalogs, is skipped)
MINIMAL_NAMESPACE_PROPERTIES = {"exists": "true"}  # a namespace made without properties still has a row
_TABLES = (
    """CREATE TABLE IF NOT EXISTS {} (
        catalog_name VARCHAR(255) NOT NULL,
        table_namespace VARCHAR(255) NOT NULL,
        table_name VARCHAR(255) NOT NULL,
        metadata_location VARCHAR(1000),
        previous_metadata_location VARCHAR(1000),
        iceberg_type VARCHAR(5),
        PRIMARY KEY (catalog_name, table_namespace, table_name))""",
    """CREATE TABLE IF NOT EXISTS {} (
        catalog_name VARCHAR(255) NOT NULL,
        namespace VARCHAR(255) NOT NULL,
        property_key VARCHAR(255) NOT NULL,
        property_value VARCHAR(1000) NOT NULL,
        PRIMARY KEY (catalog_name, namespace, property_key))""",
)


def _like_prefix(namespace: str) -> str:
    """A LIKE pattern (escape '!') of the namespaces nested in `namespace`."""
    return namespace.replace("!", "!!").replace("_", "!_").replace("%", "!%") + ".%"


def _response(metadata: Any, location: str) -> CommitTableResponse:
    # The model's field is named by its alias in the Iceberg REST spec's JSON.
    return CommitTableResponse(**{"metadata": metadata, "metadata-location": location})


class PostgresCatalog(MetastoreCatalog):
    """An Iceberg catalog in the tables of `schema`, over the connections `connect` opens (autocommit)."""

    def __init__(self, name: str, connect: Callable[[], psycopg.Connection[Any]], schema: str, **properties: Any):
        super().__init__(name, **properties)
        self._connect = connect
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.RLock()
        self._committing = threading.local()  # the table each thread is committing, if any
        self._tables = sql.Identifier(schema, "iceberg_tables")
        self._properties = sql.Identifier(schema, "iceberg_namespace_properties")
        self._typed = self._make_tables()  # whether iceberg_tables has the iceberg_type column

    @contextmanager
    def _cursor(self) -> Iterator[psycopg.Cursor[Any]]:
        """A cursor on the catalog's connection, opened again if it was lost; the threads take turns."""
        with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = self._connect()
            with self._conn.cursor() as cursor:
                yield cursor

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        with self._cursor() as cursor, cursor.connection.transaction():
            yield cursor

    def _make_tables(self) -> bool:
        with self._cursor() as cursor:
            for statement, table in zip(_TABLES, (self._tables, self._properties), strict=True):
                try:
                    with cursor.connection.transaction():
                        cursor.execute(sql.SQL(statement).format(table))
                except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
                    pass  # another run made it at the same moment
            cursor.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(self._tables))
            return "iceberg_type" in [column.name for column in cursor.description or []]

    def _type_filter(self) -> sql.Composable:
        if not self._typed:  # the first version of the tables: every row is a table's
            return sql.SQL("")
        return sql.SQL(" AND (iceberg_type = {} OR iceberg_type IS NULL)").format(sql.Literal(TABLE_TYPE))

    def _insert_table(self, cursor: psycopg.Cursor[Any], namespace: str, table_name: str, location: str) -> None:
        columns = ["catalog_name", "table_namespace", "table_name", "metadata_location"]
        values = [self.name, namespace, table_name, location]
        if self._typed:
            columns.append("iceberg_type")
            values.append(TABLE_TYPE)
        statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            self._tables,
            sql.SQL(", ").join(map(sql.Identifier, columns)),
            sql.SQL(", ").join(sql.Placeholder() * len(values)),
        )
        try:
            with cursor.connection.transaction():
                cursor.execute(statement, values)
        except psycopg.errors.UniqueViolation:
            raise TableAlreadyExistsError(f"Table {namespace}.{table_name} already exists") from None

    def _metadata_location(self, identifier: str | tuple[str, ...]) -> tuple[tuple[str, ...], str]:
        """(the table's identifier, its metadata file), or NoSuchTableError."""
        namespace = Catalog.namespace_to_string(Catalog.namespace_from(identifier))
        table_name = Catalog.table_name_from(identifier)
        statement = (
            sql.SQL(
                "SELECT metadata_location FROM {} WHERE catalog_name = %s AND table_namespace = %s AND table_name = %s"
            ).format(self._tables)
            + self._type_filter()
        )
        with self._cursor() as cursor:
            row = cursor.execute(statement, (self.name, namespace, table_name)).fetchone()
        if row is None or not row[0]:
            raise NoSuchTableError(f"Table does not exist: {namespace}.{table_name}")
        return (*Catalog.identifier_to_tuple(namespace), table_name), str(row[0])

    def load_table(self, identifier: str | tuple[str, ...]) -> Table:
        identifier, location = self._metadata_location(identifier)
        committing = getattr(self._committing, "table", None)
        if committing is not None and committing.metadata_location == location and committing.name() == identifier:
            return committing  # type: ignore[no-any-return]
        io = self._load_file_io(location=location)
        metadata = FromInputFile.table_metadata(io.new_input(location))
        return Table(identifier, metadata, location, io=self._load_file_io(metadata.properties, location), catalog=self)

    def create_table(
        self,
        identifier: str | tuple[str, ...],
        schema: Any,
        location: str | None = None,
        partition_spec: Any = UNPARTITIONED_PARTITION_SPEC,
        sort_order: Any = UNSORTED_SORT_ORDER,
        properties: Any = None,
    ) -> Table:
        namespace = Catalog.namespace_from(identifier)
        if not self.namespace_exists(namespace):
            raise NoSuchNamespaceError(f"Namespace does not exist: {namespace}")
        staged = self._create_staged_table(identifier, schema, location, partition_spec, sort_order, properties or {})
        self._write_metadata(staged.metadata, staged.io, staged.metadata_location)
        with self._cursor() as cursor:
            table_name = Catalog.table_name_from(identifier)
            self._insert_table(cursor, Catalog.namespace_to_string(namespace), table_name, staged.metadata_location)
        return self.load_table(identifier)

    def register_table(
        self, identifier: str | tuple[str, ...], metadata_location: str, overwrite: bool = False
    ) -> Table:
        if overwrite:
            raise NotImplementedError("register_table: overwrite is not supported by the SQL catalog")
        namespace = Catalog.namespace_from(identifier)
        if not self.namespace_exists(namespace):
            raise NoSuchNamespaceError(f"Namespace does not exist: {namespace}")
        with self._cursor() as cursor:
            table_name = Catalog.table_name_from(identifier)
            self._insert_table(cursor, Catalog.namespace_to_string(namespace), table_name, metadata_location)
        return self.load_table(identifier)

    def commit_table(
        self, table: Table, requirements: tuple[Any, ...], updates: tuple[Any, ...]
    ) -> CommitTableResponse:
        self._committing.table = table
        try:
            try:
                current: Table | None = self.load_table(table.name())
            except NoSuchTableError:
                current = None
        finally:
            self._committing.table = None
        staged = self._update_and_stage_table(current, table.name(), requirements, updates)
        if current is not None and staged.metadata == current.metadata:
            return _response(current.metadata, current.metadata_location)
        self._write_metadata(staged.metadata, staged.io, staged.metadata_location)
        namespace = Catalog.namespace_to_string(Catalog.namespace_from(table.name()))
        table_name = Catalog.table_name_from(table.name())
        with self._cursor() as cursor:
            if current is None:
                self._insert_table(cursor, namespace, table_name, staged.metadata_location)
            else:
                self._swap(cursor, (namespace, table_name), current.metadata_location, staged.metadata_location)
        return _response(staged.metadata, staged.metadata_location)

    def _swap(self, cursor: psycopg.Cursor[Any], name: tuple[str, str], base: str, new: str) -> None:
        """Point the table's row at `new` where it still names `base`; else another writer committed first."""
        statement = (
            sql.SQL(
                "UPDATE {} SET metadata_location = %s, previous_metadata_location = %s WHERE catalog_name = %s"
                " AND table_namespace = %s AND table_name = %s AND metadata_location = %s"
            ).format(self._tables)
            + self._type_filter()
        )
        cursor.execute(statement, (new, base, self.name, *name, base))
        if cursor.rowcount < 1:
            raise CommitFailedException(f"Table has been updated by another process: {'.'.join(name)}")

    def _update_and_stage_table(
        self,
        current_table: Table | None,
        table_identifier: Any,
        requirements: tuple[Any, ...],
        updates: tuple[Any, ...],
    ) -> StagedTable:
        if current_table is None:  # a table made by its first commit: PyIceberg's own (validated in full)
            return super()._update_and_stage_table(current_table, table_identifier, requirements, updates)
        for requirement in requirements:
            requirement.validate(current_table.metadata)
        metadata = staged_metadata(current_table.metadata, updates, current_table.metadata_location)
        version = self._parse_metadata_version(current_table.metadata_location) + 1
        location = load_location_provider(metadata.location, metadata.properties).new_table_metadata_file_location(
            version
        )
        io = self._load_file_io(properties=metadata.properties, location=location)
        return StagedTable(
            identifier=table_identifier, metadata=metadata, metadata_location=location, io=io, catalog=self
        )

    @staticmethod
    def _write_metadata(metadata: Any, io: Any, metadata_path: str) -> None:
        # The file's name carries a fresh UUID: no need to ask the store first whether it exists (a HEAD a commit).
        with io.new_output(metadata_path).create(overwrite=True) as stream:
            stream.write(metadata_file_bytes(metadata, metadata_path))

    def drop_table(self, identifier: str | tuple[str, ...]) -> None:
        namespace = Catalog.namespace_to_string(Catalog.namespace_from(identifier))
        table_name = Catalog.table_name_from(identifier)
        statement = (
            sql.SQL("DELETE FROM {} WHERE catalog_name = %s AND table_namespace = %s AND table_name = %s").format(
                self._tables
            )
            + self._type_filter()
        )
        with self._cursor() as cursor:
            cursor.execute(statement, (self.name, namespace, table_name))
            if cursor.rowcount < 1:
                raise NoSuchTableError(f"Table does not exist: {namespace}.{table_name}")

    def rename_table(self, from_identifier: str | tuple[str, ...], to_identifier: str | tuple[str, ...]) -> Table:
        to_namespace = Catalog.namespace_to_string(Catalog.namespace_from(to_identifier))
        if not self.namespace_exists(to_namespace):
            raise NoSuchNamespaceError(f"Namespace does not exist: {to_namespace}")
        from_namespace = Catalog.namespace_to_string(Catalog.namespace_from(from_identifier))
        from_name, to_name = Catalog.table_name_from(from_identifier), Catalog.table_name_from(to_identifier)
        statement = (
            sql.SQL(
                "UPDATE {} SET table_namespace = %s, table_name = %s"
                " WHERE catalog_name = %s AND table_namespace = %s AND table_name = %s"
            ).format(self._tables)
            + self._type_filter()
        )
        with self._cursor() as cursor:
            try:
                with cursor.connection.transaction():
                    cursor.execute(statement, (to_namespace, to_name, self.name, from_namespace, from_name))
            except psycopg.errors.UniqueViolation:
                raise TableAlreadyExistsError(f"Table {to_namespace}.{to_name} already exists") from None
            if cursor.rowcount < 1:
                raise NoSuchTableError(f"Table does not exist: {from_namespace}.{from_name}")
        return self.load_table(to_identifier)

    def namespace_exists(self, namespace: str | tuple[str, ...]) -> bool:
        name = Catalog.namespace_to_string(Catalog.identifier_to_tuple(namespace), NoSuchNamespaceError)
        statement = sql.SQL(
            "SELECT 1 FROM {} WHERE catalog_name = %s AND (table_namespace = %s OR table_namespace LIKE %s ESCAPE '!')"
            " UNION ALL SELECT 1 FROM {} WHERE catalog_name = %s AND (namespace = %s OR namespace LIKE %s ESCAPE '!')"
            " LIMIT 1"
        ).format(self._tables, self._properties)
        pattern = _like_prefix(name)
        with self._cursor() as cursor:
            return (
                cursor.execute(statement, (self.name, name, pattern, self.name, name, pattern)).fetchone() is not None
            )

    def create_namespace(self, namespace: str | tuple[str, ...], properties: Any = None) -> None:
        if self.namespace_exists(namespace):
            raise NamespaceAlreadyExistsError(f"Namespace {namespace} already exists")
        name = Catalog.namespace_to_string(namespace, NoSuchNamespaceError)
        rows = [(self.name, name, key, value) for key, value in (properties or MINIMAL_NAMESPACE_PROPERTIES).items()]
        statement = sql.SQL(
            "INSERT INTO {} (catalog_name, namespace, property_key, property_value) VALUES (%s, %s, %s, %s)"
        ).format(self._properties)
        try:
            with self._transaction() as cursor:
                cursor.executemany(statement, rows)
        except psycopg.errors.UniqueViolation:  # another run made it at the same moment
            raise NamespaceAlreadyExistsError(f"Namespace {namespace} already exists") from None

    def drop_namespace(self, namespace: str | tuple[str, ...]) -> None:
        if not self.namespace_exists(namespace):
            raise NoSuchNamespaceError(f"Namespace does not exist: {namespace}")
        name = Catalog.namespace_to_string(namespace)
        if tables := self.list_tables(namespace):
            raise NamespaceNotEmptyError(f"Namespace {name} is not empty. {len(tables)} tables exist.")
        statement = sql.SQL("DELETE FROM {} WHERE catalog_name = %s AND namespace = %s").format(self._properties)
        with self._cursor() as cursor:
            cursor.execute(statement, (self.name, name))

    def list_tables(self, namespace: str | tuple[str, ...]) -> list[tuple[str, ...]]:
        if namespace and not self.namespace_exists(namespace):
            raise NoSuchNamespaceError(f"Namespace does not exist: {namespace}")
        name = Catalog.namespace_to_string(namespace)
        statement = (
            sql.SQL(
                "SELECT table_namespace, table_name FROM {} WHERE catalog_name = %s AND table_namespace = %s"
            ).format(self._tables)
            + self._type_filter()
        )
        with self._cursor() as cursor:
            rows = cursor.execute(statement, (self.name, name)).fetchall()
        return [(*Catalog.identifier_to_tuple(row[0]), row[1]) for row in rows]

    def list_namespaces(self, namespace: str | tuple[str, ...] = ()) -> list[tuple[str, ...]]:
        if namespace and not self.namespace_exists(namespace):
            raise NoSuchNamespaceError(f"Namespace does not exist: {namespace}")
        parent = Catalog.identifier_to_tuple(namespace)
        statement = sql.SQL(
            "SELECT table_namespace FROM {} WHERE catalog_name = %s"
            " UNION SELECT namespace FROM {} WHERE catalog_name = %s"
        ).format(self._tables, self._properties)
        with self._cursor() as cursor:
            names = [str(row[0]) for row in cursor.execute(statement, (self.name, self.name)).fetchall()]
        level = len(parent) + 1
        found = {Catalog.identifier_to_tuple(name) for name in names}
        return list({name[:level] for name in found if len(name) >= level and name[: level - 1] == parent})

    def load_namespace_properties(self, namespace: str | tuple[str, ...]) -> dict[str, str]:
        name = Catalog.namespace_to_string(namespace)
        if not self.namespace_exists(namespace):
            raise NoSuchNamespaceError(f"Namespace {name} does not exist")
        statement = sql.SQL(
            "SELECT property_key, property_value FROM {} WHERE catalog_name = %s AND namespace = %s"
        ).format(self._properties)
        with self._cursor() as cursor:
            return {str(k): str(v) for k, v in cursor.execute(statement, (self.name, name)).fetchall()}

    def update_namespace_properties(
        self, namespace: str | tuple[str, ...], removals: set[str] | None = None, updates: Any = None
    ) -> PropertiesUpdateSummary:
        updates = dict(updates or {})
        current = self.load_namespace_properties(namespace)
        summary = self._get_updated_props_and_update_summary(current, removals, updates)[0]
        name = Catalog.namespace_to_string(namespace)
        delete = sql.SQL("DELETE FROM {} WHERE catalog_name = %s AND namespace = %s AND property_key = ANY(%s)")
        insert = sql.SQL(
            "INSERT INTO {} (catalog_name, namespace, property_key, property_value) VALUES (%s, %s, %s, %s)"
        )
        with self._transaction() as cursor:
            gone = sorted(set(removals or ()) | set(updates))
            cursor.execute(delete.format(self._properties), (self.name, name, gone))
            cursor.executemany(insert.format(self._properties), [(self.name, name, k, v) for k, v in updates.items()])
        return summary

    # Views: none, as in PyIceberg's SqlCatalog.
    def list_views(self, namespace: str | tuple[str, ...]) -> list[tuple[str, ...]]:
        raise NotImplementedError

    def load_view(self, identifier: str | tuple[str, ...]) -> Any:
        raise NotImplementedError

    def register_view(self, identifier: str | tuple[str, ...], metadata_location: str) -> Any:
        raise NotImplementedError

    def drop_view(self, identifier: str | tuple[str, ...]) -> None:
        raise NotImplementedError

    def view_exists(self, identifier: str | tuple[str, ...]) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
