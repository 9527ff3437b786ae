"""Managed servers (RDS, Cloud SQL, Azure Flexible Server), where no role is a superuser: on every major, a
backup role holding only pg_read_all_data, pg_monitor and CREATEDB backs up a database and restore-tests it,
and a CREATEDB role restores it with the ownership and grants it cannot set left out and named, rows equal;
on one major a whole-server backup by such a role stores the roles without passwords and says so."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import zstandard

from tests.harness.stack import LocalStack
from tests.integration.backup_helpers import table_contents
from tests.integration.environments import BackupEnv
from tests.integration.test_versions import replace_secret


@pytest.fixture
def matrix_tools(matrix_client_tools: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLAR_PG_BINDIR", matrix_client_tools)


def login(server: LocalStack, role: str, dbname: str) -> dict[str, str]:
    """A Secret's settings for `role` (its password is `p-<role>`)."""
    return {
        "host": "127.0.0.1",
        "port": str(server.pg_port),
        "dbname": dbname,
        "username": role,
        "password": f"p-{role}",
    }


def dsn(settings: dict[str, str], dbname: str | None = None) -> str:
    return (
        f"host={settings['host']} port={settings['port']} dbname={dbname or settings['dbname']} "
        f"user={settings['username']} password={settings['password']}"
    )


@dataclasses.dataclass(frozen=True)
class Managed:
    """A server set up as a managed one would be: an application's database owned by its role, a reader role
    granted on it, and a backup and a restore role that are no superusers."""

    tag: str
    database: str
    backup: dict[str, str]  # pg_read_all_data, pg_monitor, CREATEDB (for the restore test)
    restore: dict[str, str]  # CREATEDB only

    def role(self, what: str) -> str:
        return f"{self.tag}_{what}"


def make_managed(server: LocalStack, tag: str) -> Managed:
    database = f"{tag}_shop"
    with psycopg.connect(server.pg_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {tag}_owner LOGIN PASSWORD 'p-{tag}_owner'")
        conn.execute(f"CREATE ROLE {tag}_reader NOLOGIN")
        conn.execute(f"CREATE ROLE {tag}_gone NOLOGIN")
        conn.execute(f"CREATE ROLE {tag}_backup LOGIN PASSWORD 'p-{tag}_backup' CREATEDB")
        conn.execute(f"GRANT pg_read_all_data, pg_monitor TO {tag}_backup")
        conn.execute(f"CREATE ROLE {tag}_restore LOGIN PASSWORD 'p-{tag}_restore' CREATEDB")
        conn.execute(f"CREATE DATABASE {database} OWNER {tag}_owner")
    with psycopg.connect(dsn(login(server, f"{tag}_owner", database)), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA sales")
        conn.execute(
            "CREATE TABLE sales.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, total numeric(10,2), "
            "note text)"
        )
        conn.execute(
            "INSERT INTO sales.orders (total, note) SELECT g * 1.5, 'order ' || g FROM generate_series(1, 500) g"
        )
        conn.execute("CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL)")
        conn.execute("INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 40) g")
        conn.execute(f"GRANT USAGE ON SCHEMA sales TO {tag}_reader")
        conn.execute(f"GRANT SELECT ON sales.orders TO {tag}_reader")
        conn.execute(f"GRANT SELECT ON customers TO {tag}_gone")
    return Managed(tag, database, login(server, f"{tag}_backup", database), login(server, f"{tag}_restore", "postgres"))


def drop_managed(server: LocalStack, managed: Managed, databases: list[str]) -> None:
    with psycopg.connect(server.pg_dsn(), autocommit=True) as conn:
        for name in databases:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        for what in ("owner", "reader", "gone", "backup", "restore", "nocreate"):
            conn.execute(f"DROP ROLE IF EXISTS {managed.role(what)}")


def test_a_role_that_is_no_superuser_backs_up_and_restores(
    pg_major: int, pg_servers: Callable[[int], LocalStack], matrix_tools: None, backup_env: BackupEnv
) -> None:
    server = pg_servers(pg_major)
    managed = make_managed(server, f"mg{uuid.uuid4().hex[:6]}")
    copy = f"{managed.tag}_copy"
    try:
        env = dataclasses.replace(
            backup_env.on(managed.backup),
            create_secret=lambda name, data: replace_secret(backup_env.admin_api, backup_env.namespace, name, data),
        )
        env.setup(verify={"enabled": True})
        assert env.run() == 0
        found = env.conditions("DatabaseBackup", "orders")
        assert found["BackupSucceeded"]["reason"] == "Completed", found["BackupSucceeded"]
        assert found["Verified"]["status"] == "True", found["Verified"]  # its scratch database, by CREATEDB
        original = table_contents(managed.backup)
        assert len(original["sales.orders"]) == 500

        # The target lacks one role the dump grants to: that grant is left out and named.
        with psycopg.connect(server.pg_dsn(managed.database), autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {managed.role('gone')}")
            conn.execute(f"DROP ROLE {managed.role('gone')}")
        env.create_restore("copy", managed.restore, copy)
        assert env.run("restore", name="copy") == 0
        succeeded = env.conditions("DatabaseRestore", "copy")["Succeeded"]
        message = succeeded["message"]
        assert succeeded["status"] == "True", message
        assert f"ownership left to {managed.role('restore')}" in message
        assert managed.role("owner") in message
        assert "grants left out: grants on TABLE customers in schema public" in message
        assert f"no role {managed.role('gone')} here" in message

        assert table_contents(managed.restore, copy) == original
        with psycopg.connect(dsn(managed.restore, copy)) as conn:
            assert conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'orders'").fetchone() == (
                managed.role("restore"),
            )
            # The grant to a role the server has came back.
            reader = conn.execute(
                "SELECT has_table_privilege(%s, 'sales.orders', 'SELECT')", (managed.role("reader"),)
            ).fetchone()
            assert reader == (True,)
    finally:
        drop_managed(server, managed, [managed.database, copy])


def test_a_whole_managed_server_is_backed_up_with_roles_without_passwords(
    pg_servers: Callable[[int], LocalStack], matrix_tools: None, backup_env: BackupEnv
) -> None:
    server = pg_servers(17)
    managed = make_managed(server, f"ms{uuid.uuid4().hex[:6]}")
    locked = f"{managed.tag}_locked"  # as RDS's rdsadmin: no CONNECT for the admin role
    with psycopg.connect(server.pg_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {locked}")
        conn.execute(f"REVOKE CONNECT ON DATABASE {locked} FROM PUBLIC")
        conn.execute(f"CREATE ROLE {managed.role('nocreate')} LOGIN PASSWORD 'p-{managed.role('nocreate')}'")
        conn.execute(f"GRANT pg_read_all_data, pg_monitor TO {managed.role('nocreate')}")
    try:
        env = dataclasses.replace(
            backup_env.on({**managed.backup, "dbname": "postgres"}),
            create_secret=lambda name, data: replace_secret(backup_env.admin_api, backup_env.namespace, name, data),
        )
        exclude = ["postgres", "db_*", "mg*"]  # other tests' databases on this server
        env.setup(databases={"all": True, "exclude": exclude}, globals={"enabled": True}, verify={"enabled": True})
        assert env.run() == 0
        status = env.status("DatabaseBackup", "orders")
        message = status["lastRun"]["message"]
        assert "with the roles without passwords" in message
        assert f"roles without passwords: role {managed.role('backup')} is not a superuser" in message
        assert "left out " in message
        assert locked in message
        assert f"role {managed.role('backup')} may not connect to" in message
        last = status["lastSuccessfulBackup"]
        assert managed.database in last["databases"]
        assert locked not in last["databases"]
        assert last["verified"] is True
        manifest = json.loads(env.s3.get_object(Bucket=env.bucket, Key=last["manifestKey"])["Body"].read())
        assert manifest["globals"]["noRolePasswords"] is True
        assert "is not a superuser" in manifest["globals"]["rolesWithoutPasswords"]
        stored = env.s3.get_object(Bucket=env.bucket, Key=manifest["globals"]["dataKey"])["Body"].read()
        roles_sql = zstandard.ZstdDecompressor().decompressobj().decompress(stored).decode()
        assert f"CREATE ROLE {managed.role('owner')}" in roles_sql
        assert "PASSWORD" not in roles_sql

        # A backup role without CREATEDB: the restore test is refused up front, naming the GRANT.
        env = env.on(login(server, managed.role("nocreate"), managed.database))
        env.setup(name="nocreate", verify={"enabled": True})
        assert env.run(name="nocreate") == 3
        refused = env.conditions("DatabaseBackup", "nocreate")["BackupSucceeded"]
        assert refused["reason"] == "InsufficientPrivilege"
        assert f"ALTER ROLE {managed.role('nocreate')} CREATEDB" in refused["message"]
        assert "spec.verify.enabled: false" in refused["message"]
    finally:
        drop_managed(server, managed, [managed.database, locked])


def test_a_directory_backup_by_roles_that_are_no_superusers_restores_with_grants_left_out(
    stack: LocalStack, backup_env: BackupEnv, tmp_path: Path
) -> None:
    """spec.parallelism's directory dump, backed up and restored by the managed server's roles: the restore reads
    the grants from toc.dat alone, leaves out the ones it cannot set and names them, rows equal."""
    managed = make_managed(stack, f"md{uuid.uuid4().hex[:6]}")
    copy = f"{managed.tag}_copy"
    staging = tmp_path / "staging"
    staging.mkdir()
    try:
        env = dataclasses.replace(
            backup_env.on(managed.backup),
            create_secret=lambda name, data: replace_secret(backup_env.admin_api, backup_env.namespace, name, data),
        )
        env.setup(parallelism=2, staging={"path": str(staging)})
        assert env.run() == 0
        assert env.conditions("DatabaseBackup", "orders")["BackupSucceeded"]["reason"] == "Completed"
        original = table_contents(managed.backup)
        with psycopg.connect(stack.pg_dsn(managed.database), autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {managed.role('gone')}")
            conn.execute(f"DROP ROLE {managed.role('gone')}")
        env.create_restore("copy", managed.restore, copy, parallelism=2, staging={"path": str(staging)})
        assert env.run("restore", name="copy") == 0
        succeeded = env.conditions("DatabaseRestore", "copy")["Succeeded"]
        message = succeeded["message"]
        assert succeeded["status"] == "True", message
        assert "pg_restore --jobs=2 from the directory staged" in message
        assert f"ownership left to {managed.role('restore')}" in message
        assert f"no role {managed.role('gone')} here" in message
        assert table_contents(managed.restore, copy) == original
    finally:
        drop_managed(stack, managed, [managed.database, copy])
