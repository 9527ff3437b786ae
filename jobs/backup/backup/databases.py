"""Which databases one backup run dumps (spec.databases), found on the server before anything is written."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from urllib.parse import quote

import psycopg

from common.errors import PermanentError
from common.reasons import Reason
from jobs.backup.settings import DatabaseChoice

# Templates are skeletons, not data; a database that refuses connections cannot be dumped (pg_dumpall
# skips both the same way).
_DATABASES = """
SELECT datname, datallowconn, datistemplate, pg_database_size(oid), pg_get_userbyid(datdba)
FROM pg_database ORDER BY datname
"""


@dataclass(frozen=True)
class ChosenDatabase:
    name: str
    size: int  # bytes on disk: the progress estimate
    owner: str = ""  # a restore that creates the database gives it back to this role


def choose_databases(conn: psycopg.Connection[tuple[object, ...]], choice: DatabaseChoice) -> list[ChosenDatabase]:
    """The databases `choice` names, as the server has them; a named one that is missing or refuses
    connections stops the run here, before anything is dumped."""
    rows = conn.execute(_DATABASES).fetchall()
    found = {
        str(name): (bool(allow), bool(template), int(str(size)), str(owner))
        for name, allow, template, size, owner in rows
    }
    if choice.every:
        chosen = [
            ChosenDatabase(name, size, owner)
            for name, (allow, template, size, owner) in found.items()
            if allow and not template and not any(fnmatch.fnmatchcase(name, p) for p in choice.exclude)
        ]
        if not chosen:
            raise PermanentError(
                f"spec.databases: {choice.describe()} leaves no database to back up on this server",
                reason=Reason.DATABASE_NOT_FOUND,
            )
        return chosen
    missing = [name for name in choice.names if name not in found]
    refused = [name for name in choice.names if name in found and not found[name][0]]
    if missing or refused:
        problems = [f"{name!r} does not exist" for name in missing]
        problems += [f"{name!r} does not allow connections (datallowconn is false)" for name in refused]
        raise PermanentError(
            f"spec.databases.names: {'; '.join(problems)} on this server; fix the list",
            reason=Reason.DATABASE_NOT_FOUND,
        )
    return [ChosenDatabase(name, found[name][2], found[name][3]) for name in choice.names]


def dump_key_name(backup_id: str, database: str) -> str:
    """The object name of one database's dump in a several-database backup: any character a database
    name may hold is quoted, so every name gives a distinct, plain key."""
    return f"{backup_id}.db.{quote(database, safe='')}.pgdump"
