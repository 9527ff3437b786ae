"""One typed test environment per job: the resources a test creates, the job it runs as its
ServiceAccount, and what it reads back (conditions, objects). Built by the fixtures in conftest.py
from the small fixtures there (namespace, database, bucket, Secrets, kubeconfigs), as kr8s builds its
test clients."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from kubernetes import client

from common.redact import register_secret
from common.secrets import DatabaseSettings, resolve_database
from common.spec import DatabaseSpec, SpecReader
from jobs.archive.settings import DEFAULT_TUNING, Tuning
from tests.harness.stack import LocalStack

PLURALS = {"DatabaseBackup": "databasebackups", "DatabaseRestore": "databaserestores", "TableArchive": "tablearchives"}


def database_settings(database: dict[str, Any], **secret_overrides: str) -> DatabaseSettings:
    """What a job resolves from a database Secret holding `database` (the fixture's keys), with overrides;
    every value registered for redaction, as the job registers the Secret's."""
    spec = DatabaseSpec.parse(
        SpecReader(
            {"secretRef": {"name": "cellar-database"}, "sslMode": "disable", "connectTimeoutSeconds": 3},
            "spec.database",
        )
    )
    secret = {**database, **secret_overrides}
    for value in secret.values():
        register_secret(value)
    return resolve_database(spec, secret)


@dataclass
class JobEnvironment:
    """What every job's tests share: the servers, a namespace, a database, a bucket and its Secret."""

    stack: LocalStack
    admin_api: Any
    namespace: str
    database: dict[str, Any]
    storage_spec: dict[str, Any]
    bucket: str
    s3: Any
    create_secret: Callable[[str, dict[str, str]], None]
    create_resource: Callable[[str, dict[str, Any]], dict[str, Any]]
    job_kubeconfig: Callable[[str], Path]

    @property
    def dsn(self) -> str:
        d = self.database
        return f"host={d['host']} port={d['port']} dbname={d['dbname']} user={d['username']} password={d['password']}"

    def status(self, kind: str, name: str) -> dict[str, Any]:
        stored = client.CustomObjectsApi(self.admin_api).get_namespaced_custom_object(
            "cellar.dev", "v1alpha1", self.namespace, PLURALS[kind], name
        )
        return dict(stored.get("status") or {})

    def conditions(self, kind: str, name: str) -> dict[str, dict[str, Any]]:
        return {c["type"]: c for c in self.status(kind, name).get("conditions", [])}

    def on(self, database: dict[str, Any]) -> Self:
        """The same environment over another database (the version matrix's are on other servers)."""
        return dataclasses.replace(self, database=database)


@dataclass
class BackupEnv(JobEnvironment):
    """A backup test's world; `kubeconfig` is the backup job's ServiceAccount (made on first use)."""

    @property
    def kubeconfig(self) -> Path:
        return self.job_kubeconfig("backup")

    def setup(self, name: str = "orders", **spec: Any) -> dict[str, Any]:
        """The database Secret and a DatabaseBackup `name` of the test's database into its bucket."""
        from tests.integration.backup_helpers import setup_backup

        return setup_backup(
            self.stack, self.database, self.storage_spec, self.create_secret, self.create_resource, name, **spec
        )

    def create_restore(
        self, name: str, target: dict[str, Any], dbname: str, *, backup: str = "orders", **spec: Any
    ) -> None:
        """A DatabaseRestore `name` of `backup` into a new database `dbname` on `target`'s server (whose
        settings go into the Secret cellar-restore-target, the name the restore job's Role may read)."""
        self.create_secret("cellar-restore-target", target)
        self.create_resource(
            "DatabaseRestore",
            {
                "metadata": {"name": name},
                "spec": {
                    "backup": {"name": backup},
                    "createDatabase": True,
                    "target": {"secretRef": {"name": "cellar-restore-target"}, "dbname": dbname, "sslMode": "disable"},
                    **spec,
                },
            },
        )

    def run(self, *args: str, name: str = "orders") -> int:
        """The backup image's command `args[0]` (default backup) as the ServiceAccount the chart runs it with:
        cellar-restore for a restore, cellar-backup otherwise."""
        from tests.integration.backup_helpers import run_backup_job

        account = "restore" if args[:1] == ("restore",) else "backup"
        return run_backup_job(self.job_kubeconfig(account), self.namespace, *args, name=name)


@dataclass
class ArchiveEnv(JobEnvironment):
    """An archive test's world; `kubeconfig` is the archive job's ServiceAccount (made on first use)."""

    @property
    def kubeconfig(self) -> Path:
        return self.job_kubeconfig("archive")

    def run(self, *args: str, name: str = "orders", tuning: Tuning = DEFAULT_TUNING) -> int:
        from tests.integration.archive_helpers import run_archive_job

        return run_archive_job(self.kubeconfig, self.namespace, *args, name=name, tuning=tuning)
