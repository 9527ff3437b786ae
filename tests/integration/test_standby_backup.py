"""Backups taken from a real streaming hot standby while the primary writes and vacuums what the dump reads."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.harness.stack import wait_for
from tests.integration.archive_helpers import dsn
from tests.integration.backup_helpers import setup_backup
from tests.integration.environments import BackupEnv
from tests.integration.processes import Job, start_job
from tests.integration.test_parallel_dump import stock_directory_restore

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


def _checksum(database_dsn: str, where: str = "") -> tuple[int, str]:
    """The events table's row count and an md5 of its rows in id order."""
    with psycopg.connect(database_dsn) as conn:
        row = conn.execute(
            f"SELECT count(*), md5(coalesce(string_agg(id || ':' || payload, ',' ORDER BY id), '')) FROM events {where}"
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def _stock_restore(env: BackupEnv, key: str, into: dict[str, Any]) -> None:
    """The backup's object downloaded and restored with the stock zstd and pg_restore into `into` (new)."""
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {into['dbname']}")
    body = env.s3.get_object(Bucket=env.bucket, Key=key)["Body"].read()
    dump = subprocess.run(["zstd", "-d", "-c"], input=body, capture_output=True, check=True).stdout
    restored = subprocess.run(
        ["pg_restore", "--no-owner", "--single-transaction", "--exit-on-error", "-d", dsn(into)],
        input=dump,
        capture_output=True,
    )
    assert restored.returncode == 0, restored.stderr.decode(errors="replace")


def _in_recovery(server_dsn: str) -> bool:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        found = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return bool(found and found[0])


def _pg_dump_session(standby_dsn: str, doing: str) -> bool:
    """Whether exactly one session of the run's pg_dump on the server matches `doing` (a pg_stat_activity condition):
    its COPY of the events table (blocked on its full pipe), or its leader waiting for a lock (its workers have not
    started yet)."""
    with psycopg.connect(standby_dsn) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'cellar-backup-pg_dump' AND " + doing
        ).fetchone()
    return found == (1,)


COPYING_EVENTS = "query LIKE 'COPY public.events %'"
WAITING_FOR_A_LOCK = "wait_event_type = 'Lock'"


def test_a_standby_promoted_mid_dump_ends_as_a_complete_backup_of_its_snapshot(
    backup_env: BackupEnv, standby: dict[str, Any], churn: Churn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PostgreSQL keeps a hot standby's sessions, and their transactions' snapshots, through its promotion (the
    Hot Standby chapter of its manual: users keep running queries and their connections open). So a dump held in
    the middle of its COPY while the standby is promoted, and then written to, goes on in its snapshot: the run
    succeeds, and its dump restores, with the stock pg_restore, exactly the rows of that snapshot. This test's
    standby is its own (the fixture makes one per test), so promoting it breaks no other test."""
    env = backup_env
    standby_dsn = dsn(standby["database"])
    wait_for("the standby replaying the table", lambda: _checksum(standby_dsn)[0] == ROWS, None, timeout=180)
    first = _backup_from(env, standby)
    assert first.wait(timeout=600) == 0, first.communicate()[1][-2000:]
    previous = env.status("DatabaseBackup", "orders")["lastSuccessfulBackup"]["key"]
    in_snapshot = _checksum(standby_dsn)

    release = tmp_path / "release"
    failpoint = f"backup.dump-streaming=wait-for:{release}"
    job = start_job("jobs.backup", env.kubeconfig, env.namespace, "orders", failpoint=failpoint)
    try:
        job.wait_for_line("FAILPOINT backup.dump-streaming")  # the first bytes are out: pg_dump's snapshot is set
        wait_for("pg_dump held in its COPY", lambda: _pg_dump_session(standby["dsn"], COPYING_EVENTS), None, timeout=60)
        # After the dump's snapshot the primary changes rows and the standby replays that; then the standby is promoted
        # and written to itself. None of it may be in the dump.
        with psycopg.connect(dsn(env.database), autocommit=True) as conn:
            conn.execute("UPDATE events SET payload = 'changed on the primary' WHERE id <= 1000")
            conn.execute(f"INSERT INTO events SELECT g, 'new' FROM generate_series({ROWS + 1}, {ROWS + 500}) g")
        wait_for(
            "the standby replaying the changes", lambda: _checksum(standby_dsn)[0] == ROWS + 500, None, timeout=180
        )
        with psycopg.connect(standby["dsn"], autocommit=True) as conn:
            assert conn.execute("SELECT pg_promote(wait => false)").fetchone() == (True,)  # signalled; waited for below
        wait_for("the standby promoted", lambda: not _in_recovery(standby["dsn"]), None, timeout=300)
        with psycopg.connect(standby_dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM events WHERE id BETWEEN 2000 AND 2999")  # a write: it is a primary now
        assert _pg_dump_session(standby["dsn"], COPYING_EVENTS)  # promotion left the dump's session alone
    finally:
        release.touch()  # a failed assertion above must not leave the run held for ever

    _, err = job.communicate(timeout=600)
    assert job.returncode == 0, err[-2000:]
    status = env.status("DatabaseBackup", "orders")
    assert status["lastRun"]["reason"] == "Completed", status["lastRun"]
    assert env.conditions("DatabaseBackup", "orders")["Ready"]["status"] == "True"
    newest = status["lastSuccessfulBackup"]
    assert newest["key"] != previous
    manifest = json.loads(env.s3.get_object(Bucket=env.bucket, Key=newest["manifestKey"])["Body"].read())
    assert manifest["standby"] is True  # where the snapshot was taken
    assert [(t["name"], t["rows"]) for t in manifest["tables"]] == [("events", ROWS)]
    assert _checksum(standby_dsn) != in_snapshot  # the server moved on; the dump did not
    restored = {**env.database, "dbname": f"{env.database['dbname']}_restored"}
    try:
        _stock_restore(env, newest["key"], restored)
        assert _checksum(dsn(restored)) == in_snapshot
    finally:
        with psycopg.connect(env.stack.pg_dsn(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {restored['dbname']} WITH (FORCE)")

    # The previous backup is kept and listed beside it.
    capsys.readouterr()
    assert env.run("list", "-o", "json") == 0
    listed = {b["key"] for b in json.loads(capsys.readouterr().out)["backups"]}
    assert listed == {previous, newest["key"]}


def _replayed_lock(standby_dsn: str, table: str) -> bool:
    """Whether the standby's replay holds the primary's ACCESS EXCLUSIVE lock on `table`."""
    with psycopg.connect(standby_dsn) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE relation = %s::regclass AND mode = 'AccessExclusiveLock'", (table,)
        ).fetchone()
    return found == (1,)


def test_a_standby_promoted_mid_directory_dump_ends_as_a_complete_backup_of_its_snapshot(
    backup_env: BackupEnv, standby: dict[str, Any], churn: Churn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A parallel (directory) dump from a standby promoted while pg_dump runs: PostgreSQL keeps the sessions through
    the promotion (the Hot Standby chapter of its manual), and pg_dump's workers, which connect only once its leader
    has read the catalogs and locked the tables, import after the promotion the snapshot the run exported on the
    standby before it (SET TRANSACTION SNAPSHOT needs only the exporting transaction alive; a snapshot taken in
    recovery stays one after it). So the run succeeds, and the manifest's counts are what the stock `pg_restore -j 2`
    brings back, exactly the snapshot's rows, none of what the primary wrote after it nor the promoted server since.

    No failpoint of the job can hold pg_dump itself here (it writes its files to staging, not to a pipe the job
    reads; backup.directory-file-uploaded holds the uploads only, after pg_dump has read the table), so the test
    holds pg_dump's leader with PostgreSQL: the primary keeps an ACCESS EXCLUSIVE lock on a second table, which
    the standby replays and holds, and the leader waits for it (after importing the run's snapshot) until the
    promotion releases every lock replay held. The standby is the test's own (the fixture makes one per test)."""
    env = backup_env
    standby_dsn = dsn(standby["database"])
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("CREATE TABLE gate (id int PRIMARY KEY)")
        conn.execute("INSERT INTO gate VALUES (1), (2), (3)")
    wait_for("the standby replaying the tables", lambda: _checksum(standby_dsn)[0] == ROWS, None, timeout=180)
    wait_for("the standby replaying the gate", lambda: _replayed_gate_rows(standby_dsn) == 3, None, timeout=180)
    (tmp_path / "staging").mkdir()
    first = _backup_from(env, standby, parallelism=2, staging={"path": str(tmp_path / "staging")})
    assert first.wait(timeout=600) == 0, first.communicate()[1][-2000:]
    previous = env.status("DatabaseBackup", "orders")["lastSuccessfulBackup"]
    assert previous["key"].endswith(".dir/")
    in_snapshot = _checksum(standby_dsn)

    gate = psycopg.connect(dsn(env.database))  # on the primary: a transaction holding the lock until released
    job = None
    try:
        gate.execute("LOCK TABLE gate IN ACCESS EXCLUSIVE MODE")
        with psycopg.connect(dsn(env.database), autocommit=True) as conn:
            conn.execute("SELECT txid_current()")  # a commit: WAL flushed past the lock's record, so it is sent
        wait_for("the standby holding the gate's lock", lambda: _replayed_lock(standby_dsn, "gate"), None, timeout=180)
        job = start_job("jobs.backup", env.kubeconfig, env.namespace, "orders")
        wait_for(
            "pg_dump waiting for the gate",
            lambda: _pg_dump_session(standby["dsn"], WAITING_FOR_A_LOCK),
            None,
            timeout=300,
        )
        # pg_dump's leader has imported the run's snapshot; the primary now changes rows and the standby replays
        # that, then the standby is promoted and written to itself. None of it may be in the dump.
        with psycopg.connect(dsn(env.database), autocommit=True) as conn:
            conn.execute("UPDATE events SET payload = 'changed on the primary' WHERE id <= 1000")
            conn.execute(f"INSERT INTO events SELECT g, 'new' FROM generate_series({ROWS + 1}, {ROWS + 500}) g")
        wait_for(
            "the standby replaying the changes", lambda: _checksum(standby_dsn)[0] == ROWS + 500, None, timeout=180
        )
        assert _pg_dump_session(standby["dsn"], WAITING_FOR_A_LOCK)  # still held: the promotion is what lets it go on
        with psycopg.connect(standby["dsn"], autocommit=True) as conn:
            assert conn.execute("SELECT pg_promote(wait => false)").fetchone() == (True,)  # waited for below
        wait_for("the standby promoted", lambda: not _in_recovery(standby["dsn"]), None, timeout=300)
        with psycopg.connect(standby_dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM events WHERE id BETWEEN 2000 AND 2999")  # a write: it is a primary now
            conn.execute("INSERT INTO gate VALUES (4)")
    finally:
        gate.rollback()  # a failed assertion above must not leave the lock held, nor the run waiting for it
        gate.close()

    assert job is not None
    out, err = job.communicate(timeout=600)
    assert job.returncode == 0, err[-2000:]
    assert RETRYING not in out  # the workers imported the snapshot: no fresh one was taken after the promotion
    status = env.status("DatabaseBackup", "orders")
    assert status["lastRun"]["reason"] == "Completed", status["lastRun"]
    assert env.conditions("DatabaseBackup", "orders")["Ready"]["status"] == "True"
    newest = status["lastSuccessfulBackup"]
    assert newest["key"] != previous["key"]
    assert newest["key"].endswith(".dir/")
    manifest = json.loads(env.s3.get_object(Bucket=env.bucket, Key=newest["manifestKey"])["Body"].read())
    assert manifest["standby"] is True  # where the snapshot was taken
    counts = {t["name"]: t["rows"] for t in manifest["tables"]}
    assert counts == {"events": ROWS, "gate": 3}
    assert _checksum(standby_dsn) != in_snapshot  # the server moved on; the dump did not

    restored = {**env.database, "dbname": f"{env.database['dbname']}_restored"}
    try:
        with psycopg.connect(dsn(env.database), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {restored['dbname']}")
        stock_directory_restore(env, manifest, None, tmp_path, dsn(restored))
        assert _checksum(dsn(restored)) == in_snapshot
        with psycopg.connect(dsn(restored)) as conn:
            assert {name: _count(conn, name) for name in counts} == counts
    finally:
        with psycopg.connect(env.stack.pg_dsn(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {restored['dbname']} WITH (FORCE)")

    # The previous backup is kept and listed beside it.
    capsys.readouterr()
    assert env.run("list", "-o", "json") == 0
    listed = {b["key"] for b in json.loads(capsys.readouterr().out)["backups"]}
    assert listed == {previous["key"], newest["key"]}


def _replayed_gate_rows(server_dsn: str) -> int:
    with psycopg.connect(server_dsn) as conn:
        return _count(conn, "gate")


def _count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def test_a_session_the_standby_ended_for_a_conflict_is_told_apart_from_a_lost_server(
    backup_env: BackupEnv, standby: dict[str, Any], churn: Churn
) -> None:
    """Replay ends a session that conflicts while idle in a transaction, and pg_dump, busy writing, may then say only
    "server closed the connection unexpectedly": the standby's count of conflicts in the database tells that from a
    server that went away, so the dump is tried again as for a cancelled one."""
    from common.errors import DumpFailed
    from common.secrets import DatabaseSettings
    from jobs.backup.backup.dump import DumpSource, ended_by_replay, recovery_conflicts
    from jobs.backup.pgtools import ClientTools

    _set(standby["dsn"], hot_standby_feedback="off", max_standby_streaming_delay="0")
    database = standby["database"]
    settings = DatabaseSettings(
        "127.0.0.1",
        int(database["port"]),
        database["dbname"],
        database["username"],
        database["password"],
        "disable",
        None,
        10,
    )
    source = DumpSource(settings, ClientTools(0, "", Path("/nonexistent")), "", standby=True)
    lost = DumpFailed("pg_dump exited with code 1: query failed: server closed the connection unexpectedly")
    before = recovery_conflicts(source)
    assert before is not None
    assert not ended_by_replay(source, lost, before)  # nothing counted yet: a server that went away

    reader = psycopg.connect(dsn(database))  # a transaction whose snapshot replay will have to end
    reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    reader.execute("SELECT count(*) FROM events").fetchone()
    churn.start()
    wait_for("the standby to count a conflict", lambda: (recovery_conflicts(source) or 0) > before, None, 120)
    churn.stop()
    reader.close()
    assert ended_by_replay(source, lost, before)
    assert not ended_by_replay(source, DumpFailed("pg_dump exited with code 1: out of memory"), before)
    assert not ended_by_replay(DumpSource(settings, source.tools, "", standby=False), lost, before)
