"""Retention and restore tests (verification) on real storage and a real database."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.harness.stack import LocalStack, wait_for
from tests.integration.backup_helpers import conditions, get_status, load_sample_data, run_backup_job
from tests.integration.environments import BackupEnv


def _put_old_backup(s3_admin: Any, bucket: str, when: datetime) -> str:
    """A complete backup as an older run of cellar would have left it."""
    backup_id = when.strftime("%Y%m%dT%H%M%SZ") + "-old"
    data_key = f"test/data/{backup_id}.pgdump.zst"
    s3_admin.put_object(Bucket=bucket, Key=data_key, Body=b"old dump")
    stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest = {
        "formatVersion": 1,
        "backupId": backup_id,
        "dataKey": data_key,
        "database": "db",
        "serverVersion": "15",
        "pgDumpVersion": "15",
        "startTime": stamp,
        "endTime": stamp,
        "bytesRaw": 8,
        "bytesStored": 8,
        "sha256": "0" * 64,
        "compression": {"algorithm": "zstd", "level": 3},
        "tables": [],
        "runId": "old",
    }
    s3_admin.put_object(Bucket=bucket, Key=f"test/manifests/{backup_id}.json", Body=json.dumps(manifest))
    return backup_id


def _manifest_ids(s3_admin: Any, bucket: str, prefix: str = "test/manifests/") -> set[str]:
    return {
        o["Key"].rsplit("/", 1)[1].removesuffix(".json")
        for o in s3_admin.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    }


INCOMPLETE_AFTER = timedelta(seconds=20)


def _wait_until_older_than(s3_admin: Any, bucket: str, key: str, age: timedelta) -> None:
    """Until the store's LastModified of `key` (second precision) is more than `age` ago (bounded)."""
    written = s3_admin.head_object(Bucket=bucket, Key=key)["LastModified"]

    def older() -> bool:
        return datetime.now(UTC) - written > age + timedelta(seconds=1)

    wait_for(f"{key} (written at {written}) to grow {age} old", older, None, timeout=age.total_seconds() + 60)


@pytest.mark.parametrize("dry_run", [False, True])
def test_retention_deletes_exactly_what_the_policy_says(dry_run: bool, backup_env: BackupEnv) -> None:
    namespace = backup_env.namespace
    bucket, s3_admin = backup_env.bucket, backup_env.s3
    admin_api = backup_env.admin_api
    s3_admin.put_object(Bucket=bucket, Key="test/data/crashed-long-ago.pgdump.zst", Body=b"partial")
    now = datetime.now(UTC)
    days_ago = [1, 2, 3, 10, 40, 70, 100]
    old = {d: _put_old_backup(s3_admin, bucket, now - timedelta(days=d)) for d in days_ago}
    _wait_until_older_than(s3_admin, bucket, "test/data/crashed-long-ago.pgdump.zst", INCOMPLETE_AFTER)
    # Written now: the run below, however slow, finishes well inside INCOMPLETE_AFTER of it.
    s3_admin.put_object(Bucket=bucket, Key="test/data/in-flight-elsewhere.pgdump.zst", Body=b"partial")
    backup_env.setup(
        retention={
            "keepLast": 2,
            "keepMonthly": 3,
            "incompleteAfter": f"{INCOMPLETE_AFTER.seconds}s",
            "dryRun": dry_run,
        },
    )
    assert backup_env.run() == 0

    status = get_status(admin_api, namespace, "databasebackups", "orders")
    new_id = status["lastSuccessfulBackup"]["key"].rsplit("/", 1)[1].split(".")[0]
    remaining = _manifest_ids(s3_admin, bucket)
    data_keys = {o["Key"] for o in s3_admin.list_objects_v2(Bucket=bucket, Prefix="test/data/")["Contents"]}
    if dry_run:
        assert remaining == {new_id, *old.values()}
        assert "test/data/crashed-long-ago.pgdump.zst" in data_keys
        return
    # keepLast 2: the new one and 1 day ago. keepMonthly 3: newest of this month, and of the two months
    # before (which of days_ago those are depends on today's date, so compute it).
    months: dict[tuple[int, int], str] = {}
    for days in sorted(days_ago):
        when = now - timedelta(days=days)
        months.setdefault((when.year, when.month), old[days])
    this_month = (now.year, now.month)
    monthly = [v for k, v in sorted(months.items(), reverse=True) if k != this_month][:2]
    assert remaining == {new_id, old[1], *monthly}
    assert status["backupsKept"] == len(remaining)
    assert "test/data/crashed-long-ago.pgdump.zst" not in data_keys
    assert "test/data/in-flight-elsewhere.pgdump.zst" in data_keys  # younger than the safety window
    for deleted in set(old.values()) - remaining:
        assert f"test/data/{deleted}.pgdump.zst" not in data_keys


def _corrupt(s3_admin: Any, bucket: str, key: str) -> None:
    body = bytearray(s3_admin.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF  # same size, one byte different
    s3_admin.put_object(Bucket=bucket, Key=key, Body=bytes(body))


def _scratch_databases(stack: LocalStack) -> list[str]:
    with psycopg.connect(stack.pg_dsn()) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'cellar_verify_%'")]


@pytest.fixture
def verified_backup(backup_env: BackupEnv) -> BackupEnv:
    stack, namespace, admin_api = backup_env.stack, backup_env.namespace, backup_env.admin_api
    load_sample_data(stack, backup_env.database)
    backup_env.setup(verify={"enabled": True})
    kubeconfig = backup_env.kubeconfig
    assert run_backup_job(kubeconfig, namespace) == 0
    status = get_status(admin_api, namespace, "databasebackups", "orders")
    assert conditions(status)["Verified"]["reason"] == "RestoreTestPassed"
    assert status["lastSuccessfulBackup"]["verified"] is True
    assert status["lastVerification"]["result"] == "Passed"
    assert _scratch_databases(stack) == []
    return backup_env


def test_verification_catches_a_corrupted_object(verified_backup: BackupEnv) -> None:
    namespace, bucket, s3_admin = verified_backup.namespace, verified_backup.bucket, verified_backup.s3
    admin_api = verified_backup.admin_api
    status = get_status(admin_api, namespace, "databasebackups", "orders")
    _corrupt(s3_admin, bucket, status["lastSuccessfulBackup"]["key"])
    assert verified_backup.run("verify") == 3
    found = conditions(get_status(admin_api, namespace, "databasebackups", "orders"))
    assert found["Verified"]["reason"] == "ChecksumMismatch"
    assert found["Ready"]["reason"] == "ChecksumMismatch"
    assert _manifest_ids(s3_admin, bucket) == set()  # quarantined: no longer a complete backup
    assert len(_manifest_ids(s3_admin, bucket, "test/rejected/")) == 1


def test_verification_catches_row_counts_that_do_not_match(verified_backup: BackupEnv) -> None:
    namespace, bucket, s3_admin = verified_backup.namespace, verified_backup.bucket, verified_backup.s3
    admin_api = verified_backup.admin_api
    key = get_status(admin_api, namespace, "databasebackups", "orders")["lastSuccessfulBackup"]["manifestKey"]
    manifest = json.loads(s3_admin.get_object(Bucket=bucket, Key=key)["Body"].read())
    manifest["tables"][0]["rows"] += 1
    s3_admin.put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest))
    assert verified_backup.run("verify") == 3
    verified = conditions(get_status(admin_api, namespace, "databasebackups", "orders"))["Verified"]
    assert verified["reason"] == "RowCountMismatch"
    table = manifest["tables"][0]
    assert (
        f"{table['schema']}.{table['name']}: {table['rows'] - 1} restored, {table['rows']} in manifest"
        in (verified["message"])
    )


def test_restore_refuses_a_corrupted_backup_and_leaves_no_target(
    verified_backup: BackupEnv, backup_env: BackupEnv
) -> None:
    stack, namespace, bucket, s3_admin = backup_env.stack, backup_env.namespace, backup_env.bucket, backup_env.s3
    admin_api, database = backup_env.admin_api, backup_env.database
    status = get_status(admin_api, namespace, "databasebackups", "orders")
    _corrupt(s3_admin, bucket, status["lastSuccessfulBackup"]["key"])
    target = f"{database['dbname']}_r"
    backup_env.create_restore("r", database, target)
    assert verified_backup.run("restore", name="r") == 3
    succeeded = conditions(get_status(admin_api, namespace, "databaserestores", "r"))["Succeeded"]
    assert succeeded["status"] == "False"
    assert succeeded["reason"] == "ChecksumMismatch"
    with psycopg.connect(stack.pg_dsn()) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (target,)).fetchone() == (0,)


def test_list_shows_every_backup_with_what_keeps_it(backup_env: BackupEnv, capsys: pytest.CaptureFixture[str]) -> None:
    load_sample_data(backup_env.stack, backup_env.database)
    backup_env.setup(retention={"keepLast": 2}, verify={"enabled": True})
    assert backup_env.run() == 0
    time.sleep(1.1)  # manifests record times to the second: two backups in one second tie
    assert backup_env.run() == 0
    capsys.readouterr()

    assert backup_env.run("list", "-o", "json") == 0
    out = capsys.readouterr()
    listed = json.loads(out.out)  # the listing alone on stdout; the log lines went to stderr
    assert '"run finished"' in out.err
    backups = listed["backups"]
    status = get_status(backup_env.admin_api, backup_env.namespace, "databasebackups", "orders")
    assert [b["completed"] for b in backups] == sorted((b["completed"] for b in backups), reverse=True)
    newest, older = backups
    assert newest["key"] == status["lastSuccessfulBackup"]["key"]
    assert newest["kept_by"] == ["newest", "keepLast"]
    assert older["kept_by"] == ["keepLast"]
    assert newest["verified"] == "passed"
    assert newest["bytes_stored"] == status["lastSuccessfulBackup"]["sizeBytes"]
    assert (newest["compression"], newest["encrypted_to"], newest["locked"]) == ("zstd", [], "")

    assert backup_env.run("list") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["COMPLETED", "BACKUP", "DATABASES"]
    assert [line.split()[1] for line in table[1:]] == [newest["backup_id"], older["backup_id"]]


def _wal_lsn(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(row[0])


def test_a_restore_test_on_another_server_costs_the_source_nothing(
    backup_env: BackupEnv, pg_servers: Callable[[int], LocalStack], matrix_client_tools: str, monkeypatch: Any
) -> None:
    """spec.verify.target: the scratch database is made on a second real server (PostgreSQL 17, newer than the
    source); the source writes no WAL for it (CREATE DATABASE alone logs the whole template there otherwise)."""
    from tests.conftest import new_database

    monkeypatch.setenv("CELLAR_PG_BINDIR", matrix_client_tools)
    env = backup_env
    load_sample_data(env.stack, env.database)
    scratch_server = pg_servers(17)
    target = {**new_database(scratch_server), "dbname": "postgres"}
    env.create_secret("cellar-verify-target", target)
    verify = {
        "enabled": True,
        "target": {"secretRef": {"name": "cellar-verify-target"}, "sslMode": "disable"},
    }
    env.setup(verify=verify)
    source_before, target_before = _wal_lsn(env.stack.pg_dsn()), _wal_lsn(scratch_server.pg_dsn())
    assert env.run() == 0
    source_wal = _wal_lsn(env.stack.pg_dsn()) - source_before
    target_wal = _wal_lsn(scratch_server.pg_dsn()) - target_before
    verified = env.conditions("DatabaseBackup", "orders")["Verified"]
    print(
        f"restore test on the scratch server: WAL on the source {source_wal} bytes, on the scratch server "
        f"{target_wal} bytes; {verified['message']}"
    )
    assert verified["reason"] == "RestoreTestPassed"
    assert "into PostgreSQL 17" in verified["message"]
    assert target_wal > 4 * 1024 * 1024  # the scratch database and the restore were written there
    assert source_wal < target_wal / 4  # and not on the source
    for server in (env.stack, scratch_server):
        assert _scratch_databases(server) == []  # dropped after the test
