"""The target server's databases: which database of the backup goes where, checked present or absent before
anything is written, created for the restore (spec.createDatabase) and dropped again when it fails.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import psycopg
from psycopg import sql

from common.db import connect, drop_database
from common.errors import InvalidSpec, PermanentError
from common.reasons import Reason
from common.secrets import DatabaseSettings
from jobs.backup.backup.verify import scratch_drop_wait
from jobs.backup.catalog import Manifest
from jobs.backup.privileges import can_become
from jobs.backup.settings import RestoreSettings

log = logging.getLogger(__name__)


def create_database(target: DatabaseSettings, owner: str = "") -> None:
    """CREATE DATABASE on the target's server, connecting to its `postgres` maintenance database; owned by
    `owner` when that role exists there (a dump restored without --create does not carry its database's owner)."""
    maintenance = replace(target, dbname="postgres")
    with connect(maintenance, autocommit=True) as conn:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.dbname))
        if owner:
            why = can_become(conn, {owner}).get(owner)
            if why is None:
                statement = sql.SQL("{} OWNER {}").format(statement, sql.Identifier(owner))
            else:
                log.warning(
                    "the database's owner cannot be given the database; it is owned by the connecting role",
                    extra={"database": target.dbname, "owner": owner, "why": why},
                )
        try:
            conn.execute(statement)
        except psycopg.errors.DuplicateDatabase:
            raise PermanentError(
                f"spec.createDatabase: database {target.dbname!r} already exists; restore into a new name, or "
                "set createDatabase: false (and clean: true to replace what the dump contains)",
                reason=Reason.TARGET_EXISTS,
            ) from None


def drop_created(target: DatabaseSettings) -> None:
    """Drop a database this restore created, after a failure; one that others stay connected to is named in
    the log and left for a person (the restore failed anyway, and says why)."""
    why = drop_database(target, target.dbname, wait_seconds=scratch_drop_wait())
    if why is not None:
        log.error(
            "the restore failed and the database it created could not be dropped; drop it by hand",
            extra={"database": target.dbname, "why": why},
        )


def restore_targets(
    manifest: Manifest, target: DatabaseSettings, settings: RestoreSettings
) -> list[tuple[Manifest, DatabaseSettings]]:
    """Which database of the backup goes where: a one-database backup into the target Secret's database; each
    database of a several-database backup (those spec.databases names) into the one of its own name."""
    if not manifest.server_wide:
        if settings.databases and list(settings.databases) != manifest.databases:
            raise InvalidSpec(
                f"spec.databases: backup {manifest.backup_id} holds one database ({manifest.databases[0]}), "
                "restored into the target's database; leave spec.databases out"
            )
        return [(manifest, target)]
    missing = [name for name in settings.databases if name not in manifest.databases]
    if missing:
        raise InvalidSpec(
            f"spec.databases: backup {manifest.backup_id} holds no {', '.join(missing)}; "
            f"it holds {', '.join(manifest.databases)}"
        )
    names = list(settings.databases) or manifest.databases
    if settings.selection is not None and len(names) != 1:
        raise InvalidSpec(
            f"spec.select: backup {manifest.backup_id} holds {len(names)} databases ({', '.join(names)}); name the "
            "one to take from in spec.databases"
        )
    return [(manifest.for_database(name), replace(target, dbname=name)) for name in names]


def check_target_databases(server: DatabaseSettings, targets: list[DatabaseSettings], *, created: bool) -> None:
    """Before anything is written: with createDatabase none of the databases may exist; without it, all must."""
    with connect(server) as conn:
        names = [str(row[0]) for row in conn.execute("SELECT datname FROM pg_database").fetchall()]
    present = [t.dbname for t in targets if t.dbname in names]
    absent = [t.dbname for t in targets if t.dbname not in names]
    if created and present:
        raise PermanentError(
            f"spec.createDatabase: the target server already has {', '.join(present)}; drop them first, choose the "
            "others in spec.databases, or set createDatabase: false (and clean: true) to restore into them",
            reason=Reason.TARGET_EXISTS,
        )
    if not created and absent:
        raise PermanentError(
            f"the target server has no database {', '.join(absent)}; set spec.createDatabase: true to create them",
            reason=Reason.DATABASE_NOT_FOUND,
        )


def describe_targets(targets: list[tuple[Manifest, DatabaseSettings]]) -> str:
    if len(targets) == 1:
        return targets[0][1].describe()
    names = [into.dbname for _, into in targets]
    return f"{len(names)} databases ({', '.join(names)}) on {targets[0][1].describe().rsplit(' on ', 1)[-1]}"
