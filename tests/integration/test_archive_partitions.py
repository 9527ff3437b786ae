"""Whole partitions against the real server: a table range-partitioned on its timestamp archives the partitions
wholly before the cutoff by detaching, reading and dropping them, and the rest in row batches; DuckDB reads
the files and unarchive brings the rows back; a default partition and a sub-partitioned partition are
handled; SIGKILL at the failpoints and at random, with writers busy in the current partition, never loses or
doubles a row."""

from __future__ import annotations

import collections
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from tests.harness.stack import wait_for
from tests.integration.archive_helpers import archived_objects, dsn, setup_archive
from tests.integration.environments import ArchiveEnv
from tests.integration.processes import KillStorm, run_until_failpoint, start_job


def make_events(database: dict[str, Any], *, days: int, per_day: int, default: bool, sub: bool = False) -> set[int]:
    """events partitioned by day over the last `days` days plus today's and tomorrow's partitions, `per_day`
    rows in each day before today; the ids of the rows older than 30 days (due)."""
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE events (id bigint, created_at timestamptz NOT NULL, note text, PRIMARY KEY (id, created_at)) "
            "PARTITION BY RANGE (created_at)"
        )
        conn.execute("CREATE INDEX ON events (created_at)")
        for back in range(days, -2, -1):
            start = f"date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval '{back} days'"
            name = f"events_d{back + 1}"
            spec = "PARTITION BY HASH (id)" if sub and back == days else ""
            conn.execute(
                f"DO $$ BEGIN EXECUTE format('CREATE TABLE {name} PARTITION OF events FOR VALUES FROM (%L) TO (%L) "
                f"{spec}', {start}, {start} + interval '1 day'); END $$"
            )
            if spec:
                for remainder in range(2):
                    conn.execute(
                        f"CREATE TABLE {name}_h{remainder} PARTITION OF {name} "
                        f"FOR VALUES WITH (MODULUS 2, REMAINDER {remainder})"
                    )
        if default:
            conn.execute("CREATE TABLE events_default PARTITION OF events DEFAULT")
        # Rows in every day before today, each at the time of day twelve hours from now's: every partition
        # holds rows (at ages counted from now, the oldest one was empty in the afternoons), and every row is
        # half a day from the cutoff (now - 30 days) for the next twelve hours, so no row turns due mid-test
        # (at noon, they all did at 12:00 UTC).
        conn.execute(
            "WITH today AS (SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS midnight), "
            "at AS (SELECT midnight, (now() - midnight + interval '12 hours') AS shift FROM today) "
            "INSERT INTO events SELECT g, midnight - ((g %% %s) + 1) * interval '1 day' "
            "+ CASE WHEN shift >= interval '1 day' THEN shift - interval '1 day' ELSE shift END, 'old ' || g "
            "FROM at, generate_series(1, %s) g",
            (days, per_day * days),
        )
        rows = conn.execute("SELECT id FROM events WHERE created_at < now() - interval '30 days'").fetchall()
    return {int(r[0]) for r in rows}


def archived_ids(env: ArchiveEnv) -> collections.Counter[int]:
    return collections.Counter(
        i for t in archived_objects(env.s3, env.bucket, "public.events").values() for i in t.column("id").to_pylist()
    )


def table_ids(database: dict[str, Any]) -> set[int]:
    with psycopg.connect(dsn(database)) as conn:
        return {int(r[0]) for r in conn.execute("SELECT id FROM events").fetchall()}


def partition_states(database: dict[str, Any]) -> dict[str, str]:
    with psycopg.connect(dsn(database)) as conn:
        return {str(r[0]): str(r[1]) for r in conn.execute("SELECT partition, state FROM cellar.archive_partitions")}


def test_whole_partitions_are_detached_read_once_and_dropped(
    archive_env: ArchiveEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    env = archive_env
    due = make_events(env.database, days=45, per_day=40, default=False)
    everything = table_ids(env.database)
    setup_archive(env, table="events", name="events", primaryKey=["id", "created_at"])
    assert env.run("--dry-run", name="events") == 0
    assert "Partitions archived whole (detached, read once, dropped): public.events_d46" in capsys.readouterr().out
    assert env.run(name="events") == 0
    message = env.conditions("TableArchive", "events")["ArchiveSucceeded"]["message"]
    print(message)
    assert "whole partitions" in message
    archived = archived_ids(env)
    assert set(archived) == due
    assert max(archived.values()) == 1  # each once
    assert table_ids(env.database) == everything - due
    states = partition_states(env.database)
    assert len(states) >= 10
    assert set(states.values()) == {"archived"}
    with psycopg.connect(dsn(env.database)) as conn:
        left = {str(r[0]) for r in conn.execute("SELECT inhrelid::regclass::text FROM pg_inherits")}
    assert not left & {name.split(".")[-1] for name in states}  # dropped, not just detached

    local = Path(env.kubeconfig).parent / "lake-partitions"
    for key in archived_objects(env.s3, env.bucket, "public.events"):
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        (local / key).write_bytes(env.s3.get_object(Bucket=env.bucket, Key=key)["Body"].read())
    count, total = duckdb.connect().execute(
        f"SELECT count(*), sum(id) FROM read_parquet('{local}/test/public.events/*/*.parquet')"
    ).fetchone() or (0, 0)
    assert (count, total) == (len(due), sum(due))

    assert env.run("unarchive", "--from", "2000-01-01", "--to", "2100-01-01", name="events") == 0
    with psycopg.connect(dsn(env.database)) as conn:
        back = {int(r[0]) for r in conn.execute("SELECT id FROM events_unarchived").fetchall()}
    assert back == due


def test_a_default_partition_and_a_sub_partitioned_one(archive_env: ArchiveEnv) -> None:
    env = archive_env
    due = make_events(env.database, days=40, per_day=30, default=True, sub=True)
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:  # old rows no partition covers
        conn.execute("INSERT INTO events VALUES (900001, now() - interval '400 days', 'in default')")
    due |= {900001}
    keep = {"keepDetached": True}
    setup_archive(env, table="events", name="events", primaryKey=["id", "created_at"], partitions=keep)
    assert env.run(name="events") == 0
    archived = archived_ids(env)
    assert set(archived) == due
    assert max(archived.values()) == 1
    states = partition_states(env.database)
    assert set(states.values()) == {"kept"}
    with psycopg.connect(dsn(env.database)) as conn:
        kept = conn.execute("SELECT count(*) FROM events_d41").fetchone()  # the sub-partitioned one, detached
    assert kept is not None
    assert kept[0] > 0


def test_a_run_killed_after_the_detach_or_before_the_commit_is_finished_by_the_next(
    archive_env: ArchiveEnv,
) -> None:
    env = archive_env
    due = make_events(env.database, days=40, per_day=30, default=False)
    setup_archive(env, table="events", name="events", primaryKey=["id", "created_at"])
    for point in ("archive.partition-detached", "archive.partition-before-commit"):
        job = run_until_failpoint("jobs.archive", env.kubeconfig, env.namespace, "events", point)
        job.send_signal(signal.SIGKILL)
        job.wait()
    assert "detaching" in partition_states(env.database).values()
    assert env.run(name="events") == 0
    archived = archived_ids(env)
    assert set(archived) == due
    assert max(archived.values()) == 1  # the killed run's objects were removed as leftovers
    assert set(partition_states(env.database).values()) == {"archived"}


def test_a_crash_between_recording_partitions_and_detaching_them_is_resumed_once(archive_env: ArchiveEnv) -> None:
    """Killed after its first DETACH: the other partitions are recorded `detaching` but still attached, so the
    next run finds each of them both pending and due, and must archive each once."""
    env = archive_env
    due = make_events(env.database, days=40, per_day=30, default=False)
    setup_archive(env, table="events", name="events", primaryKey=["id", "created_at"])
    job = run_until_failpoint("jobs.archive", env.kubeconfig, env.namespace, "events", "archive.partition-detached")
    job.send_signal(signal.SIGKILL)
    job.wait()
    with psycopg.connect(dsn(env.database)) as conn:
        attached = conn.execute(
            "SELECT count(*) FROM cellar.archive_partitions p "
            "JOIN pg_inherits i ON i.inhrelid = to_regclass(p.partition) WHERE p.state = 'detaching'"
        ).fetchone()
    assert attached is not None
    assert attached[0] > 1  # recorded, still attached
    assert env.run(name="events") == 0
    archived = archived_ids(env)
    assert set(archived) == due
    assert max(archived.values()) == 1
    assert set(partition_states(env.database).values()) == {"archived"}


def test_sigkill_at_random_points_with_writers_in_the_current_partition(archive_env: ArchiveEnv) -> None:
    env = archive_env
    # 120 partitions due, so that a run lasts long enough for kills to land in it even on an idle machine.
    make_events(env.database, days=150, per_day=160, default=True)
    with psycopg.connect(dsn(env.database)) as conn:
        created = {int(r[0]): r[1] for r in conn.execute("SELECT id, created_at FROM events").fetchall()}
    setup_archive(env, table="events", name="events", primaryKey=["id", "created_at"], batch={"rows": 50})
    stop = threading.Event()
    written: list[int] = []

    def writers() -> None:
        with psycopg.connect(dsn(env.database), autocommit=True) as conn:
            n = 0
            while not stop.is_set():
                n += 1
                conn.execute("INSERT INTO events VALUES (%s, now(), 'live')", (5_000_000 + n,))
                written.append(5_000_000 + n)
                time.sleep(0.005)

    traffic = threading.Thread(target=writers, daemon=True)
    traffic.start()
    storm = KillStorm(work=('"partition detached"', '"partition archived whole"', '"batch committed"'), seed=20261129)
    try:
        for attempt in range(30):
            job = start_job("jobs.archive", env.kubeconfig, env.namespace, "events")
            if attempt % 2 == 0:  # somewhere after the first partition detached (or the first batch)
                storm.kill_mid_work(job, seconds=0.5)
            else:  # anywhere after start-up
                storm.kill_at_random(job, seconds=1.2)
        before_last_run = datetime.now(UTC)
        assert env.run(name="events") == 0
        after_last_run = datetime.now(UTC)
    finally:
        stop.set()
        traffic.join()
    print(f"where 30 kills landed: {storm}; rows written meanwhile: {len(written)}")
    # The work is finite (30 partitions due): the first kills that wait for it land in it, later runs may
    # find nothing left to do.
    assert storm.landings["mid-work"] >= 3, storm
    archived = archived_ids(env)
    in_table = table_ids(env.database)
    assert not [i for i, n in archived.items() if n > 1], "archived twice"
    # What the last run must have archived is what was due when it started, and nothing younger than what was
    # due when it ended (make_events keeps rows half a day from the cutoff; this holds however long it runs).
    due_by_then = {i for i, at in created.items() if at < before_last_run - timedelta(days=30)}
    due_at_most = {i for i, at in created.items() if at < after_last_run - timedelta(days=30)}
    assert due_by_then <= set(archived) <= due_at_most, "every due row archived once"
    assert not set(archived) & in_table
    assert set(written) <= in_table


def test_writers_into_the_partition_being_archived_lose_nothing(archive_env: ArchiveEnv) -> None:
    """A writer inserting old rows straight into a due partition (by its name) while the run detaches, reads
    and drops it: each insert either lands before the read and is archived, or fails (the table is gone); none
    succeeds and vanishes."""
    env = archive_env
    due = make_events(env.database, days=45, per_day=300, default=False)
    setup_archive(env, table="events", name="events", primaryKey=["id", "created_at"])
    stop = threading.Event()
    landed: list[int] = []
    refused: list[str] = []

    def writer() -> None:
        n = 0
        with psycopg.connect(dsn(env.database), autocommit=True) as conn:
            while not stop.is_set():
                n += 1
                try:  # half a day into the oldest partition's day, which is due
                    conn.execute(
                        "INSERT INTO events_d46 VALUES (%s, date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE "
                        "'UTC' - interval '45 days' + interval '12 hours', 'late')",
                        (7_000_000 + n,),
                    )
                    landed.append(7_000_000 + n)
                except psycopg.Error as exc:
                    refused.append(type(exc).__name__)
                    if len(refused) > 20:
                        return
                time.sleep(0.002)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    wait_for("a late row landed before the run", lambda: len(landed) >= 1, None, timeout=60)
    assert env.run(name="events") == 0
    wait_for("an insert refused once the partition is gone", lambda: bool(refused), None, timeout=60)
    stop.set()
    thread.join()
    print(f"late rows landed: {len(landed)}; inserts refused once the partition was gone: {set(refused)}")
    archived = archived_ids(env)
    assert max(archived.values()) == 1
    assert set(archived) == due | set(landed)  # every insert that succeeded was archived
    assert refused  # the writer saw the partition go, as an error
