"""A server rebuilt from a backup gets its roles back (DatabaseBackup spec.globals, DatabaseRestore
spec.globals): roles with their attributes, memberships and settings, and the grants that name them, from
a PostgreSQL 16 server onto a fresh PostgreSQL 17 server; and the role passwords left out when asked."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import zstandard

from tests.harness.stack import LocalStack
from tests.integration.environments import BackupEnv

ROLES = ("shop_reader", "shop_app")


@pytest.fixture
def matrix_tools(matrix_client_tools: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLAR_PG_BINDIR", matrix_client_tools)


def superuser(server: LocalStack, dbname: str) -> dict[str, str]:
    """Connection settings of the server's superuser: pg_dumpall reads role passwords from pg_authid."""
    fields = dict(part.split("=", 1) for part in server.pg_dsn().split())
    return {
        "host": "127.0.0.1",
        "port": str(server.pg_port),
        "dbname": dbname,
        "username": fields["user"],
        "password": fields["password"],
    }


def dsn(
    settings: dict[str, str], dbname: str | None = None, user: str | None = None, password: str | None = None
) -> str:
    return (
        f"host={settings['host']} port={settings['port']} dbname={dbname or settings['dbname']} "
        f"user={user or settings['username']} password={password or settings['password']}"
    )


def roles_of(settings: dict[str, str]) -> dict[str, Any]:
    with psycopg.connect(dsn(settings, "postgres")) as conn:
        roles = conn.execute(
            "SELECT rolname, rolcanlogin, rolconnlimit, rolconfig FROM pg_roles WHERE rolname = ANY(%s) ORDER BY 1",
            (list(ROLES),),
        ).fetchall()
        members = conn.execute(
            "SELECT r.rolname, m.rolname FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid "
            "JOIN pg_roles m ON m.oid = a.member WHERE r.rolname = ANY(%s) AND m.rolname = ANY(%s) ORDER BY 1, 2",
            (list(ROLES), list(ROLES)),
        ).fetchall()
    return {"roles": roles, "members": members}


def test_roles_memberships_and_grants_come_back_on_a_fresh_server(
    pg_servers: Callable[[int], LocalStack], matrix_tools: None, backup_env: BackupEnv
) -> None:
    source_server, target_server = pg_servers(16), pg_servers(17)
    with psycopg.connect(source_server.pg_dsn(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS shop")
        for role in reversed(ROLES):
            conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute("CREATE ROLE shop_reader NOLOGIN")
        conn.execute("CREATE ROLE shop_app LOGIN PASSWORD 'app-pass-1' CONNECTION LIMIT 7 IN ROLE shop_reader")
        conn.execute("ALTER ROLE shop_app SET statement_timeout = '5s'")
        conn.execute("CREATE DATABASE shop OWNER shop_app")
    source = superuser(source_server, "shop")
    with psycopg.connect(dsn(source, user="shop_app", password="app-pass-1"), autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, total numeric)")
        conn.execute("INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 50) g")
        conn.execute("GRANT SELECT ON orders TO shop_reader")
    env = backup_env.on(source)
    env.setup(globals={"enabled": True})
    assert env.run() == 0
    assert "with the roles and tablespaces" in env.conditions("DatabaseBackup", "orders")["BackupSucceeded"]["message"]

    # A fresh server: none of the roles exist there.
    target = superuser(target_server, "postgres")
    with psycopg.connect(target_server.pg_dsn(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS shop")
        for role in reversed(ROLES):
            conn.execute(f"DROP ROLE IF EXISTS {role}")
    env.create_restore("rebuild", target, "shop", globals=True)
    assert env.run("restore", name="rebuild") == 0
    message = env.conditions("DatabaseRestore", "rebuild")["Succeeded"]["message"]
    assert "roles and tablespaces applied first" in message

    assert roles_of(target) == roles_of(source)
    assert roles_of(target)["members"] == [("shop_reader", "shop_app")]
    restored = {**target, "dbname": "shop"}
    with psycopg.connect(dsn(restored, user="shop_app", password="app-pass-1")) as conn:  # the password came back
        assert conn.execute("SELECT count(*), sum(total) FROM orders").fetchone() == (50, 1912.5)
        assert conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'orders'").fetchone() == ("shop_app",)
        assert conn.execute("SELECT has_table_privilege('shop_reader', 'orders', 'SELECT')").fetchone() == (True,)

    # The same again onto the same server: the roles exist now; their CREATE fails, is reported, and the
    # restore still succeeds.
    env.create_restore("again", target, "shop_again", globals=True)
    assert env.run("restore", name="again") == 0
    assert 'role "shop_reader" already exists' in env.conditions("DatabaseRestore", "again")["Succeeded"]["message"]


def test_role_passwords_are_left_out_when_asked(backup_env: BackupEnv) -> None:
    env = backup_env
    with psycopg.connect(env.stack.pg_dsn(), autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS pw_holder")
        conn.execute("CREATE ROLE pw_holder LOGIN PASSWORD 'never-in-a-backup'")
    env = env.on(superuser(env.stack, env.database["dbname"]))
    env.setup(globals={"enabled": True, "noRolePasswords": True})
    assert env.run() == 0
    manifest_key = env.status("DatabaseBackup", "orders")["lastSuccessfulBackup"]["manifestKey"]
    manifest = json.loads(env.s3.get_object(Bucket=env.bucket, Key=manifest_key)["Body"].read())
    assert manifest["formatVersion"] == 2
    assert manifest["globals"]["noRolePasswords"] is True
    stored = env.s3.get_object(Bucket=env.bucket, Key=manifest["globals"]["dataKey"])["Body"].read()
    sql_text = zstandard.ZstdDecompressor().decompressobj().decompress(stored).decode()
    assert "CREATE ROLE pw_holder" in sql_text
    assert "PASSWORD" not in sql_text
