"""A fleet's 02:30: many runs started together on one PostgreSQL server, one object store, one API server.

Backups (some restore-tested, so scratch databases come and go beside them) and archives of several tables of
one database share the ledger's schema, the server's connection slots and its locks; every run must succeed
and every archive be exact. Beside it, what other sessions do to those runs: hold a table's lock past
lockTimeout, stay connected to a scratch database, use up the connection slots.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest

from jobs.archive.ledger_schema import SCHEMA_VERSION, ensure_ledger, schema_version
from jobs.archive.settings import Tuning
from tests.integration.archive_helpers import dsn, list_all, run_archive_job, setup_archive
from tests.integration.backup_helpers import load_sample_data, setup_backup
from tests.integration.environments import ArchiveEnv, BackupEnv, JobEnvironment
from tests.integration.processes import Job, start_job

BACKUPS, RESTORE_TESTED, ARCHIVES = 12, 4, 6
OLD_ROWS = 5000
# Long enough for eighteen runs that share two loaded cores to start (each imports pyarrow, boto3 and the
# Kubernetes client) and finish.
FLEET_TIMEOUT = 900.0


def _table(index: int) -> str:
    return f"events_{index}"


def _make_tables(database: dict[str, Any], count: int, old_rows: int = OLD_ROWS) -> None:
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        for index in range(count):
            table = _table(index)
            conn.execute(
                f"CREATE TABLE {table} (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, note text);"
                f"CREATE INDEX ON {table} (created_at);"
                f"INSERT INTO {table} SELECT g, now() - interval '400 days' + g * interval '1 minute', 'old ' || g "
                f"FROM generate_series(1, {old_rows}) g;"
                f"INSERT INTO {table} SELECT 1000000 + g, now(), 'new' FROM generate_series(1, 10) g;"
            )


def _storage(env: JobEnvironment, name: str) -> dict[str, Any]:
    return {**env.storage_spec, "prefix": f"fleet/{name}"}


def _archived_ids(env: JobEnvironment, name: str, table: str) -> list[int]:
    """Every id in the Parquet objects of archive `name`, read with pyarrow (duplicates kept, to be counted)."""
    ids: list[int] = []
    for listed in list_all(env.s3, env.bucket, f"fleet/{name}/public.{table}/"):
        body = env.s3.get_object(Bucket=env.bucket, Key=listed["Key"])["Body"].read()
        ids += pq.read_table(io.BytesIO(body)).column("id").to_pylist()
    return ids


def _ids_left(database: dict[str, Any], table: str) -> set[int]:
    with psycopg.connect(dsn(database)) as conn:
        return {int(str(row[0])) for row in conn.execute(f"SELECT id FROM {table}").fetchall()}


def _finish(jobs: dict[str, Job], timeout: float) -> dict[str, tuple[int, str]]:
    """Wait for every job; name -> (exit code, the tail of what it printed)."""
    deadline = time.monotonic() + timeout
    outcomes = {}
    for name, job in jobs.items():
        out, err = job.communicate(timeout=max(1.0, deadline - time.monotonic()))
        outcomes[name] = (job.returncode if job.returncode is not None else -1, (out + err)[-2500:])
    return outcomes


def _log_lines(output: str, message: str) -> list[dict[str, Any]]:
    lines = []
    for line in output.splitlines():
        if message in line:
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return lines


def test_a_fleet_started_together_on_one_server_all_succeeds(backup_env: BackupEnv) -> None:
    env = backup_env
    load_sample_data(env.stack, env.database)
    _make_tables(env.database, ARCHIVES)
    env.create_secret("cellar-database", env.database)
    backups = [f"backup-{i}" for i in range(BACKUPS)]
    archives = [f"archive-{i}" for i in range(ARCHIVES)]
    for index, name in enumerate(backups):
        spec: dict[str, Any] = {"verify": {"enabled": True}} if index < RESTORE_TESTED else {}
        setup_backup(env.stack, env.database, _storage(env, name), env.create_secret, env.create_resource, name, **spec)
    archive_env = ArchiveEnv(**vars(env))
    for index, name in enumerate(archives):
        # Small batches, so that batches of some runs are open while others start.
        setup_archive(archive_env, table=_table(index), name=name, storage=_storage(env, name), batch={"rows": 500})
    backup_account, archive_account = env.job_kubeconfig("backup"), env.job_kubeconfig("archive")

    jobs = {name: start_job("jobs.backup", backup_account, env.namespace, name) for name in backups}
    jobs |= {name: start_job("jobs.archive", archive_account, env.namespace, name) for name in archives}
    outcomes = _finish(jobs, FLEET_TIMEOUT)

    failed = {name: tail for name, (code, tail) in outcomes.items() if code != 0}
    assert not failed, f"{len(failed)} of {len(jobs)} runs failed: {failed}"
    for name in backups:
        conditions = env.conditions("DatabaseBackup", name)
        assert conditions["Ready"]["status"] == "True", (name, conditions["Ready"])
        assert "leftoverDatabases" not in env.status("DatabaseBackup", name)
    for name in backups[:RESTORE_TESTED]:
        assert env.conditions("DatabaseBackup", name)["Verified"]["status"] == "True"
    for index, name in enumerate(archives):
        assert env.conditions("TableArchive", name)["Ready"]["status"] == "True", name
        ids = _archived_ids(env, name, _table(index))
        assert len(ids) == len(set(ids)), f"{name}: {len(ids) - len(set(ids))} rows stored twice"
        assert set(ids) == set(range(1, OLD_ROWS + 1)), f"{name}: stored rows differ from the old rows"
        assert _ids_left(env.database, _table(index)) == {1000000 + g for g in range(1, 11)}
    with psycopg.connect(env.stack.pg_dsn()) as conn:
        scratch = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'cellar_verify_%'").fetchall()
    assert scratch == [], f"scratch databases left: {scratch}"


# ---- the ledger's schema


def test_a_current_ledger_schema_is_checked_without_taking_a_lock(archive_env: ArchiveEnv) -> None:
    """Another session holds every cellar table ACCESS EXCLUSIVE: a run's schema check must not wait on it
    (the old set-up ran CREATE INDEX IF NOT EXISTS and ALTER TABLE on every start)."""
    with psycopg.connect(dsn(archive_env.database), autocommit=True) as conn:
        ensure_ledger(conn)
        assert schema_version(conn) == SCHEMA_VERSION
    with psycopg.connect(dsn(archive_env.database)) as holder:
        holder.execute(
            "LOCK TABLE cellar.archive_ledger, cellar.archive_holds, cellar.archive_partitions IN ACCESS EXCLUSIVE MODE"
        )
        with psycopg.connect(dsn(archive_env.database), options="-c lock_timeout=200") as conn:
            ensure_ledger(conn, wait_seconds=1)  # raises LockTimeout if it waited for a lock
        holder.rollback()


def test_a_ledger_made_by_an_older_cellar_is_migrated_once(archive_env: ArchiveEnv) -> None:
    """The first version's ledger (no partition definitions, no version mark) is brought up to date while a
    batch of another run holds its row locks; the version is marked, so later runs do no DDL."""
    with psycopg.connect(dsn(archive_env.database), autocommit=True) as conn:
        conn.execute(
            "CREATE SCHEMA cellar;"
            "CREATE TABLE cellar.archive_ledger (object_key text PRIMARY KEY, batch_id uuid NOT NULL, "
            "  relation text NOT NULL, manifest_key text NOT NULL, rows bigint NOT NULL, bytes bigint NOT NULL, "
            "  sha256 text NOT NULL, min_ts timestamptz, max_ts timestamptz, min_key text, max_key text, "
            "  last_row jsonb, cutoff timestamptz NOT NULL, mode text NOT NULL, run_id text NOT NULL, "
            "  archived_at timestamptz NOT NULL DEFAULT now(), restored_at timestamptz);"
            "CREATE INDEX archive_ledger_relation ON cellar.archive_ledger (relation, max_ts);"
            "CREATE TABLE cellar.archive_holds (relation text NOT NULL, key text NOT NULL, "
            "  PRIMARY KEY (relation, key));"
            "CREATE TABLE cellar.archive_partitions (relation text NOT NULL, partition text NOT NULL, "
            "  state text NOT NULL, run_id text NOT NULL, rows bigint, updated_at timestamptz NOT NULL DEFAULT now(), "
            "  PRIMARY KEY (relation, partition));"
        )
        assert schema_version(conn) == 0
    with psycopg.connect(dsn(archive_env.database)) as batch:  # a batch of a running archive: RowExclusive
        batch.execute(
            "INSERT INTO cellar.archive_ledger (object_key, batch_id, relation, manifest_key, rows, bytes, sha256, "
            "cutoff, mode, run_id) VALUES ('k', gen_random_uuid(), 'public.t', 'm', 1, 1, 'x', now(), 'Move', 'r')"
        )
        with psycopg.connect(dsn(archive_env.database), options="-c lock_timeout=5000") as conn:
            ensure_ledger(conn, wait_seconds=60)  # the ALTER TABLE of partitions does not wait on the ledger
            assert schema_version(conn) == SCHEMA_VERSION
            column = conn.execute(
                "SELECT 1 FROM pg_attribute WHERE attrelid = 'cellar.archive_partitions'::regclass "
                "AND attname = 'definition'"
            ).fetchone()
            assert column is not None
        batch.commit()


# ---- lock timeouts


@pytest.fixture
def holder(archive_env: ArchiveEnv) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn(archive_env.database), application_name="holder-app") as conn:
        yield conn


def test_a_batch_that_waits_past_lock_timeout_is_tried_again_and_the_holder_named(
    archive_env: ArchiveEnv, holder: psycopg.Connection[Any]
) -> None:
    _make_tables(archive_env.database, 1, old_rows=300)
    setup_archive(archive_env, table=_table(0), lockTimeout="1s")
    holder.execute(f"LOCK TABLE {_table(0)} IN SHARE MODE")  # reads go on, the batch's DELETE waits
    job = start_job("jobs.archive", archive_env.kubeconfig, archive_env.namespace, "orders")
    waited = job.wait_for_line("a batch waited longer than lockTimeout")
    holder.rollback()
    assert job.wait() == 0, job.communicate()[1][-2000:]
    assert "holder-app" in waited, waited
    assert "ShareLock" in waited, waited
    assert _ids_left(archive_env.database, _table(0)) == {1000000 + g for g in range(1, 11)}
    assert sorted(_stored_ids(archive_env, _table(0))) == list(range(1, 301))


def _stored_ids(env: JobEnvironment, table: str) -> list[int]:
    ids: list[int] = []
    for listed in list_all(env.s3, env.bucket, f"test/public.{table}/"):
        body = env.s3.get_object(Bucket=env.bucket, Key=listed["Key"])["Body"].read()
        ids += pq.read_table(io.BytesIO(body)).column("id").to_pylist()
    return ids


def test_a_table_held_past_every_retry_fails_retryable_naming_the_holder(
    archive_env: ArchiveEnv, holder: psycopg.Connection[Any]
) -> None:
    _make_tables(archive_env.database, 1, old_rows=300)
    setup_archive(archive_env, table=_table(0), lockTimeout="1s")
    holder.execute(f"LOCK TABLE {_table(0)} IN SHARE MODE")
    code = run_archive_job(
        archive_env.kubeconfig, archive_env.namespace, tuning=Tuning(lock_wait_attempts=2, arrow_reads=False)
    )
    assert code == 1
    last_run = archive_env.status("TableArchive", "orders")["lastRun"]
    assert last_run["reason"] == "LockTimeout", last_run
    assert "holder-app" in last_run["message"], last_run
    assert "spec.lockTimeout" in last_run["message"], last_run
    holder.rollback()
    assert len(_ids_left(archive_env.database, _table(0))) == 310  # nothing moved
    assert _stored_ids(archive_env, _table(0)) == []  # nothing stored


def test_a_table_held_access_exclusive_fails_retryable_naming_the_holder(
    archive_env: ArchiveEnv, holder: psycopg.Connection[Any]
) -> None:
    """ACCESS EXCLUSIVE stops even the run's first reads: before, they waited with no limit."""
    _make_tables(archive_env.database, 1, old_rows=300)
    setup_archive(archive_env, table=_table(0), lockTimeout="1s")
    holder.execute(f"LOCK TABLE {_table(0)} IN ACCESS EXCLUSIVE MODE")
    code = run_archive_job(archive_env.kubeconfig, archive_env.namespace, tuning=Tuning(lock_wait_attempts=2))
    assert code == 1
    last_run = archive_env.status("TableArchive", "orders")["lastRun"]
    assert last_run["reason"] == "LockTimeout", last_run
    assert "holder-app" in last_run["message"], last_run
    assert "AccessExclusiveLock" in last_run["message"], last_run
    holder.rollback()
    assert len(_ids_left(archive_env.database, _table(0))) == 310


# ---- a restore test's scratch database on a busy server


def test_a_scratch_database_someone_stays_in_is_left_recorded_and_dropped_by_the_next_run(
    backup_env: BackupEnv, tmp_path: Path
) -> None:
    """The restore test must not need to signal other roles' sessions; one that stays connected leaves the
    scratch database behind, the run still succeeds (its backup is good) and says so, and the next run drops it."""
    load_sample_data(backup_env.stack, backup_env.database)
    backup_env.setup(verify={"enabled": True})
    go_on = tmp_path / "go-on"
    job = start_job(
        "jobs.backup",
        backup_env.kubeconfig,
        backup_env.namespace,
        "orders",
        failpoint=f"backup.scratch-restored=wait-for:{go_on}",
        env={"CELLAR_SCRATCH_DROP_WAIT_SECONDS": "2"},
    )
    job.wait_for_line("FAILPOINT backup.scratch-restored")
    with psycopg.connect(backup_env.stack.pg_dsn(), autocommit=True) as admin:
        row = admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'cellar_verify_%'").fetchone()
    assert row is not None
    scratch = str(row[0])
    with psycopg.connect(backup_env.stack.pg_dsn(dbname=scratch), application_name="someone-else"):
        go_on.touch()
        assert job.wait() == 0, job.communicate()[1][-2000:]
    status = backup_env.status("DatabaseBackup", "orders")
    assert [item["name"] for item in status["leftoverDatabases"]] == [scratch]
    assert "1 sessions were still connected" in status["leftoverDatabases"][0]["why"]
    verified = backup_env.conditions("DatabaseBackup", "orders")["Verified"]
    assert verified["status"] == "True", verified
    assert scratch in verified["message"], verified

    assert backup_env.run() == 0  # no one is connected now: the next run drops it
    with psycopg.connect(backup_env.stack.pg_dsn()) as admin:
        assert admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (scratch,)).fetchone() is None
    assert "leftoverDatabases" not in backup_env.status("DatabaseBackup", "orders")


# ---- a server with no free connection


def test_a_run_waits_for_a_connection_slot_then_says_the_server_was_full(backup_env: BackupEnv) -> None:
    database = backup_env.database
    role = database["username"]
    backup_env.setup()
    with psycopg.connect(backup_env.stack.pg_dsn(), autocommit=True) as admin:
        admin.execute(f"ALTER ROLE {role} CONNECTION LIMIT 0")  # as full as a server at max_connections
        job = _backup(backup_env, wait_seconds=2)
        assert job.wait() == 1
        last_run = backup_env.status("DatabaseBackup", "orders")["lastRun"]
        assert last_run["reason"] == "TooManyConnections", last_run
        assert "max_connections" in last_run["message"], last_run

        job = _backup(backup_env, wait_seconds=300)
        job.wait_for_line("waiting for one")
        admin.execute(f"ALTER ROLE {role} CONNECTION LIMIT -1")  # slots come free: the waiting run takes one
        assert job.wait() == 0, job.communicate()[1][-2000:]
    assert backup_env.conditions("DatabaseBackup", "orders")["Ready"]["status"] == "True"


def _backup(env: BackupEnv, *, wait_seconds: int) -> Job:
    return start_job(
        "jobs.backup", env.kubeconfig, env.namespace, "orders", env={"CELLAR_CONNECT_WAIT_SECONDS": str(wait_seconds)}
    )
