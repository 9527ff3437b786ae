"""A whole server in one DatabaseBackup (spec.databases) against the real servers: every database of a
PostgreSQL 16 server with its roles, backed up by one run and restored onto a fresh PostgreSQL 17 server
(roles, grants, databases and rows compared by catalog queries and per-table checksums); one dropped table
pulled back alone from it into the live database; and a run where one database fails publishes nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.harness.stack import LocalStack
from tests.integration.environments import BackupEnv
from tests.integration.test_globals import dsn, superuser


@pytest.fixture
def matrix_tools(matrix_client_tools: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLAR_PG_BINDIR", matrix_client_tools)


def checksums(settings: dict[str, str], dbname: str) -> dict[str, tuple[int, str]]:
    """Every user table's row count and an md5 of its rows in a fixed order."""
    with psycopg.connect(dsn(settings, dbname)) as conn:
        tables = conn.execute(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        found = {}
        for schema, table in tables:
            row = conn.execute(
                "SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) "
                f'FROM "{schema}"."{table}" t'
            ).fetchone()
            assert row is not None
            found[f"{schema}.{table}"] = (int(row[0]), str(row[1]))
    return found


def catalog(settings: dict[str, str], roles: list[str], databases: list[str]) -> dict[str, Any]:
    """Roles, memberships, database owners and table grants, as the catalog has them."""
    with psycopg.connect(dsn(settings, "postgres")) as conn:
        found: dict[str, Any] = {
            "roles": conn.execute(
                "SELECT rolname, rolcanlogin, rolcreatedb FROM pg_roles WHERE rolname = ANY(%s) ORDER BY 1", (roles,)
            ).fetchall(),
            "members": conn.execute(
                "SELECT r.rolname, m.rolname FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid "
                "JOIN pg_roles m ON m.oid = a.member WHERE r.rolname = ANY(%s) ORDER BY 1, 2",
                (roles,),
            ).fetchall(),
            "owners": conn.execute(
                "SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname = ANY(%s) ORDER BY 1",
                (databases,),
            ).fetchall(),
        }
    for name in databases:
        with psycopg.connect(dsn(settings, name)) as conn:
            found[f"grants {name}"] = conn.execute(
                "SELECT grantee, table_schema, table_name, privilege_type FROM information_schema.role_table_grants "
                "WHERE grantee = ANY(%s) ORDER BY 1, 2, 3, 4",
                (roles,),
            ).fetchall()
    return found


def make_server(server: LocalStack, tag: str) -> tuple[list[str], list[str]]:
    """Three databases with owners, a reader role granted on two of them, and a scratch database the backup
    excludes; the roles and the databases, scratch last."""
    roles = [f"{tag}_reader", f"{tag}_app", f"{tag}_billing"]
    databases = [f"{tag}_app", f"{tag}_billing", f"{tag}_empty", f"{tag}_scratch"]
    with psycopg.connect(server.pg_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {tag}_reader NOLOGIN")
        conn.execute(f"CREATE ROLE {tag}_app LOGIN PASSWORD 'p-app' IN ROLE {tag}_reader")
        conn.execute(f"CREATE ROLE {tag}_billing LOGIN PASSWORD 'p-billing' CREATEDB")
        conn.execute(f"CREATE DATABASE {tag}_app OWNER {tag}_app")
        conn.execute(f"CREATE DATABASE {tag}_billing OWNER {tag}_billing")
        conn.execute(f"CREATE DATABASE {tag}_empty")
        conn.execute(f"CREATE DATABASE {tag}_scratch")
    settings = superuser(server, "postgres")
    with psycopg.connect(dsn(settings, f"{tag}_app", f"{tag}_app", "p-app"), autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL)")
        conn.execute("INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 300) g")
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, customer int REFERENCES customers, body text)")
        conn.execute("INSERT INTO notes SELECT g, g % 300 + 1, repeat('n', g % 40) FROM generate_series(1, 900) g")
        conn.execute(f"GRANT SELECT ON customers TO {tag}_reader")
    with psycopg.connect(dsn(settings, f"{tag}_billing", f"{tag}_billing", "p-billing"), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA ledger")
        conn.execute("CREATE TABLE ledger.invoices (id bigint PRIMARY KEY, amount numeric(12,2), at timestamptz)")
        conn.execute(
            "INSERT INTO ledger.invoices SELECT g, g * 1.25, '2026-01-01'::timestamptz + g * interval '1 hour' "
            "FROM generate_series(1, 2000) g"
        )
        conn.execute(f"GRANT USAGE ON SCHEMA ledger TO {tag}_reader")
        conn.execute(f"GRANT SELECT ON ledger.invoices TO {tag}_reader")
    return roles, databases


def drop_everything(server: LocalStack, roles: list[str], databases: list[str]) -> None:
    with psycopg.connect(server.pg_dsn(), autocommit=True) as conn:
        for name in databases:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        for role in reversed(roles):
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_a_whole_server_comes_back_on_a_fresh_server(
    pg_servers: Callable[[int], LocalStack],
    matrix_tools: None,
    backup_env: BackupEnv,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    source_server, target_server = pg_servers(16), pg_servers(17)
    tag = f"srv{uuid.uuid4().hex[:6]}"
    roles, databases = make_server(source_server, tag)
    kept = databases[:3]
    source = superuser(source_server, "postgres")
    try:
        env = backup_env.on(source)
        env.setup(
            databases={"all": True, "exclude": ["postgres", "*_scratch"]},
            globals={"enabled": True},
            verify={"enabled": True},
        )
        assert env.run() == 0
        status = env.status("DatabaseBackup", "orders")
        last = status["lastSuccessfulBackup"]
        assert set(kept) <= set(last["databases"])
        assert databases[3] not in last["databases"]
        assert "postgres" not in last["databases"]
        assert last["verified"] is True
        assert f"of {len(last['databases'])} databases" in status["lastRun"]["message"]
        manifest = json.loads(env.s3.get_object(Bucket=env.bucket, Key=last["manifestKey"])["Body"].read())
        assert manifest["formatVersion"] == 3
        dumps = {d["database"]: d for d in manifest["databases"]}
        assert len({d["dataKey"] for d in dumps.values()}) == len(dumps)  # one object per database
        assert {t["name"]: t["rows"] for t in dumps[f"{tag}_app"]["tables"]} == {"customers": 300, "notes": 900}
        assert dumps[f"{tag}_empty"]["tables"] == []

        capsys.readouterr()
        assert env.run("list", "-o", "json") == 0
        listed = json.loads(capsys.readouterr().out)["backups"]
        assert set(kept) <= set(listed[0]["databases"])

        # A fresh server: none of the roles or databases exist there.
        target = superuser(target_server, "postgres")
        drop_everything(target_server, roles, databases)
        staging = {"parallelism": 2, "staging": {"path": str(tmp_path)}}
        env.create_restore("rebuild", target, "postgres", globals=True, databases=kept, **staging)
        assert env.run("restore", name="rebuild") == 0
        assert (
            f"3 databases ({', '.join(kept)})" in env.conditions("DatabaseRestore", "rebuild")["Succeeded"]["message"]
        )
        assert catalog(target, roles, kept) == catalog(source, roles, kept)
        for name in kept:
            assert checksums(target, name) == checksums(source, name)
        with psycopg.connect(dsn(target, f"{tag}_billing", f"{tag}_app", "p-app")) as conn:  # the grant works
            assert conn.execute("SELECT count(*) FROM ledger.invoices").fetchone() == (2000,)

        # The same restore again: the databases exist now, so it refuses before writing anything.
        env.create_restore("again", target, "postgres", databases=kept)
        assert env.run("restore", name="again") == 3
        refused = env.conditions("DatabaseRestore", "again")["Succeeded"]
        assert refused["reason"] == "TargetExists"
        assert all(name in refused["message"] for name in kept)
    finally:
        drop_everything(source_server, roles, databases)
        drop_everything(target_server, roles, databases)


def test_one_dropped_table_comes_back_alone_from_a_server_backup(backup_env: BackupEnv) -> None:
    tag = f"srv{uuid.uuid4().hex[:6]}"
    roles, databases = make_server(backup_env.stack, tag)
    source = superuser(backup_env.stack, "postgres")
    try:
        env = backup_env.on(source)
        env.setup(databases={"names": [f"{tag}_app", f"{tag}_billing"]})
        assert env.run() == 0
        before = checksums(source, f"{tag}_billing")
        with psycopg.connect(dsn(source, f"{tag}_billing"), autocommit=True) as conn:
            conn.execute("DROP TABLE ledger.invoices")
        with psycopg.connect(dsn(source, f"{tag}_app"), autocommit=True) as conn:
            conn.execute("DELETE FROM notes WHERE id <= 10")  # a change since the backup, elsewhere: it stays
        app_now = checksums(source, f"{tag}_app")

        env.create_restore(
            "invoices-back",
            source,
            "postgres",
            createDatabase=False,
            databases=[f"{tag}_billing"],
            select={"tables": ["ledger.invoices"]},
        )
        assert env.run("restore", name="invoices-back") == 0
        assert checksums(source, f"{tag}_billing") == before
        assert checksums(source, f"{tag}_app") == app_now

        # Choosing a table without saying from which database of the backup is refused, naming them.
        env.create_restore("which", source, "postgres", createDatabase=False, select={"tables": ["notes"]})
        assert env.run("restore", name="which") == 3
        refused = env.conditions("DatabaseRestore", "which")["Succeeded"]["message"]
        assert "spec.databases" in refused
        assert f"{tag}_app" in refused
    finally:
        drop_everything(backup_env.stack, roles, databases)


def test_a_run_where_one_database_fails_publishes_nothing(backup_env: BackupEnv) -> None:
    tag = f"srv{uuid.uuid4().hex[:6]}"
    roles, databases = make_server(backup_env.stack, tag)
    # The app role may dump its own database but not the billing one's table: the second dump fails.
    settings = {**superuser(backup_env.stack, f"{tag}_app"), "username": f"{tag}_app", "password": "p-app"}
    with psycopg.connect(dsn(superuser(backup_env.stack, f"{tag}_billing")), autocommit=True) as conn:
        conn.execute(f"REVOKE ALL ON SCHEMA ledger FROM {tag}_reader")
    try:
        env = backup_env.on(settings)
        env.setup(databases={"names": [f"{tag}_app", f"{tag}_billing"]})
        assert env.run() == 3  # a privilege the role lacks: permanent, naming the GRANT
        failed = env.conditions("DatabaseBackup", "orders")["BackupSucceeded"]
        assert failed["status"] == "False"
        assert failed["reason"] == "InsufficientPrivilege"
        assert f"GRANT pg_read_all_data TO {tag}_app" in failed["message"]
        assert f"database {tag}_billing" in failed["message"]
        assert "no backup was published" in failed["message"]
        listed = env.s3.list_objects_v2(Bucket=env.bucket).get("Contents", [])
        assert [o["Key"] for o in listed] == []  # the app database's finished dump was removed again

        # A database that does not exist is refused before anything is dumped.
        env.setup("missing", databases={"names": [f"{tag}_app", f"{tag}_missing"]})
        assert env.run(name="missing") == 3
        refused = env.conditions("DatabaseBackup", "missing")["BackupSucceeded"]
        assert refused["reason"] == "DatabaseNotFound"
        assert f"'{tag}_missing' does not exist" in refused["message"]
    finally:
        drop_everything(backup_env.stack, roles, databases)
