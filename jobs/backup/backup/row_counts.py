"""A dump's row counts for its manifest: the tables the dump contains (spec.schemas, excludeSchemas and
excludeTableData applied as pg_dump applies them), and for a streamed dump their rows counted in the dump's own
snapshot beside pg_dump (RowCounter). A directory dump reads its counts from pg_dump's files (file_counts.py)."""

from __future__ import annotations

import fnmatch
import threading
from dataclasses import dataclass

import psycopg
from psycopg import sql

from common.db import RECOVERY_CONFLICT
from common.errors import PermanentError, RecoveryConflict
from common.reasons import Reason
from jobs.backup.catalog import TableCount
from jobs.backup.settings import DumpOptions

_TABLES = """
SELECT n.nspname, c.relname, c.oid
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


def _included(schema: str, table: str, options: DumpOptions) -> bool:
    if options.schemas and not any(fnmatch.fnmatchcase(schema, p) for p in options.schemas):
        return False
    return not any(fnmatch.fnmatchcase(schema, p) for p in options.exclude_schemas)


@dataclass(frozen=True)
class ListedTable:
    """A table the dump contains, as the manifest lists it; `data_excluded`: its rows are left out
    (spec.excludeTableData), so the dump holds its definition only."""

    oid: int
    schema: str
    name: str
    data_excluded: bool


def listed_tables(conn: psycopg.Connection[tuple[object, ...]], options: DumpOptions) -> list[ListedTable]:
    """Every table the dump contains, in the manifest's order (schema, name)."""
    listed = []
    for schema, table, oid in conn.execute(_TABLES).fetchall():
        schema_name, table_name = str(schema), str(table)
        if not _included(schema_name, table_name, options):
            continue
        qualified = f"{schema_name}.{table_name}"
        excluded = any(
            fnmatch.fnmatchcase(qualified, p) or fnmatch.fnmatchcase(table_name, p) for p in options.exclude_table_data
        )
        listed.append(ListedTable(int(str(oid)), schema_name, table_name, excluded))
    return listed


def count_rows(conn: psycopg.Connection[tuple[object, ...]], options: DumpOptions) -> list[TableCount]:
    """Rows of every table the dump contains, in the connection's current snapshot."""
    counts = []
    for table in listed_tables(conn, options):
        if table.data_excluded:
            counts.append(TableCount(table.schema, table.name, 0))  # definition only: no rows in the dump
            continue
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(table.schema), sql.Identifier(table.name))
        with conn.transaction():  # a savepoint: a failing count must not abort the snapshot's transaction
            row = conn.execute(query).fetchone()
        counts.append(TableCount(table.schema, table.name, int(str(row[0])) if row else 0))
    return counts


class RowCounter:
    """Counts rows on the snapshot's connection in a thread, beside pg_dump.

    `start()` is called once pg_dump has sent its first bytes: it has imported the snapshot by then,
    so nothing our transaction does can spoil that import.
    """

    def __init__(self, conn: psycopg.Connection[tuple[object, ...]], options: DumpOptions) -> None:
        self.conn = conn
        self.counts: list[TableCount] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._count, args=(options,), name="row-counts", daemon=True)

    def start(self) -> None:
        if self._thread.ident is None:
            self._thread.start()

    def _count(self, options: DumpOptions) -> None:
        try:
            self.counts = count_rows(self.conn, options)
        except BaseException as exc:  # noqa: BLE001 (reported after pg_dump's own outcome)
            self.error = exc

    def result(self) -> list[TableCount]:
        self.start()  # an empty dump never streamed a byte
        self._thread.join()
        if self.error is not None:
            if RECOVERY_CONFLICT in str(self.error):
                raise RecoveryConflict(f"counting rows in the dump's snapshot was cancelled: {self.error}")
            raise PermanentError(
                f"counting rows in the dump's snapshot failed: {self.error}", reason=Reason.COUNT_FAILED
            )
        return self.counts

    def stop(self) -> None:
        if self._thread.ident is None:
            return
        if self._thread.is_alive():  # the dump failed: stop counting rather than wait for a long count(*)
            self.conn.cancel_safe()
        self._thread.join(timeout=30)
