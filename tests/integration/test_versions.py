"""The version matrix: back up, restore, restore-test, archive and unarchive on real servers of every
PostgreSQL major from 14 to 18 (pytest --pg chooses), with the client tools of every major side by
side as the backup image carries them."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import subprocess
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest
import zstandard

from tests.conftest import new_database
from tests.harness.stack import LocalStack, log, postgres_majors
from tests.integration.archive_helpers import list_all, manifests, setup_archive
from tests.integration.backup_helpers import (
    _dsn,
    conditions,
    get_status,
    load_sample_data,
    run_backup_job,
    table_contents,
)
from tests.integration.environments import ArchiveEnv, BackupEnv

NEWEST = 18


def generated_table(major: int, name: str = "orders") -> str:
    """A table with an identity key and generated columns: stored on every major, virtual (PostgreSQL
    18's default kind) where the server has it."""
    virtual = "GENERATED ALWAYS AS (price * qty) VIRTUAL" if major >= 18 else "GENERATED ALWAYS AS (price * qty) STORED"
    return f"""
    CREATE TABLE {name} (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        created_at timestamptz NOT NULL,
        price numeric(10, 2) NOT NULL,
        qty integer NOT NULL,
        total numeric GENERATED ALWAYS AS (price * qty) STORED,
        total_now numeric {virtual},
        note text
    );
    CREATE INDEX ON {name} (created_at);
    """


ROWS = """
INSERT INTO orders (created_at, price, qty, note)
SELECT now() - interval '400 days' + g * interval '1 hour', (g % 97) + 0.25, g % 7, 'old ' || g
FROM generate_series(1, 300) g;
INSERT INTO orders (created_at, price, qty, note) SELECT now(), 1.5, g, 'new' FROM generate_series(1, 10) g;
"""


def _execute(database: dict[str, Any], statements: str) -> None:
    with psycopg.connect(_dsn(database), autocommit=True) as conn:
        conn.execute(statements)


def _rows(database: dict[str, Any], table: str = "orders") -> list[str]:
    with psycopg.connect(_dsn(database)) as conn:
        return [str(r[0]) for r in conn.execute(f"SELECT t::text FROM {table} t ORDER BY id")]


def _server_version(database: dict[str, Any]) -> str:
    with psycopg.connect(_dsn(database)) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        assert row
        return str(row[0])


def replace_secret(admin_api: Any, namespace: str, name: str, data: dict[str, str]) -> None:
    """Create or replace a Secret: the jobs' Roles grant only the Secret names the tests' values name, so a
    test that points a job at another server rewrites the one it may read."""
    from kubernetes import client

    core = client.CoreV1Api(admin_api)
    with contextlib.suppress(client.ApiException):
        core.delete_namespaced_secret(name, namespace)
    core.create_namespaced_secret(namespace, {"metadata": {"name": name}, "stringData": data})


@pytest.fixture
def matrix_tools(matrix_client_tools: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The jobs in this test find the client tools of every major, as in the image."""
    monkeypatch.setenv("CELLAR_PG_BINDIR", matrix_client_tools)


def _restore(env: BackupEnv, target: dict[str, Any], dbname: str, backup: str = "orders") -> tuple[int, str]:
    """A DatabaseRestore of `backup` into a new database on `target`'s server: the job's exit code and
    the resource's name. The Secret is replaced for each (the Role names it)."""
    name = f"restore-{uuid.uuid4().hex[:6]}"
    replacing = dataclasses.replace(
        env, create_secret=lambda secret, data: replace_secret(env.admin_api, env.namespace, secret, data)
    )
    # noOwner: the target's login role is not the one that owned the dumped objects.
    replacing.create_restore(name, target, dbname, backup=backup, noOwner=True)
    return env.run("restore", name=name), name


def test_backup_restores_into_its_own_major_and_the_newest(
    pg_major: int, pg_servers: Callable[[int], LocalStack], matrix_tools: None, backup_env: BackupEnv
) -> None:
    stack, admin_api, namespace = backup_env.stack, backup_env.admin_api, backup_env.namespace
    bucket, s3_admin = backup_env.bucket, backup_env.s3
    job_kubeconfig = backup_env.job_kubeconfig
    database = new_database(pg_servers(pg_major))
    version = _server_version(database)
    assert version.startswith(f"{pg_major}.")
    load_sample_data(stack, database)
    _execute(database, generated_table(pg_major) + ROWS)
    backup_env.on(database).setup(verify={"enabled": True})
    kubeconfig = job_kubeconfig("backup")

    assert run_backup_job(kubeconfig, namespace) == 0
    status = get_status(admin_api, namespace, "databasebackups", "orders")
    found = conditions(status)
    assert found["Verified"]["status"] == "True", found["Verified"]
    backup = status["lastSuccessfulBackup"]
    assert backup["verified"] is True
    assert backup["serverVersion"] == version
    assert backup["pgDumpVersion"].startswith(f"pg_dump {pg_major}.")  # the server's own major
    assert f"on PostgreSQL {version} with pg_dump {pg_major}." in found["BackupSucceeded"]["message"]

    # Stock pg_restore of the server's major reads what cellar wrote.
    dump = (
        zstandard.ZstdDecompressor()
        .decompressobj()
        .decompress(s3_admin.get_object(Bucket=bucket, Key=backup["key"])["Body"].read())
    )
    listing = subprocess.run(
        [str(postgres_majors([pg_major])[pg_major] / "pg_restore"), "--list"],
        input=dump,
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert "TABLE DATA public orders" in listing
    assert "TABLE DATA public everything" in listing

    original = table_contents(database)
    assert len(original["public.orders"]) == 310
    for target_major in sorted({pg_major, NEWEST}):
        target = new_database(pg_servers(target_major))
        restored = f"{target['dbname']}_restored"
        code, name = _restore(backup_env, target, restored)
        assert code == 0
        succeeded = conditions(get_status(admin_api, namespace, "databaserestores", name))["Succeeded"]
        assert succeeded["status"] == "True"
        assert f"with pg_restore {target_major}." in succeeded["message"]
        assert table_contents(target, restored) == original, f"PostgreSQL {pg_major} into {target_major}"


def test_archive_and_unarchive_on_every_major_and_across_majors(
    pg_major: int, pg_servers: Callable[[int], LocalStack], archive_env: ArchiveEnv
) -> None:
    database = new_database(pg_servers(pg_major))
    version = _server_version(database)
    _execute(database, generated_table(pg_major) + ROWS)
    before = _rows(database)
    env = archive_env.on(database)
    admin_api, namespace, bucket, s3_admin = env.admin_api, env.namespace, env.bucket, env.s3
    setup_archive(env)

    assert env.run() == 0
    status = get_status(admin_api, namespace, "tablearchives", "orders")
    assert conditions(status)["ArchiveSucceeded"]["reason"] == "Completed", conditions(status)
    assert len(_rows(database)) == 10

    described = manifests(s3_admin, bucket)
    assert {m["serverVersion"] for m in described} == {version}
    columns = {c["name"]: c for c in described[0]["columns"]}
    assert columns["total"]["generated"] == "stored"
    assert columns["total_now"]["generated"] == ("virtual" if pg_major >= 18 else "stored")
    assert "generated" not in columns["price"]
    # The files hold the generated values as the server computed them (virtual ones included).
    objects = [
        pq.read_table(io.BytesIO(s3_admin.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()))
        for o in list_all(s3_admin, bucket, "test/public.orders/")
    ]
    archived = [row for table in objects for row in table.to_pylist()]
    assert len(archived) == 300
    # (an unconstrained numeric travels as its exact text)
    assert all(Decimal(row["total"]) == Decimal(row["total_now"]) == row["price"] * row["qty"] for row in archived)

    # Back into the source: every value equal, generated ones computed again, identity keys kept.
    assert env.run("unarchive", "--into", "source", *_ALL_TIME) == 0
    assert _rows(database) == before

    # The same files into another major's server (the newest, or the oldest for the newest's files).
    other_major = NEWEST if pg_major != NEWEST else 14
    other = new_database(pg_servers(other_major))
    _execute(other, generated_table(min(pg_major, other_major)))
    other_env = dataclasses.replace(
        env.on(other), create_secret=lambda name, data: replace_secret(admin_api, namespace, name, data)
    )
    setup_archive(other_env, name="orders-other")
    code = other_env.run("unarchive", "--into", "source", *_ALL_TIME, name="orders-other")
    assert code == 0, get_status(admin_api, namespace, "tablearchives", "orders-other")
    assert _rows(other) == before[:300]  # the archived rows, ids 1 to 300


_ALL_TIME = ("--from", "2000-01-01", "--to", "2100-01-01")


def _backup_of(env: BackupEnv, source: dict[str, Any], name: str) -> None:
    """A DatabaseBackup `name` of `source` under a prefix of its own, and one backup of it."""
    replace_secret(env.admin_api, env.namespace, "cellar-database", source)
    env.create_resource(
        "DatabaseBackup",
        {
            "metadata": {"name": name},
            "spec": {
                "database": {"secretRef": {"name": "cellar-database"}, "sslMode": "disable"},
                "storage": {**env.storage_spec, "prefix": name},
            },
        },
    )
    assert env.run(name=name) == 0


def test_restore_into_an_older_major_works_where_it_can_and_is_refused_where_it_cannot(
    pg_servers: Callable[[int], LocalStack], matrix_tools: None, backup_env: BackupEnv
) -> None:
    admin_api, namespace = backup_env.admin_api, backup_env.namespace
    # A dump of 16 (pg_dump 16 writes nothing 15 lacks here) restores into 15 with pg_restore 16.
    into15 = new_database(pg_servers(15))
    source16 = new_database(pg_servers(16))
    _execute(source16, generated_table(16) + ROWS)
    _backup_of(backup_env, source16, "from16")
    code, name = _restore(backup_env, into15, "from16", backup="from16")
    assert code == 0, conditions(get_status(admin_api, namespace, "databaserestores", name))
    assert _rows({**into15, "dbname": "from16"}) == _rows(source16)

    # Dumps of 18 into 14 and of 17 into 16: pg_restore 17 and newer cannot connect a restore to a server
    # before 17, so the restore goes through its SQL into the older server's psql.
    for newer, older in ((NEWEST, 14), (17, 16)):
        source = new_database(pg_servers(newer))
        _execute(source, generated_table(17) + ROWS)  # stored generated columns: every major has them
        _backup_of(backup_env, source, f"from{newer}")
        target = new_database(pg_servers(older))
        code, name = _restore(backup_env, target, f"into{older}", backup=f"from{newer}")
        status = get_status(admin_api, namespace, "databaserestores", name)
        assert code == 0, conditions(status)
        assert _rows({**target, "dbname": f"into{older}"}) == _rows(source)
        log(f"a backup of {_server_version(source)} restored into {_server_version(target)} through SQL")

    # A parallel restore cannot go through SQL: refused before anything is created.
    into14 = new_database(pg_servers(14))
    replacing = dataclasses.replace(
        backup_env, create_secret=lambda secret, data: replace_secret(admin_api, namespace, secret, data)
    )
    replacing.create_restore(
        "parallel", into14, "parallel", backup=f"from{NEWEST}", parallelism=2, staging={"path": "/tmp"}
    )
    assert backup_env.run("restore", name="parallel") == 3
    refused = conditions(get_status(admin_api, namespace, "databaserestores", "parallel"))["Succeeded"]
    assert refused["reason"] == "TargetTooOld", refused
    assert "leave parallelism and staging out" in refused["message"], refused

    # The checksum is held back through SQL too: a backup whose last byte changed is refused, nothing restored.
    data_key = get_status(admin_api, namespace, "databasebackups", f"from{NEWEST}")["lastSuccessfulBackup"]["key"]
    stored = bytearray(backup_env.s3.get_object(Bucket=backup_env.bucket, Key=data_key)["Body"].read())
    stored[-1] ^= 0xFF
    backup_env.s3.put_object(Bucket=backup_env.bucket, Key=data_key, Body=bytes(stored))
    code, name = _restore(backup_env, into14, "damaged", backup=f"from{NEWEST}")
    assert code == 3
    damaged = conditions(get_status(admin_api, namespace, "databaserestores", name))["Succeeded"]
    assert damaged["reason"] == "ChecksumMismatch", damaged
    with psycopg.connect(_dsn(into14)) as conn:
        gone = conn.execute("SELECT count(*) FROM pg_database WHERE datname IN ('parallel', 'damaged')").fetchone()
        assert gone == (0,)

    # What an older major cannot take is refused by its server, naming it, and nothing is left: PostgreSQL
    # 18's virtual generated column (pg_dump 18 writes no VIRTUAL: it is 18's default) into 14.
    virtual = new_database(pg_servers(NEWEST))
    _execute(virtual, generated_table(NEWEST) + ROWS)
    _backup_of(backup_env, virtual, "virtual18")
    code, name = _restore(backup_env, into14, "virtual", backup="virtual18")
    assert code == 3
    failed = conditions(get_status(admin_api, namespace, "databaserestores", name))["Succeeded"]
    assert failed["reason"] == "RestoreFailed", failed
    assert f"PostgreSQL {_server_version(into14)} refused what pg_restore {NEWEST}." in failed["message"], failed
    assert "numeric GENERATED ALWAYS AS ((price * (qty)::numeric))," in failed["message"], failed  # what it refused
    with psycopg.connect(_dsn(into14)) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = 'virtual'").fetchone() == (0,)


def test_a_server_newer_than_every_installed_pg_dump_is_refused_naming_both(
    pg_servers: Callable[[int], LocalStack], monkeypatch: pytest.MonkeyPatch, backup_env: BackupEnv
) -> None:
    stack, admin_api, namespace = backup_env.stack, backup_env.admin_api, backup_env.namespace
    bucket, s3_admin = backup_env.bucket, backup_env.s3
    tools = postgres_majors([14, 15, 16])
    monkeypatch.setenv("CELLAR_PG_BINDIR", ":".join(str(tools[m]) for m in (14, 15, 16)))
    database = new_database(pg_servers(NEWEST))
    version = _server_version(database)
    backup_env.on(database).setup()
    assert backup_env.run() == 3
    found = conditions(get_status(admin_api, namespace, "databasebackups", "orders"))
    assert found["Ready"]["reason"] == "PgDumpTooOld"
    message = found["BackupSucceeded"]["message"]
    assert message.startswith(f"pg_dump 16 is older than the server ({version})")
    assert "pg_dump 16." in message
    assert "majors 14, 15, 16" in message
    assert list_all(s3_admin, bucket, "test/") == []
    # kubectl describe shows it as a user reads it.
    described = subprocess.run(
        [
            str(stack.binaries["kubectl"]),
            "--kubeconfig",
            str(stack.kubeconfig),
            "describe",
            "-n",
            namespace,
            "databasebackup",
            "orders",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"older than the server ({version})" in " ".join(described.split())
