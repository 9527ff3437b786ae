"""The rows of a COPY TO, read from libpq as they arrive."""

from __future__ import annotations

import psycopg

from jobs.archive.table import Connection


def read_copy(conn: Connection, copy: psycopg.Copy) -> bytearray:
    """All the data of a COPY TO.

    The server sends one message per row. The rows libpq has already received are taken from it
    directly (get_copy_data without waiting), which costs less CPU per row than psycopg's read; when
    none is buffered, psycopg's read waits for the next one (and ends the COPY when it is the end).
    """
    pgconn = conn.pgconn
    data = bytearray()
    while True:
        size, buffered = pgconn.get_copy_data(1)
        if size > 0:
            data += buffered
            continue
        if size < 0:  # the end was buffered too: take the COPY's result, as psycopg's read would
            finish_copy_out(conn)
            return data
        waited = copy.read()  # nothing buffered
        if not waited:
            return data
        data += waited


def finish_copy_out(conn: Connection) -> None:
    """After get_copy_data reported the end of a COPY TO: read its result; raise the server's error."""
    results = []
    while (result := conn.pgconn.get_result()) is not None:
        results.append(result)
    if not results:
        raise psycopg.OperationalError("the COPY ended without a result")
    if results[0].status != psycopg.pq.ExecStatus.COMMAND_OK:
        raise psycopg.errors.error_from_result(results[0], encoding=conn.info.encoding)
