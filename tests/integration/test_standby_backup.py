"""Backups taken from a real streaming hot standby while the primary writes and vacuums what the dump reads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.archive_helpers import dsn
from tests.integration.backup_helpers import setup_backup
from tests.integration.environments import BackupEnv
from tests.integration.processes import Job, start_job

ROWS = 600_000
RETRYING = "the standby cancelled the dump for a conflict with recovery; dumping again"


class Churn:
    """The primary deleting, inserting and vacuuming rows of the table the dump reads, from start() to stop():
    each VACUUM removes row versions that a standby's older snapshots still see."""

    def __init__(self, database: dict[str, Any]) -> None:
        self.database = database
        self.rounds = 0
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=60)
        assert not self.failures, self.failures  # without churn the test proves nothing

    def _run(self) -> None:
        low = 1
        with psycopg.connect(dsn(self.database), autocommit=True) as conn:
            while not self._stop.is_set():
                try:
                    conn.execute("DELETE FROM events WHERE id >= %s AND id < %s", (low, low + 200))
                    conn.execute(
                        "INSERT INTO events SELECT g, 'again' FROM generate_series(%s::bigint, %s::bigint) g",
                        (low, low + 199),
                    )
                    conn.execute("VACUUM events")
                except psycopg.Error as exc:
                    self.failures.append(exc)
                    return
                self.rounds += 1
                low = low + 200 if low < ROWS - 400 else 1


@pytest.fixture
def churn(backup_env: BackupEnv) -> Iterator[Churn]:
    """A table the dump takes a while to read, and its churn (started by the test)."""
    with psycopg.connect(dsn(backup_env.database), autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id bigint PRIMARY KEY, payload text)")
        conn.execute(f"INSERT INTO events SELECT g, repeat('x', 60) || g FROM generate_series(1, {ROWS}) g")
    churning = Churn(backup_env.database)
    yield churning
    churning.stop()


@pytest.fixture
def standby(backup_env: BackupEnv) -> Iterator[dict[str, Any]]:
    """A hot standby of the harness's server; the test database's settings pointed at it."""
    with backup_env.stack.standby() as superuser_dsn:
        port = superuser_dsn.split("port=")[1].split()[0]
        yield {"dsn": superuser_dsn, "database": {**backup_env.database, "port": port}}


def _set(standby_dsn: str, **settings: str) -> None:
    with psycopg.connect(standby_dsn, autocommit=True) as conn:
        for name, value in settings.items():
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        conn.execute("SELECT pg_reload_conf()")


def _backup_from(env: BackupEnv, standby: dict[str, Any], **spec: Any) -> Job:
    """A DatabaseBackup whose database Secret names the standby (restore tests go to the primary: a standby is
    read-only), and its run started."""
    setup_backup(env.stack, env.database, env.storage_spec, env.create_secret, env.create_resource, **spec)
    env.create_secret("cellar-database", standby["database"])
    env.create_secret("cellar-verify-target", env.database)
    return start_job("jobs.backup", env.kubeconfig, env.namespace, "orders")


def _published(env: BackupEnv) -> list[str]:
    listed = env.s3.list_objects_v2(Bucket=env.bucket, Prefix="test/")
    return [o["Key"] for o in listed.get("Contents", []) if "/manifests/" in o["Key"] or "/data/" in o["Key"]]


def test_a_backup_from_a_hot_standby_with_feedback_is_restore_tested(
    backup_env: BackupEnv, standby: dict[str, Any], churn: Churn
) -> None:
    """With hot_standby_feedback the primary keeps what the dump reads: no conflict, however fast replay is."""
    _set(standby["dsn"], hot_standby_feedback="on", max_standby_streaming_delay="0")
    churn.start()
    verify = {"enabled": True, "target": {"secretRef": {"name": "cellar-verify-target"}, "sslMode": "disable"}}
    job = _backup_from(backup_env, standby, verify=verify)
    out, err = job.communicate(timeout=600)
    churn.stop()
    assert job.returncode == 0, err[-2000:]
    assert churn.rounds > 3, "the primary barely wrote while the dump ran"
    assert RETRYING not in out
    status = backup_env.status("DatabaseBackup", "orders")
    assert backup_env.conditions("DatabaseBackup", "orders")["Verified"]["status"] == "True"
    body = backup_env.s3.get_object(Bucket=backup_env.bucket, Key=status["lastSuccessfulBackup"]["manifestKey"])
    assert b'"standby": true' in body["Body"].read()


def test_a_parallel_backup_from_a_hot_standby_is_restore_tested(
    backup_env: BackupEnv, standby: dict[str, Any], churn: Churn, tmp_path: Path
) -> None:
    """pg_dump -j on a standby: its workers import the run's snapshot there (PostgreSQL 10 and newer)."""
    _set(standby["dsn"], hot_standby_feedback="on", max_standby_streaming_delay="0")
    churn.start()
    verify = {"enabled": True, "target": {"secretRef": {"name": "cellar-verify-target"}, "sslMode": "disable"}}
    job = _backup_from(backup_env, standby, verify=verify, parallelism=2, staging={"path": str(tmp_path)})
    out, err = job.communicate(timeout=600)
    churn.stop()
    assert job.returncode == 0, err[-2000:]
    assert RETRYING not in out
    status = backup_env.status("DatabaseBackup", "orders")
    assert status["lastSuccessfulBackup"]["key"].endswith(".dir/")
    assert backup_env.conditions("DatabaseBackup", "orders")["Verified"]["status"] == "True"
    body = backup_env.s3.get_object(Bucket=backup_env.bucket, Key=status["lastSuccessfulBackup"]["manifestKey"])
    assert b'"standby": true' in body["Body"].read()


def test_a_dump_the_standby_cancelled_is_dumped_again(
    backup_env: BackupEnv, standby: dict[str, Any], churn: Churn
) -> None:
    # Replay cancels a conflicting query at once, and the primary keeps nothing for the standby's snapshots.
    _set(standby["dsn"], hot_standby_feedback="off", max_standby_streaming_delay="0")
    job = _backup_from(backup_env, standby)
    job.wait_for_line('"dumping database"')
    churn.start()
    job.wait_for_line(RETRYING)
    churn.stop()  # the next try meets no conflict
    assert job.wait(timeout=600) == 0, job.communicate()[1][-2000:]
    assert backup_env.conditions("DatabaseBackup", "orders")["Ready"]["status"] == "True"
    assert [key for key in _published(backup_env) if "/manifests/" in key] != []


def test_a_dump_the_standby_keeps_cancelling_fails_as_standby_conflict_naming_the_settings(
    backup_env: BackupEnv, standby: dict[str, Any], churn: Churn
) -> None:
    _set(standby["dsn"], hot_standby_feedback="off", max_standby_streaming_delay="0")
    job = _backup_from(backup_env, standby)
    job.wait_for_line('"dumping database"')
    churn.start()
    out, err = job.communicate(timeout=600)
    assert job.returncode == 1, err[-2000:]
    assert out.count(RETRYING) == 2
    last_run = backup_env.status("DatabaseBackup", "orders")["lastRun"]
    assert last_run["reason"] == "StandbyConflict", last_run
    assert "hot_standby_feedback" in last_run["message"], last_run
    assert "max_standby_streaming_delay" in last_run["message"], last_run
    assert _published(backup_env) == []
