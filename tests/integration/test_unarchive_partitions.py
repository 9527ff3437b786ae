"""Unarchive into a table whose partitions cellar archived whole (detached, read, dropped): the partitions are
created again with the bounds cellar recorded, sub-partitions included, beside a default partition; where one
cannot be created, the run refuses before loading a row; a kill mid-unarchive leaves neither rows nor an
empty partition."""

from __future__ import annotations

import signal
from typing import Any

import psycopg
from kubernetes import client

from tests.integration.archive_helpers import dsn, setup_archive
from tests.integration.environments import ArchiveEnv
from tests.integration.processes import run_until_failpoint
from tests.integration.test_archive_partitions import make_events, partition_states

EVERYTHING = ["unarchive", "--into", "source", "--from", "2000-01-01", "--to", "2100-01-01"]


def rows(database: dict[str, Any]) -> set[tuple[Any, ...]]:
    with psycopg.connect(dsn(database)) as conn:
        return set(conn.execute("SELECT id, created_at, note FROM events").fetchall())


def partitions(database: dict[str, Any], parent: str = "events") -> set[str]:
    with psycopg.connect(dsn(database)) as conn:
        found = conn.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = %s::regclass", (parent,)
        ).fetchall()
    return {str(r[0]) for r in found}


def archived_whole(
    env: ArchiveEnv, *, days: int = 40, default: bool = False, sub: bool = False
) -> set[tuple[Any, ...]]:
    """events archived with the defaults (due partitions detached, read and dropped); the rows it had."""
    make_events(env.database, days=days, per_day=20, default=default, sub=sub)
    before = rows(env.database)
    setup_archive(env, table="events", name="events", primaryKey=["id", "created_at"])
    assert env.run(name="events") == 0
    assert set(partition_states(env.database).values()) == {"archived"}
    return before


def test_unarchive_into_the_source_creates_the_dropped_partitions_again(archive_env: ArchiveEnv) -> None:
    env = archive_env
    before = archived_whole(env)
    left, attached = rows(env.database), partitions(env.database)
    dropped = set(partition_states(env.database)) - {f"public.{p}" for p in attached}
    assert len(dropped) >= 9
    assert env.run(*EVERYTHING, name="events") == 0
    assert rows(env.database) == before  # every row back, every value as it was
    assert {f"public.{p}" for p in partitions(env.database)} == {f"public.{p}" for p in attached} | dropped
    with psycopg.connect(dsn(env.database)) as conn:
        held = conn.execute("SELECT count(*) FROM cellar.archive_holds WHERE relation = 'public.events'").fetchone()
    assert held == (len(before) - len(left),)  # brought back, not archived again by the next run
    assert env.run(*EVERYTHING, name="events") == 0  # idempotent: nothing doubled, no error
    assert rows(env.database) == before


def test_a_sub_partitioned_partition_and_a_default_partition(archive_env: ArchiveEnv) -> None:
    env = archive_env
    before = archived_whole(env, default=True, sub=True)
    assert "events_d41" not in partitions(env.database)  # the sub-partitioned one was dropped
    assert env.run(*EVERYTHING, name="events") == 0
    assert rows(env.database) == before
    assert partitions(env.database, "events_d41") == {"events_d41_h0", "events_d41_h1"}
    with psycopg.connect(dsn(env.database)) as conn:
        in_default = conn.execute("SELECT count(*) FROM events_default").fetchone()
    assert in_default == (0,)  # every row went to its own partition, none to the default


def test_a_partition_that_cannot_be_created_again_refuses_before_loading_a_row(archive_env: ArchiveEnv) -> None:
    env = archive_env
    archived_whole(env, default=True)
    # A row in the default partition now, in the range of a dropped partition: PostgreSQL refuses to create
    # that partition while the default holds a row of its range.
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("INSERT INTO events VALUES (800001, now() - interval '35 days', 'newcomer')")
    left, attached = rows(env.database), partitions(env.database)
    assert env.run(*EVERYTHING, name="events") == 3
    assert rows(env.database) == left  # not one row loaded
    assert partitions(env.database) == attached  # and no partition made
    events = client.EventsV1Api(env.admin_api).list_namespaced_event(env.namespace).items
    refused = next(e for e in events if e.reason == "SchemaMismatch")
    print(f"refused: {refused.note}")
    assert "CREATE TABLE public.events_d36 PARTITION OF" in refused.note
    assert "default partition" in refused.note


def test_a_kill_mid_unarchive_leaves_neither_rows_nor_an_empty_partition(archive_env: ArchiveEnv) -> None:
    env = archive_env
    before = archived_whole(env)
    left, attached = rows(env.database), partitions(env.database)
    job = run_until_failpoint(
        "jobs.archive", env.kubeconfig, env.namespace, "events", "archive.unarchive-before-commit", *EVERYTHING
    )
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert rows(env.database) == left
    assert partitions(env.database) == attached
    assert env.run(*EVERYTHING, name="events") == 0
    assert rows(env.database) == before
