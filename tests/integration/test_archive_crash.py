"""The archiver's guarantee under crashes: killed (SIGKILL) at random points, over and over, on a live
table, then run to completion. Every original row ends in the table or in exactly one archived object."""

from __future__ import annotations

import collections
import random
import signal
import threading
import time
from typing import Any

import psycopg
import pytest

from tests.harness.faults import Toxiproxy
from tests.integration.archive_helpers import archived_objects, dsn, ids_in_table, setup_archive
from tests.integration.backup_helpers import conditions, get_status
from tests.integration.environments import ArchiveEnv
from tests.integration.processes import KillStorm, run_until_failpoint, start_job

OLD_ROWS = 60000
KILLS = 20


def make_old_orders(database: dict[str, Any], rows: int) -> None:
    """orders(id, created_at, note) with `rows` rows, all 400 days old or so."""
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, note text)")
        conn.execute(
            "INSERT INTO orders SELECT g, now() - interval '400 days' + g * interval '1 minute', 'old' "
            "FROM generate_series(1, %s) g",
            (rows,),
        )


class LiveTraffic(threading.Thread):
    """An application writing to the table meanwhile: new rows, and short transactions on old ones."""

    def __init__(self, conn_dsn: str) -> None:
        super().__init__(daemon=True)
        self.conn_dsn = conn_dsn
        self.stop = threading.Event()
        self.inserted = 0

    def run(self) -> None:
        rng = random.Random(7)
        with psycopg.connect(self.conn_dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                self.inserted += 1
                conn.execute("INSERT INTO orders VALUES (%s, now(), 'live')", (10_000_000 + self.inserted,))
                with conn.transaction():
                    conn.execute("UPDATE orders SET note = note || '+' WHERE id = %s", (rng.randint(1, OLD_ROWS),))
                    time.sleep(0.005)  # hold the row lock a moment: the archiver must skip it, not wait
                time.sleep(0.005)


def test_sigkill_at_random_points_never_loses_or_duplicates_a_row(archive_env: ArchiveEnv) -> None:
    bucket, s3_admin = archive_env.bucket, archive_env.s3
    namespace, database, kubeconfig = archive_env.namespace, archive_env.database, archive_env.kubeconfig

    make_old_orders(database, OLD_ROWS)
    setup_archive(archive_env, batch={"rows": 50})
    traffic = LiveTraffic(dsn(database))
    traffic.start()
    storm = KillStorm(work=('"batch committed"', "FAILPOINT archive.before-commit"), seed=20261122)
    try:
        for attempt in range(KILLS):
            at_commit = attempt % 4 == 0  # every fourth kill lands exactly between upload and COMMIT
            job = start_job(
                "jobs.archive",
                kubeconfig,
                namespace,
                "orders",
                failpoint="archive.before-commit" if at_commit else "",
            )
            if at_commit:
                job.wait_for_line("FAILPOINT archive.before-commit")
                storm.kill(job)
            elif attempt % 4 == 1:  # somewhere after the first committed batch
                storm.kill_mid_work(job, seconds=0.5)
            else:  # anywhere after start-up: cleanup of leftovers, planning, a batch
                storm.kill_at_random(job, seconds=1.0)
        assert archive_env.run() == 0  # to completion
    finally:
        traffic.stop.set()
        traffic.join()
    print(f"where {KILLS} kills landed: {storm}; live rows inserted meanwhile: {traffic.inserted}")
    # Half the kills wait for a batch (at the failpoint or after a commit): each of those landed mid-work.
    assert storm.landings["mid-work"] >= KILLS // 2, storm

    in_table = ids_in_table(database)
    archived = collections.Counter(
        i for t in archived_objects(s3_admin, bucket).values() for i in t.column("id").to_pylist()
    )
    twice = {i for i, n in archived.items() if n > 1}
    both = in_table & set(archived)
    lost = set(range(1, OLD_ROWS + 1)) - in_table - set(archived)
    print(
        f"old rows archived: {len([i for i in archived if i <= OLD_ROWS])}, still in table: "
        f"{len([i for i in in_table if i <= OLD_ROWS])}"
    )
    assert not lost, f"{len(lost)} rows lost"
    assert not twice, f"{len(twice)} rows archived twice"
    assert not both, f"{len(both)} rows both archived and still in the table"
    assert {i for i in in_table if i <= OLD_ROWS} == set(), "the final run archives every old row"
    assert all(i > 10_000_000 for i in in_table)  # only live, recent rows remain
    with psycopg.connect(dsn(database)) as conn:
        recorded = {r[0] for r in conn.execute("SELECT object_key FROM cellar.archive_ledger")}
    assert recorded == set(archived_objects(s3_admin, bucket)), "every object in storage has a ledger row"


def test_sigterm_finishes_the_batch_in_flight_and_records_interrupted(
    archive_env: ArchiveEnv, toxiproxy: Toxiproxy
) -> None:
    bucket, s3_admin, admin_api = archive_env.bucket, archive_env.s3, archive_env.admin_api
    namespace, database, kubeconfig = archive_env.namespace, archive_env.database, archive_env.kubeconfig

    make_old_orders(database, 30_000)
    # Every request to the store 100 ms late: 600 batches take minutes, so SIGTERM lands mid-run however
    # slowly this test's thread reads the job's first lines.
    name = f"s3-late-{namespace}"
    port = toxiproxy.proxy(name, archive_env.stack.s3_endpoint.removeprefix("http://"))
    toxiproxy.add_toxic(name, "late", "latency", latency=100)
    setup_archive(
        archive_env, batch={"rows": 50}, storage={**archive_env.storage_spec, "endpoint": f"http://127.0.0.1:{port}"}
    )
    job = start_job("jobs.archive", kubeconfig, namespace, "orders")
    job.wait_for_line('"batch committed"')
    job.send_signal(signal.SIGTERM)
    job.communicate(timeout=60)
    assert job.returncode == 143
    found = conditions(get_status(admin_api, namespace, "tablearchives", "orders"))
    assert found["ArchiveSucceeded"]["reason"] == "Interrupted"
    assert found["Progressing"]["status"] == "False"
    in_table = ids_in_table(database)
    archived = [i for t in archived_objects(s3_admin, bucket).values() for i in t.column("id").to_pylist()]
    assert 0 < len(archived) < 30000
    assert len(archived) == len(set(archived))
    assert set(archived) | in_table == set(range(1, 30001))
    assert not set(archived) & in_table
    with psycopg.connect(dsn(database)) as conn:
        assert conn.execute("SELECT sum(rows) FROM cellar.archive_ledger").fetchone() == (len(archived),)


def test_max_run_time_stops_after_the_batch_in_flight(archive_env: ArchiveEnv) -> None:
    admin_api = archive_env.admin_api
    namespace, database = archive_env.namespace, archive_env.database

    make_old_orders(database, 30_000)
    setup_archive(archive_env, batch={"rows": 20}, maxRunTime="1s")
    assert archive_env.run() == 0
    last_run = get_status(admin_api, namespace, "tablearchives", "orders")["lastRun"]
    assert "stopped at maxRunTime" in last_run["message"]
    assert 0 < last_run["rows"] < 30000
    assert len(ids_in_table(database)) == 30000 - last_run["rows"]


@pytest.mark.parametrize("parallelism", [1, 3])
def test_every_batch_in_flight_is_rolled_back_by_a_kill(archive_env: ArchiveEnv, parallelism: int) -> None:
    namespace, database, kubeconfig = archive_env.namespace, archive_env.database, archive_env.kubeconfig

    make_old_orders(database, 3000)
    setup_archive(archive_env, batch={"rows": 100, "parallelism": parallelism})
    job = run_until_failpoint("jobs.archive", kubeconfig, namespace, "orders", "archive.before-commit")
    try:
        # In every lane, a batch waits before its COMMIT while the lane's next batch has been deleted on
        # its second connection: two open transactions per lane, each over its own rows.
        deadline = time.monotonic() + 120
        open_transactions: list[tuple[Any, ...]] = []
        while time.monotonic() < deadline and len(open_transactions) < 2 * parallelism:
            with psycopg.connect(dsn(database)) as conn:
                open_transactions = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'cellar-archive' "
                    "AND state = 'idle in transaction' AND backend_xid IS NOT NULL"
                ).fetchall()
            time.sleep(0.1)
        assert len(open_transactions) == 2 * parallelism, "batches overlap: one publishing, the next deleted"
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait()
    assert ids_in_table(database) == set(range(1, 3001))  # the server rolled every one back
    with psycopg.connect(dsn(database)) as conn:
        assert conn.execute("SELECT count(*) FROM cellar.archive_ledger").fetchone() == (0,)


def test_a_failed_upload_while_the_next_batch_is_deleted_loses_nothing(archive_env: ArchiveEnv) -> None:
    bucket, s3_admin, admin_api = archive_env.bucket, archive_env.s3, archive_env.admin_api
    namespace, database, kubeconfig = archive_env.namespace, archive_env.database, archive_env.kubeconfig

    make_old_orders(database, 3000)
    setup_archive(archive_env, batch={"rows": 100}, partitioning="None")
    job = start_job("jobs.archive", kubeconfig, namespace, "orders", failpoint="archive.upload=error-after:7")
    output, _ = job.communicate(timeout=60)
    assert job.returncode == 1, output  # retryable: the Job runs it again
    found = conditions(get_status(admin_api, namespace, "tablearchives", "orders"))
    assert found["ArchiveSucceeded"]["reason"] == "InjectedFailure"
    # Batches publish one after another: seven committed, the eighth failed, and the ninth (deleted
    # meanwhile on the other connection) rolled back with it.
    archived = [i for t in archived_objects(s3_admin, bucket).values() for i in t.column("id").to_pylist()]
    in_table = ids_in_table(database)
    assert len(archived) == 700
    assert sorted(archived + sorted(in_table)) == list(range(1, 3001))
    assert archive_env.run() == 0
    archived = [i for t in archived_objects(s3_admin, bucket).values() for i in t.column("id").to_pylist()]
    assert sorted(archived) == list(range(1, 3001))
    assert ids_in_table(database) == set()
