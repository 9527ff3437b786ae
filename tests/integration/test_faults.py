"""Faults between the jobs and the real servers, injected by a proxy (tests/harness/faults.py) or by the
database itself: transient ones are survived with the published backup identical to one made without them;
ones beyond the retry budget fail cleanly with nothing half-published; a killed connection never yields a
truncated backup or a lost or doubled row. Each test prints what it injected and what cellar did."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.harness.faults import FaultProxy, Request, Reset, Toxiproxy, Truncate, kube_error, s3_error
from tests.harness.stack import LocalStack
from tests.integration.archive_helpers import (
    archived_objects,
    dsn,
    ids_in_table,
    patch_spec,
    run_archive_job,
    setup_archive,
)
from tests.integration.backup_helpers import get_status, run_backup_job
from tests.integration.environments import ArchiveEnv, BackupEnv
from tests.integration.test_server_backup import checksums


@pytest.fixture
def s3_proxy(stack: LocalStack) -> Iterator[FaultProxy]:
    proxy = FaultProxy(stack.s3_endpoint).start()
    yield proxy
    proxy.stop()


def fill(database: dict[str, Any], megabytes: int) -> None:
    """A table of `megabytes` of text that compresses about 2:1."""
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE blobs AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS body "
            f"FROM generate_series(1, {megabytes * 1024 * 1024 // 64}) g"
        )


def via(env: BackupEnv, endpoint: str, **storage: Any) -> dict[str, Any]:
    return {**env.storage_spec, "endpoint": endpoint, **storage}


def log_lines(capsys: pytest.CaptureFixture[str], message: str) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if f'"msg": "{message}' in line]


def open_uploads(env: BackupEnv) -> list[dict[str, Any]]:
    return list(env.s3.list_multipart_uploads(Bucket=env.bucket).get("Uploads", []))


def objects(env: BackupEnv, prefix: str) -> list[str]:
    return [o["Key"] for o in env.s3.list_objects_v2(Bucket=env.bucket, Prefix=prefix).get("Contents", [])]


def test_throttling_errors_and_a_reset_part_are_retried_and_the_backup_is_identical(
    backup_env: BackupEnv, s3_proxy: FaultProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    env = backup_env
    fill(env.database, 24)
    parts: dict[str, int] = {}

    def script(request: Request) -> Any:
        if request.is_upload_part:
            number = request.path.split("partNumber=")[1].split("&")[0]
            parts[number] = parts.get(number, 0) + 1
            if number == "3" and parts[number] == 1:
                return Reset(after_bytes=1024 * 1024)  # the 3rd part's connection drops 1 MiB in
        if request.number % 4 == 0 and request.number < 40:
            return s3_error(503, "SlowDown", "Please reduce your request rate.")
        return None

    s3_proxy.script = script
    env.setup(storage=via(env, s3_proxy.url, partSizeMiB=5), compression={"algorithm": "none"})
    assert env.run() == 0
    injected = s3_proxy.faults()
    retried = log_lines(capsys, "storage request failed; retrying")
    print(f"S3 faults injected: {len(injected)}; retries logged: {len(retried)}; part attempts: {parts}")
    assert len(injected) >= 5
    assert len(retried) >= len(injected)
    assert parts["3"] >= 2  # the part was sent again, not the whole dump
    creates = [s for s in s3_proxy.seen if s.request.method == "POST" and s.request.path.endswith("?uploads")]
    assert len([s for s in creates if s.fault is None]) == 1  # one multipart upload for the dump (a 503 is retried)
    assert open_uploads(env) == []

    env.create_restore("identical", env.database, "restored_after_faults")
    assert env.run("restore", name="identical") == 0  # directly from MinIO, SHA-256 checked
    assert checksums(env.database, "restored_after_faults") == checksums(env.database, env.database["dbname"])


def test_storage_failing_beyond_the_retry_budget_publishes_nothing(
    backup_env: BackupEnv, s3_proxy: FaultProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    env = backup_env
    fill(env.database, 12)
    s3_proxy.script = lambda r: (
        s3_error(500, "InternalError", "We encountered an internal error.") if r.is_upload_part else None
    )
    env.setup(storage=via(env, s3_proxy.url, partSizeMiB=5), compression={"algorithm": "none"})
    assert env.run() == 1
    failed = env.conditions("DatabaseBackup", "orders")["BackupSucceeded"]
    print(f"beyond the budget: {len(s3_proxy.faults())} faults; reason {failed['reason']}: {failed['message']}")
    assert failed["status"] == "False"
    assert failed["reason"] in ("UploadFailed", "StorageUnavailable")
    assert len(log_lines(capsys, "storage request failed; retrying")) >= 4
    assert objects(env, "test/manifests/") == []
    assert objects(env, "test/data/") == []
    assert open_uploads(env) == []  # aborted by the failing run itself


def test_a_truncated_download_restores_nothing(backup_env: BackupEnv, s3_proxy: FaultProxy) -> None:
    env = backup_env
    fill(env.database, 4)
    env.setup()
    assert env.run() == 0
    patch_spec(env.admin_api, env.namespace, {"storage": via(env, s3_proxy.url)}, plural="databasebackups")
    s3_proxy.script = lambda r: (
        Truncate(0.5) if r.method == "GET" and ".pgdump" in r.path and "Range" not in r.headers else None
    )
    env.create_restore("cut-short", env.database, "never_half_restored")
    assert env.run("restore", name="cut-short") == 1  # retryable: the next attempt reads it whole
    failed = env.conditions("DatabaseRestore", "cut-short")["Succeeded"]
    print(f"truncated GET: reason {failed['reason']}: {failed['message']}")
    assert failed["status"] == "False"
    with psycopg.connect(env.stack.pg_dsn()) as conn:
        row = conn.execute("SELECT count(*) FROM pg_database WHERE datname = 'never_half_restored'").fetchone()
    assert row == (0,)  # the database made for the restore was dropped again


def api_kubeconfig(original: Path, proxy: FaultProxy, into: Path) -> Path:
    config = yaml.safe_load(original.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = proxy.url
        cluster["cluster"].pop("certificate-authority-data", None)
        cluster["cluster"]["certificate-authority"] = str(proxy.ca_file)
    into.write_text(yaml.safe_dump(config))
    return into


def upstream_ca(original: Path, into: Path) -> str:
    import base64

    config = yaml.safe_load(original.read_text())
    cluster = config["clusters"][0]["cluster"]
    if "certificate-authority" in cluster:
        return str(cluster["certificate-authority"])
    into.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    return str(into)


def test_a_throttling_api_server_neither_stops_a_run_nor_loses_its_outcome(
    backup_env: BackupEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = backup_env
    env.setup()
    original = env.kubeconfig
    server = yaml.safe_load(original.read_text())["clusters"][0]["cluster"]["server"]
    proxy = FaultProxy(server, upstream_ca=upstream_ca(original, tmp_path / "api-ca.pem"), tls=True).start()
    try:
        answers = iter([kube_error(429, "TooManyRequests", retry_after=1)] * 2 + [kube_error(500, "InternalError")])

        def script(request: Request) -> Any:
            if request.method == "PATCH" and request.path.endswith("/status"):
                return next(answers, None)
            return None

        proxy.script = script
        kubeconfig = api_kubeconfig(original, proxy, tmp_path / "through-proxy.kubeconfig")
        assert run_backup_job(kubeconfig, env.namespace) == 0
        retried = log_lines(capsys, "retrying Kubernetes call")
        print(f"API server faults injected: {len(proxy.faults())}; retries logged: {len(retried)}")
        assert len(proxy.faults()) == 3
        assert len(retried) == 3
        assert '"wait_seconds": 1' in retried[0]  # Retry-After honoured
        status = get_status(env.admin_api, env.namespace, "databasebackups", "orders")
        assert {c["type"]: c["status"] for c in status["conditions"]}["BackupSucceeded"] == "True"

        # A failing run's last status write is throttled too: the failure is still recorded.
        env.setup("unreachable", storage={**env.storage_spec, "bucket": "no-such-bucket-anywhere"})
        answers = iter([kube_error(429, "TooManyRequests", retry_after=1)] * 2)
        assert run_backup_job(kubeconfig, env.namespace, name="unreachable") == 3
        failed = get_status(env.admin_api, env.namespace, "databasebackups", "unreachable")
        assert {c["type"]: c["reason"] for c in failed["conditions"]}["BackupSucceeded"] == "BucketNotFound"
    finally:
        proxy.stop()


def kill_when(
    database: dict[str, Any], application: str, ready: Callable[[psycopg.Connection[Any]], bool], doing: str = "%"
) -> str:
    """Wait until a backend of `application` is at work, then pg_terminate_backend it; what it was doing."""
    deadline = time.monotonic() + 60
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT pid, left(query, 60) FROM pg_stat_activity WHERE application_name LIKE %s AND query LIKE %s "
                "AND state IN ('active', 'idle in transaction') AND pid <> pg_backend_pid() "
                "ORDER BY backend_start LIMIT 1",
                (application, doing),
            ).fetchone()
            if row is not None and ready(conn):
                conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                return str(row[1])
            time.sleep(0.05)
    raise AssertionError(f"no backend of {application} to kill within 60 s")


class Killer:
    """kill_when on a thread of its own, beside the job."""

    def __init__(
        self, database: dict[str, Any], application: str, ready: Callable[[Any], bool], doing: str = "%"
    ) -> None:
        self._found: list[str | BaseException] = []
        arguments = (database, application, ready, doing)
        self._thread = threading.Thread(target=self._run, args=arguments, daemon=True)
        self._thread.start()

    def _run(self, database: dict[str, Any], application: str, ready: Callable[[Any], bool], doing: str) -> None:
        try:
            self._found.append(kill_when(database, application, ready, doing))
        except BaseException as exc:  # noqa: BLE001 (raised on the test's thread by result())
            self._found.append(exc)

    def result(self) -> str:
        self._thread.join(timeout=90)
        found = self._found[0]
        if isinstance(found, BaseException):
            raise found
        return found


def test_a_database_connection_killed_mid_dump_fails_the_run(
    backup_env: BackupEnv, toxiproxy: Toxiproxy, stack: LocalStack
) -> None:
    env = backup_env
    fill(env.database, 16)
    # The store behind a slow link (toxiproxy: 4 MB/s), so the dump is still streaming when its backend dies.
    name = f"s3-slow-{env.namespace}"
    port = toxiproxy.proxy(name, stack.s3_endpoint.removeprefix("http://"))
    toxiproxy.add_toxic(name, "slow", "bandwidth", stream="upstream", rate=4096)
    env.setup(storage=via(env, f"http://127.0.0.1:{port}"), compression={"algorithm": "none"})
    killer = Killer(env.database, "cellar-backup-pg_dump", lambda conn: True, doing="COPY %")  # streaming rows
    outcome = env.run()  # on this thread: a job handles SIGTERM, which only the main thread may
    killed = killer.result()
    print(f"killed pg_dump's backend during: {killed!r}; exit {outcome}")
    assert outcome == 1
    failed = env.conditions("DatabaseBackup", "orders")["BackupSucceeded"]
    assert failed["reason"] == "DumpFailed"
    assert objects(env, "test/manifests/") == []
    assert objects(env, "test/data/") == []  # never a truncated backup
    toxiproxy.remove_toxic(name, "slow")
    assert env.run() == 0  # the next run, with the link well again, succeeds


def test_an_archive_batch_killed_midway_rolls_back_and_the_next_run_archives_each_row_once(
    archive_env: ArchiveEnv, toxiproxy: Toxiproxy, stack: LocalStack
) -> None:
    env = archive_env
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, body text)")
        conn.execute(
            "INSERT INTO events SELECT g, now() - interval '200 days' + g * interval '10 seconds', repeat('x', 200) "
            "FROM generate_series(1, 200000) g"
        )
        conn.execute("INSERT INTO events VALUES (999999, now(), 'recent')")
        conn.execute("CREATE INDEX ON events (created_at)")
    name = f"s3-slow-{env.namespace}"
    port = toxiproxy.proxy(name, stack.s3_endpoint.removeprefix("http://"))
    toxiproxy.add_toxic(name, "slow", "bandwidth", stream="upstream", rate=1024)
    setup_archive(
        env,
        table="events",
        name="events",
        storage={**env.storage_spec, "endpoint": f"http://127.0.0.1:{port}"},
        batch={"rows": 5000},
    )

    def in_a_batch(conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute("SELECT count(*) FROM events").fetchone()
        return row is not None and row[0] < 200001  # at least one batch committed, another under way

    killer = Killer(env.database, "cellar-archive%", in_a_batch)
    outcome = run_archive_job(env.kubeconfig, env.namespace, name="events")
    killed = killer.result()
    print(f"killed the archive's backend during: {killed!r}; exit {outcome}")
    assert outcome == 1
    failed = env.conditions("TableArchive", "events")["ArchiveSucceeded"]
    assert failed["reason"] == "ConnectionFailed"  # was an unexpected InternalError before this test
    # Where the kill lands decides what the job can know: mid-batch, that the batch rolled back; during the
    # COMMIT, only that the ledger will tell the next run. Either is true; the next run must settle both.
    assert "rolled back" in failed["message"] or "died during COMMIT" in failed["message"], failed["message"]
    toxiproxy.remove_toxic(name, "slow")
    assert run_archive_job(env.kubeconfig, env.namespace, name="events") == 0
    assert ids_in_table(env.database, "events") == {999999}
    archived = [
        i
        for table in archived_objects(env.s3, env.bucket, "public.events").values()
        for i in table.column("id").to_pylist()
    ]
    assert len(archived) == len(set(archived)) == 200000  # every row once, none twice


def make_events(env: ArchiveEnv, rows: int) -> None:
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, body text)")
        conn.execute(
            "INSERT INTO events SELECT g, now() - interval '200 days' + g * interval '10 seconds', md5(g::text) "
            f"FROM generate_series(1, {rows}) g"
        )
        conn.execute("INSERT INTO events VALUES (999999, now(), 'recent')")
        conn.execute("CREATE INDEX ON events (created_at)")


def test_an_archive_whose_uploads_keep_failing_keeps_every_row_in_the_table(
    archive_env: ArchiveEnv, s3_proxy: FaultProxy
) -> None:
    env = archive_env
    make_events(env, 20000)
    s3_proxy.script = lambda r: s3_error(500, "InternalError", "internal error") if r.method == "PUT" else None
    through_proxy = {**env.storage_spec, "endpoint": s3_proxy.url}
    setup_archive(env, table="events", name="events", storage=through_proxy, batch={"rows": 5000})
    assert run_archive_job(env.kubeconfig, env.namespace, name="events") == 1
    failed = env.conditions("TableArchive", "events")["ArchiveSucceeded"]
    print(f"archive beyond the budget: {len(s3_proxy.faults())} faults; {failed['reason']}: {failed['message']}")
    assert failed["reason"] in ("UploadFailed", "StorageUnavailable")
    assert len(ids_in_table(env.database, "events")) == 20001  # no row left the table
    s3_proxy.script = lambda r: None
    assert run_archive_job(env.kubeconfig, env.namespace, name="events") == 0
    archived = [
        i for t in archived_objects(env.s3, env.bucket, "public.events").values() for i in t.column("id").to_pylist()
    ]
    assert len(archived) == len(set(archived)) == 20000


def test_unarchive_and_a_restore_test_ride_through_throttling(
    archive_env: ArchiveEnv, backup_env: BackupEnv, s3_proxy: FaultProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    env = archive_env
    make_events(env, 5000)
    through_proxy = {**env.storage_spec, "endpoint": s3_proxy.url}
    setup_archive(env, table="events", name="events", storage=through_proxy)
    assert run_archive_job(env.kubeconfig, env.namespace, name="events") == 0
    s3_proxy.script = lambda r: s3_error(503, "SlowDown", "reduce your request rate") if r.number % 3 == 0 else None
    assert (
        run_archive_job(
            env.kubeconfig, env.namespace, "unarchive", "--from", "2000-01-01", "--to", "2100-01-01", name="events"
        )
        == 0
    )
    with psycopg.connect(dsn(env.database)) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT id) FROM events_unarchived").fetchone()
    assert row == (5000, 5000)

    backup_env.setup(storage={**backup_env.storage_spec, "endpoint": s3_proxy.url})
    assert backup_env.run() == 0
    assert backup_env.run("verify") == 0
    assert backup_env.conditions("DatabaseBackup", "orders")["Verified"]["status"] == "True"
    retried = log_lines(capsys, "storage request failed; retrying")
    print(f"unarchive, backup and verify under 503s: {len(s3_proxy.faults())} faults, {len(retried)} retries logged")
    assert len(retried) >= len(s3_proxy.faults()) > 3


def test_a_network_cut_to_the_database_mid_archive_rolls_back_and_the_next_run_finishes(
    archive_env: ArchiveEnv, toxiproxy: Toxiproxy, stack: LocalStack
) -> None:
    env = archive_env
    make_events(env, 100000)
    name = f"pg-{env.namespace}"
    port = toxiproxy.proxy(name, f"127.0.0.1:{env.database['port']}")
    direct = dsn(env.database)
    env.database = {**env.database, "port": str(port)}  # the Secret points the job at toxiproxy
    toxic_s3 = f"s3-{env.namespace}"
    s3_port = toxiproxy.proxy(toxic_s3, stack.s3_endpoint.removeprefix("http://"))
    toxiproxy.add_toxic(toxic_s3, "slow", "bandwidth", stream="upstream", rate=1024)
    toxiproxy.add_toxic(name, "lag", "latency", latency=20, jitter=10)  # a slow network, survived
    setup_archive(
        env,
        table="events",
        name="events",
        batch={"rows": 5000},
        storage={**env.storage_spec, "endpoint": f"http://127.0.0.1:{s3_port}"},
    )

    def cut_after_a_batch() -> None:
        deadline = time.monotonic() + 60
        with psycopg.connect(direct, autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute("SELECT count(*) FROM events").fetchone()
                if row is not None and row[0] < 100001:
                    toxiproxy.add_toxic(name, "cut", "reset_peer", timeout=0)  # every connection reset
                    return
                time.sleep(0.05)

    cutter = threading.Thread(target=cut_after_a_batch, daemon=True)
    cutter.start()
    outcome = run_archive_job(env.kubeconfig, env.namespace, name="events")
    cutter.join(timeout=90)
    failed = env.conditions("TableArchive", "events")["ArchiveSucceeded"]
    print(f"network cut mid-archive: exit {outcome}, {failed['reason']}: {failed['message']}")
    assert outcome == 1
    assert failed["reason"] == "ConnectionFailed"
    toxiproxy.remove_toxic(name, "cut")
    toxiproxy.remove_toxic(toxic_s3, "slow")
    assert run_archive_job(env.kubeconfig, env.namespace, name="events") == 0
    archived = [
        i for t in archived_objects(env.s3, env.bucket, "public.events").values() for i in t.column("id").to_pylist()
    ]
    assert len(archived) == len(set(archived)) == 100000
