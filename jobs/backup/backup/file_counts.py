"""A directory dump's row counts, read from the files pg_dump writes instead of a count(*) of every table beside
it: the database is read once, by pg_dump.

pg_dump's directory format keeps each table's rows in a file of its own named by its TABLE DATA entry's dump id
(pg_backup_directory.c, _ArchiveEntry: "%d.dat"; no compression suffix with --compress=0). The file holds COPY
text: a line a row (a newline inside a value is written as the two characters `\\n`), then the end-of-data line
`\\.` and two empty lines (pg_dump.c, dumpTableData_copy); a table without rows has those three lines alone. Seen
so with pg_dump 14 to 18. A value `\\.` is written `\\\\.`, so the marker is only ever the file's last bytes after
a newline, or the whole file. The upload counts the newlines of each file as it reads it (LineTally); once pg_dump
has exited, its table of contents (`pg_restore --list`, which reads toc.dat alone) tells which table each file
holds: a TABLE DATA entry carries its table's OID.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg

from common.db import RECOVERY_CONFLICT
from common.errors import PermanentError, RecoveryConflict
from common.reasons import Reason
from jobs.backup.backup.row_counts import ListedTable, listed_tables
from jobs.backup.catalog import TableCount
from jobs.backup.pgtools import ClientTools
from jobs.backup.settings import DumpOptions
from jobs.backup.toc import parse_toc

log = logging.getLogger(__name__)
DATA_FILE = re.compile(r"[0-9]+\.dat")  # a TABLE DATA (or materialized view's) file; large objects' are blob_*.dat
END_OF_DATA = b"\\.\n\n\n"
_TAIL = len(END_OF_DATA) + 1  # the marker and the newline before it
LISTING_TIMEOUT_SECONDS = 600

# Every inheritance descendant of the given tables: count(*) FROM a table reads its children too (and the
# restore test counts that way), so a table's count adds theirs. A partition is a leaf: it has none.
_DESCENDANTS = """
WITH RECURSIVE tree(root, child) AS (
    SELECT inhparent, inhrelid FROM pg_inherits WHERE inhparent = ANY(%s::oid[])
    UNION
    SELECT tree.root, i.inhrelid FROM tree JOIN pg_inherits i ON i.inhparent = tree.child
)
SELECT root, child FROM tree
"""


@dataclass
class LineTally:
    """The newlines of one file and its last bytes, counted chunk by chunk as its upload reads it."""

    newlines: int = 0
    tail: bytes = b""

    def add(self, chunk: bytes) -> None:
        self.newlines += chunk.count(b"\n")
        self.tail = (self.tail + chunk[-_TAIL:])[-_TAIL:]

    def rows(self, name: str) -> int:
        """The rows of the file `name`: its lines but the end-of-data marker's three."""
        if self.tail in (END_OF_DATA, b"\n" + END_OF_DATA):
            return self.newlines - END_OF_DATA.count(b"\n")
        raise PermanentError(
            f"pg_dump's data file {name} does not end with COPY's end-of-data marker (it ends {self.tail!r}), so its "
            "rows cannot be counted; nothing was published",
            reason=Reason.COUNT_FAILED,
        )


def tally_for(name: str) -> LineTally | None:
    """A tally for a file whose lines are rows; None for the others (toc.dat, large objects)."""
    return LineTally() if DATA_FILE.fullmatch(name) else None


def table_of_contents(tools: ClientTools, staging: Path) -> str:
    """`pg_restore --list` of the dump in `staging`. It reads toc.dat alone: list before toc.dat's upload
    deletes it."""
    argv = [tools.path("pg_restore"), "--list", str(staging)]
    try:
        listed = subprocess.run(
            argv, capture_output=True, encoding="utf-8", errors="replace", check=False, timeout=LISTING_TIMEOUT_SECONDS
        )
    except subprocess.TimeoutExpired as exc:
        raise PermanentError(
            f"{tools.describe('pg_restore')} --list did not read the table of contents pg_dump wrote in {staging} "
            f"within {LISTING_TIMEOUT_SECONDS} s; nothing was published",
            reason=Reason.COUNT_FAILED,
        ) from exc
    if listed.returncode != 0:
        raise PermanentError(
            f"{tools.describe('pg_restore')} --list could not read the table of contents pg_dump wrote in {staging} "
            f"(exit {listed.returncode}: {' '.join(listed.stderr.split())[-500:]}); nothing was published",
            reason=Reason.COUNT_FAILED,
        )
    return listed.stdout


def rows_by_table(contents: str, tallies: Mapping[str, LineTally]) -> dict[int, int]:
    """Rows in the dump of each table with a TABLE DATA entry, by the table's OID."""
    rows = {}
    for entry in parse_toc(contents):
        if entry.description != "TABLE DATA":
            continue
        name = f"{entry.dump_id}.dat"
        tally = tallies.get(name)
        if tally is None:
            raise PermanentError(
                f"pg_dump's table of contents puts the rows of {entry.rest} in {name}, but pg_dump wrote no such "
                "file; nothing was published",
                reason=Reason.COUNT_FAILED,
            )
        rows[entry.catalog_oid] = tally.rows(name)
    return rows


def counts_from_files(
    conn: psycopg.Connection[tuple[object, ...]], options: DumpOptions, contents: str, tallies: Mapping[str, LineTally]
) -> list[TableCount]:
    """count_rows' tables, in its order, with the rows pg_dump wrote of each (`contents`: its table of contents).

    The list of tables is read on `conn`, the dump's snapshot when it exported one; on a standby that refused to
    export one it is read in a snapshot of its own, but the counts are still exactly the dump's rows."""
    rows = rows_by_table(contents, tallies)
    tables, descendants = _tables_and_descendants(conn, options)
    counts = []
    for table in tables:
        if table.data_excluded:
            counts.append(TableCount(table.schema, table.name, 0))  # definition only: no rows in the dump
            continue
        if table.oid not in rows:
            log.warning(
                "the dump holds no rows of a table it lists; counted 0",
                extra={"table": f"{table.schema}.{table.name}"},
            )
        total = sum(rows.get(oid, 0) for oid in (table.oid, *descendants.get(table.oid, ())))
        counts.append(TableCount(table.schema, table.name, total))
    return counts


def _tables_and_descendants(
    conn: psycopg.Connection[tuple[object, ...]], options: DumpOptions
) -> tuple[list[ListedTable], dict[int, list[int]]]:
    try:
        tables = listed_tables(conn, options)
        descendants: dict[int, list[int]] = {}
        for root, child in conn.execute(_DESCENDANTS, ([t.oid for t in tables],)).fetchall():
            descendants.setdefault(int(str(root)), []).append(int(str(child)))
        return tables, descendants
    except psycopg.Error as exc:
        said = " ".join(str(exc).split())
        if RECOVERY_CONFLICT in str(exc):
            raise RecoveryConflict(f"listing the dump's tables was cancelled: {said}") from exc
        raise PermanentError(f"listing the dump's tables failed: {said}", reason=Reason.COUNT_FAILED) from exc
