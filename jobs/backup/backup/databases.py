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
# skips both the same way). pg_database_size needs CONNECT on the database or pg_read_all_stats: a role
# without either (a managed server's own databases, such as RDS's rdsadmin) gets no size, and no dump.
_DATABASES = """
SELECT datname, datallowconn, datistemplate,
       CASE WHEN has_database_privilege(oid, 'CONNECT') THEN pg_database_size(oid) ELSE 0 END,
       pg_get_userbyid(datdba), has_database_privilege(oid, 'CONNECT')
FROM pg_database ORDER BY datname
"""


@dataclass(frozen=True)
class Found:
    allow: bool  # datallowconn
    template: bool
    size: int
    owner: str
    connect: bool  # the role holds CONNECT on it


@dataclass(frozen=True)
class ChosenDatabase:
    name: str
    size: int  # bytes on disk: the progress estimate
    owner: str = ""  # a restore that creates the database gives it back to this role


def choose_databases(
    conn: psycopg.Connection[tuple[object, ...]], choice: DatabaseChoice, skipped: list[str] | None = None
) -> list[ChosenDatabase]:
    """The databases `choice` names, as the server has them; a named one that is missing, refuses
    connections or that the role may not connect to stops the run here, before anything is dumped. With
    `all`, a database the role may not connect to is left out and named in `skipped`."""
    rows = conn.execute(_DATABASES).fetchall()
    found = {
        str(name): Found(bool(allow), bool(template), int(str(size)), str(owner), bool(connect))
        for name, allow, template, size, owner, connect in rows
    }
    if choice.every:
        candidates = {
            name: db
            for name, db in found.items()
            if db.allow and not db.template and not any(fnmatch.fnmatchcase(name, p) for p in choice.exclude)
        }
        if skipped is not None:
            skipped += [name for name, db in candidates.items() if not db.connect]
        chosen = [ChosenDatabase(name, db.size, db.owner) for name, db in candidates.items() if db.connect]
        if not chosen:
            raise PermanentError(
                f"spec.databases: {choice.describe()} leaves no database to back up on this server",
                reason=Reason.DATABASE_NOT_FOUND,
            )
        return chosen
    missing = [name for name in choice.names if name not in found]
    refused = [name for name in choice.names if name in found and not found[name].allow]
    forbidden = [name for name in choice.names if name in found and found[name].allow and not found[name].connect]
    if missing or refused or forbidden:
        problems = [f"{name!r} does not exist" for name in missing]
        problems += [f"{name!r} does not allow connections (datallowconn is false)" for name in refused]
        problems += [
            f"the role may not connect to {name!r} (GRANT CONNECT ON DATABASE {name} TO it)" for name in forbidden
        ]
        raise PermanentError(
            f"spec.databases.names: {'; '.join(problems)} on this server; fix the list",
            reason=Reason.DATABASE_NOT_FOUND,
        )
    return [ChosenDatabase(name, found[name].size, found[name].owner) for name in choice.names]


def dump_key_name(backup_id: str, database: str) -> str:
    """The object name of one database's dump in a several-database backup: any character a database
    name may hold is quoted, so every name gives a distinct, plain key."""
    return f"{backup_id}.db.{quote(database, safe='')}.pgdump"
