"""What a restore reads and writes: the backup (BackupSource), the target and the way into it (RestoreTarget,
with its RestorePlan, chosen before anything is written), and the failures that say a backup or its restore
went wrong."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

from common.db import connect, libpq_environment
from common.encryption import Identities
from common.secrets import DatabaseSettings
from common.storage import ObjectStore
from jobs.backup.catalog import Manifest
from jobs.backup.pgtools import ClientTools, psql_for, restores_through_sql, tools_for_restore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestorePlan:
    """Which client tools restore a backup into which server, and how: pg_restore connected to the server, or
    (`through_sql`) pg_restore's SQL run by `psql` without the settings the server lacks (`known_settings`)."""

    tools: ClientTools
    server_version: str
    through_sql: bool = False
    psql: ClientTools | None = None
    known_settings: frozenset[str] = frozenset()

    def describe(self) -> str:
        if self.through_sql and self.psql is not None:
            return (
                f"{self.tools.describe('pg_restore')} through {self.psql.describe('psql')} into PostgreSQL "
                f"{self.server_version}"
            )
        return f"{self.tools.describe('pg_restore')} into PostgreSQL {self.server_version}"

    @property
    def sql_client(self) -> ClientTools:
        """The tools whose psql runs SQL on the target (the roles of a backup, a restore through SQL)."""
        return self.psql if self.psql is not None else self.tools


def plan_restore(server: DatabaseSettings, manifest: Manifest) -> RestorePlan:
    """Ask the target server its version and choose the tools (pgtools.tools_for_restore), before
    anything is written; `server` names any database on it the role may connect to."""
    with connect(server) as conn:  # libpq reports the version at login
        version_num, version = conn.info.server_version, conn.info.parameter_status("server_version") or ""
        tools = tools_for_restore(version_num, version, manifest.pg_dump_version, manifest.server_version)
        if not restores_through_sql(tools, version_num):
            return RestorePlan(tools, version)
        settings = frozenset(str(row[0]) for row in conn.execute("SELECT name FROM pg_catalog.pg_settings"))
    psql = psql_for(version_num, tools)
    log.info(
        "restoring into an older major through SQL",
        extra={"pg_restore": tools.describe("pg_restore"), "psql": psql.describe("psql"), "server": version},
    )
    return RestorePlan(tools, version, through_sql=True, psql=psql, known_settings=settings)


@dataclass(frozen=True)
class BackupSource:
    """The backup a restore reads: the store it is in, its manifest (or one database's view of it), and the
    identities that decrypt it when it is encrypted."""

    store: ObjectStore
    manifest: Manifest
    identities: Identities | None = None

    def for_database(self, name: str) -> BackupSource:
        return replace(self, manifest=self.manifest.for_database(name))


@dataclass(frozen=True)
class RestoreTarget:
    """Where a restore writes and how: the database, the plan (which tools, which way in), pg_restore's
    and options (its sessions carry the database settings' application_name)."""

    database: DatabaseSettings
    plan: RestorePlan
    options: tuple[str, ...] = ()

    def environment(self) -> dict[str, str]:
        """The connection in libpq's variables; the database goes by --dbname."""
        env = {**os.environ, **libpq_environment(self.database)}
        env.pop("PGDATABASE", None)
        return env

    def pg_restore(self, arguments: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """The plan's pg_restore into the database with `arguments` (after the options), and its environment."""
        argv = [self.plan.tools.path("pg_restore"), "--exit-on-error", "--no-password"]
        return [*argv, f"--dbname={self.database.dbname}", *self.options, *arguments], self.environment()
