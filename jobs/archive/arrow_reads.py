"""Whole partitions read straight into Arrow columns through Apache Arrow's ADBC PostgreSQL driver.

The driver asks the server for `COPY ... TO STDOUT (FORMAT binary)` and builds the columns in C++. On the CSV
path the server formats every value as text and the job parses it back: read in binary, the same rows cost
PostgreSQL a fifth to a quarter less CPU and take about two thirds of the time (benchmarks/RESULTS.md).

The reads run on connections of their own, next to the transaction that holds the partition's EXCLUSIVE lock:
a read (ACCESS SHARE) does not conflict with that lock, and no writer can change the table while it is held,
so a read started after the lock sees exactly the rows that transaction counts and drops. Each read commits
on its own (autocommit), so nothing it holds outlives it and the DROP does not wait for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa
from psycopg.conninfo import make_conninfo

from common.db import connection_failure, libpq_params, translate_connect_error
from common.errors import CellarError
from common.redact import redact
from common.secrets import DatabaseSettings
from jobs.archive.encoding import arrow_to_table
from jobs.archive.table import Column


class ArrowReader:
    """One ADBC connection to the archived table's database."""

    def __init__(self, connection: adbc.Connection) -> None:
        self._connection = connection

    def fetch(self, query: str) -> pa.Table:
        """The rows of `query` as the driver types them (encoding.arrow_to_table types them as cellar does)."""
        try:
            with self._connection.cursor() as cursor:
                cursor.execute(query)
                table: pa.Table = cursor.fetch_arrow_table()
                return table
        except adbc_driver_manager.OperationalError as exc:
            raise connection_failure("reading rows through the Arrow connection failed", exc) from None

    def close(self) -> None:
        with contextlib.suppress(adbc_driver_manager.Error):  # a connection that died has nothing to close
            self._connection.close()


def open_reader(settings: DatabaseSettings, *, application_name: str | None = None) -> ArrowReader:
    """A connection with the same settings (host, TLS, credentials) as the job's psycopg connections."""
    params = libpq_params(settings, application_name=application_name)
    params["options"] = "-c statement_timeout=0"  # a partition's read takes as long as the partition needs
    try:
        return ArrowReader(adbc.connect(make_conninfo(**params), autocommit=True))
    except adbc_driver_manager.Error as exc:
        raise translate_connect_error(exc, settings) from None


def readable(reader: ArrowReader, query: str, columns: Sequence[Column]) -> str | None:
    """Whether the driver returns every column of `query` (run with LIMIT 0) as the CSV path would read it;
    None when it does, else why not (the run then reads through COPY CSV)."""
    try:
        arrow_to_table(reader.fetch(query), columns)
    except CellarError as exc:
        return str(exc)
    except adbc_driver_manager.Error as exc:
        return redact(" ".join(str(exc).split()))
    return None
