"""spec.batch.maxReplicationLag against a real streaming standby whose replay is paused."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests.harness.stack import LocalStack, wait_for
from tests.integration.archive_helpers import (
    dsn,
    ids_in_table,
    json_log_lines,
    patch_spec,
    setup_archive,
)
from tests.integration.backup_helpers import conditions, get_status
from tests.integration.environments import ArchiveEnv

OLD_ROWS = 600
LAG_QUERY = "SELECT max(extract(epoch FROM replay_lag)) FROM pg_stat_replication"


def _old_orders(env: ArchiveEnv, *, pg_monitor: bool = True) -> None:
    """OLD_ROWS rows due in a table orders; the database's role is granted pg_monitor unless told not to."""
    stack, database = env.stack, env.database
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, note text)")
        conn.execute(
            "INSERT INTO orders SELECT g, now() - interval '400 days' + g * interval '1 hour', 'old' "
            f"FROM generate_series(1, {OLD_ROWS}) g"
        )
    if pg_monitor:
        with psycopg.connect(stack.pg_dsn(), autocommit=True) as admin:
            admin.execute(f"GRANT pg_monitor TO {database['username']}")


HOLD_SECONDS = 3.0


class ResumeWhenHeld(threading.Thread):
    """Beside the job: waits (bounded) until `held()` says the job waits for the standby, keeps it waiting
    HOLD_SECONDS more, records `observe()` (what the job did meanwhile), then resumes the standby's replay.
    Replay is resumed whatever happens here, so a failure fails the test instead of hanging the job."""

    def __init__(self, standby: psycopg.Connection[Any], held: Callable[[], bool], observe: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.standby, self.held, self.observe = standby, held, observe
        self.observed: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            wait_for("the job to be seen waiting for the standby", self.held, None, timeout=120)
            time.sleep(HOLD_SECONDS)  # not a wait for state: the hold the job must report lasting at least this
            self.observed = self.observe()
        except BaseException as exc:  # noqa: BLE001 (raised on the test's thread by result())
            self.error = exc
        finally:
            self.standby.execute("SELECT pg_wal_replay_resume()")

    def result(self) -> Any:
        self.join(timeout=180)
        if self.error is not None:
            raise self.error
        return self.observed


@pytest.fixture
def lagging_standby(stack: LocalStack) -> Iterator[psycopg.Connection[Any]]:
    """A standby whose replay is paused, at least 3 seconds behind by the primary's pg_stat_replication;
    yields a connection to it (pg_wal_replay_resume() lets it catch up)."""
    with stack.standby() as standby_dsn, psycopg.connect(standby_dsn, autocommit=True) as standby:
        standby.execute("SELECT pg_wal_replay_pause()")
        with psycopg.connect(stack.pg_dsn(), autocommit=True) as primary:
            primary.execute("CREATE TABLE IF NOT EXISTS wal_traffic (x int)")
            deadline = time.monotonic() + 30
            while True:  # replay_lag grows only while WAL is written and the standby acknowledges it
                primary.execute("INSERT INTO wal_traffic SELECT generate_series(1, 100)")
                row = primary.execute(LAG_QUERY).fetchone()
                if row and row[0] is not None and float(row[0]) > 3:
                    break
                assert time.monotonic() < deadline, f"the standby's replay_lag never passed 3 s: {row}"
                time.sleep(0.2)
        try:
            yield standby
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")


def test_batches_wait_while_a_standby_is_behind_and_resume_once_it_catches_up(
    archive_env: ArchiveEnv, lagging_standby: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    admin_api = archive_env.admin_api
    database = archive_env.database
    _old_orders(archive_env)
    setup_archive(archive_env, batch={"rows": 100, "maxReplicationLag": "2s"})

    def waiting_for_the_standby() -> bool:
        status = get_status(admin_api, archive_env.namespace, "tablearchives", "orders")
        return conditions(status).get("Progressing", {}).get("reason") == "WaitingForStandby"

    def rows_and_progress() -> tuple[int, dict[str, Any]]:
        status = get_status(admin_api, archive_env.namespace, "tablearchives", "orders")
        return len(ids_in_table(database)), conditions(status)["Progressing"]

    resumer = ResumeWhenHeld(lagging_standby, waiting_for_the_standby, rows_and_progress)
    try:
        assert archive_env.run() == 0
    finally:
        rows_while_held, progressing_while_held = resumer.result()
    assert rows_while_held == OLD_ROWS  # nothing moved while the standby was behind
    assert progressing_while_held["reason"] == "WaitingForStandby"
    assert progressing_while_held["message"].startswith("waiting for standby walreceiver: it replays")
    assert ids_in_table(database) == set()  # then everything did
    logged = json_log_lines(capsys)
    held = next(entry for entry in logged if entry["msg"] == "a standby is behind; batches wait for it")
    assert held["standby"] == "walreceiver"  # a standby's default application_name
    assert held["lag_seconds"] > 2
    assert held["limit_seconds"] == 2
    assert any(entry["msg"] == "the standbys caught up; batches resume" for entry in logged)
    summary = next(entry for entry in logged if entry["msg"] == "archive run summary")
    assert summary["rows"] == OLD_ROWS
    assert summary["standby_wait_seconds"] >= HOLD_SECONDS


def test_the_run_time_ends_a_run_that_waits_for_a_standby(
    archive_env: ArchiveEnv, lagging_standby: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    admin_api = archive_env.admin_api
    database = archive_env.database
    _old_orders(archive_env)
    setup_archive(archive_env, maxRunTime="3s", batch={"maxReplicationLag": "1s", "parallelism": 1})
    started = time.monotonic()
    assert archive_env.run() == 0
    assert time.monotonic() - started < 120  # the standby never catches up: maxRunTime ended the run
    assert len(ids_in_table(database)) == OLD_ROWS
    outcome = conditions(get_status(admin_api, archive_env.namespace, "tablearchives", "orders"))
    assert outcome["ArchiveSucceeded"]["reason"] == "StandbyBehind"
    assert "for standbys over maxReplicationLag" in outcome["ArchiveSucceeded"]["message"]
    assert "stopped at maxRunTime" in outcome["ArchiveSucceeded"]["message"]
    assert any(entry["msg"] == "the run stops while waiting for a standby" for entry in json_log_lines(capsys))


def test_a_lag_limit_without_pg_monitor_is_refused_naming_the_grant(archive_env: ArchiveEnv) -> None:
    admin_api = archive_env.admin_api
    database = archive_env.database
    _old_orders(archive_env, pg_monitor=False)
    setup_archive(archive_env, batch={"maxReplicationLag": "30s"})
    assert archive_env.run() == 3
    refused = conditions(get_status(admin_api, archive_env.namespace, "tablearchives", "orders"))["Ready"]
    assert refused["reason"] == "InsufficientPrivilege"
    assert f"GRANT pg_monitor TO {database['username']}" in refused["message"]
    assert len(ids_in_table(database)) == OLD_ROWS


def test_unarchive_waits_for_a_standby_behind_too(
    archive_env: ArchiveEnv, lagging_standby: psycopg.Connection[Any]
) -> None:
    admin_api = archive_env.admin_api
    database, namespace = archive_env.database, archive_env.namespace
    _old_orders(archive_env)
    setup_archive(archive_env, batch={"rows": 200})  # no limit: archiving goes on while the standby lags
    assert archive_env.run() == 0
    assert ids_in_table(database) == set()
    patch_spec(admin_api, namespace, {"batch": {"maxReplicationLag": "2s"}})

    def side_table_made() -> bool:  # made and committed before the first object waits for the standby
        with psycopg.connect(dsn(database)) as conn:
            return conn.execute("SELECT to_regclass('orders_unarchived')").fetchone() != (None,)

    def rows_restored() -> int:
        with psycopg.connect(dsn(database)) as conn:
            return len(conn.execute("SELECT id FROM orders_unarchived").fetchall())

    resumer = ResumeWhenHeld(lagging_standby, side_table_made, rows_restored)
    try:
        unarchive = ["unarchive", "--from", "2000-01-01", "--to", "2100-01-01"]
        assert archive_env.run(*unarchive) == 0
    finally:
        restored_while_held = resumer.result()
    assert restored_while_held == 0  # the side table exists, and nothing was loaded while held
    assert ids_in_table(database, "orders_unarchived") == set(range(1, OLD_ROWS + 1))
    message = get_status(admin_api, namespace, "tablearchives", "orders")["lastUnarchive"]["message"]
    assert "for standbys" in message
