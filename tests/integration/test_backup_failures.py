"""The backup job when things go wrong: kills at every stage, a failing pg_dump, SIGTERM."""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.backup_helpers import conditions, get_status, run_backup_job, setup_backup
from tests.integration.environments import BackupEnv
from tests.integration.processes import Job, run_until_failpoint


def _fill(database: dict[str, Any], rows: int = 200_000) -> None:
    dsn = (
        f"host={database['host']} port={database['port']} dbname={database['dbname']} "
        f"user={database['username']} password={database['password']}"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS filler (id int PRIMARY KEY, payload text)")
        conn.execute(
            "INSERT INTO filler SELECT g, md5(g::text) || repeat(md5((g * 7)::text), 8) "
            "FROM generate_series((SELECT coalesce(max(id), 0) + 1 FROM filler), "
            f"(SELECT coalesce(max(id), 0) + {rows} FROM filler)) g"
        )


def _run_until_failpoint(kubeconfig: Path, namespace: str, failpoint: str) -> Job:
    return run_until_failpoint("jobs.backup", kubeconfig, namespace, "orders", failpoint)


def _published_backups(s3_admin: Any, bucket: str) -> dict[str, dict[str, Any]]:
    """Every manifest in storage, checked against its object: a backup must be complete or absent."""
    listing = s3_admin.list_objects_v2(Bucket=bucket, Prefix="test/manifests/").get("Contents", [])
    backups = {}
    for item in listing:
        manifest = json.loads(s3_admin.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
        data = s3_admin.get_object(Bucket=bucket, Key=manifest["dataKey"])["Body"].read()
        assert len(data) == manifest["bytesStored"], item["Key"]
        assert hashlib.sha256(data).hexdigest() == manifest["sha256"], item["Key"]
        backups[manifest["backupId"]] = manifest
    return backups


def _keys(s3_admin: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_admin.list_objects_v2(Bucket=bucket).get("Contents", []))


@pytest.fixture
def backup_setup(backup_env: BackupEnv) -> BackupEnv:
    _fill(backup_env.database)
    backup_env.setup(
        compression={"algorithm": "none"},
        storage={**backup_env.storage_spec, "partSizeMiB": 5},
        retention={"keepLast": 1, "incompleteAfter": "1s"},
    )
    return backup_env


def test_kills_at_every_stage_never_publish_a_broken_backup_nor_delete_a_good_one(backup_setup: BackupEnv) -> None:
    namespace, bucket, s3_admin = backup_setup.namespace, backup_setup.bucket, backup_setup.s3
    admin_api = backup_setup.admin_api
    kubeconfig = backup_setup.kubeconfig
    assert run_backup_job(kubeconfig, namespace) == 0
    good = _published_backups(s3_admin, bucket)
    assert len(good) == 1

    for point in ("backup.dump-streaming", "backup.before-manifest", "backup.retention"):
        job = _run_until_failpoint(kubeconfig, namespace, point)
        if point == "backup.dump-streaming":
            # The upload is in progress: an unfinished multipart upload exists, no new object.
            assert len(s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) <= 1
        job.send_signal(signal.SIGKILL)
        job.wait()
        after = _published_backups(s3_admin, bucket)
        print(f"killed at {point}: complete backups {sorted(after)}; objects {_keys(s3_admin, bucket)}")
        if point == "backup.retention":
            # The new backup was published before retention; the kill fell between deleting the old
            # manifest and its data: the newest good backup is intact.
            newest = max(after)
            assert newest not in good
            good = {newest: after[newest]}
        assert set(good) <= set(after), f"a good backup vanished after a kill at {point}"

    # The next run succeeds, and its cleanup removes every leftover of the killed runs.
    assert run_backup_job(kubeconfig, namespace) == 0
    final = _published_backups(s3_admin, bucket)
    assert len(final) == 1
    (manifest,) = final.values()
    expected = [manifest["dataKey"], f"test/manifests/{manifest['backupId']}.json", "test/cellar-owner.json"]
    assert _keys(s3_admin, bucket) == sorted(expected)
    assert not s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert conditions(get_status(admin_api, namespace, "databasebackups", "orders"))["Ready"]["status"] == "True"


def test_sigterm_during_the_dump_aborts_the_upload_and_records_interrupted(backup_setup: BackupEnv) -> None:
    namespace, bucket, s3_admin = backup_setup.namespace, backup_setup.bucket, backup_setup.s3
    admin_api = backup_setup.admin_api
    job = _run_until_failpoint(backup_setup.kubeconfig, namespace, "backup.dump-streaming")
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 143, err
    assert _keys(s3_admin, bucket) == []
    assert not s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads")
    status = get_status(admin_api, namespace, "databasebackups", "orders")
    assert conditions(status)["BackupSucceeded"]["reason"] == "Interrupted"
    assert conditions(status)["Ready"]["status"] == "False"
    assert status["lastRun"]["reason"] == "Interrupted"


def test_failing_pg_dump_publishes_nothing_and_reports_its_message(backup_env: BackupEnv) -> None:
    stack, namespace, database = backup_env.stack, backup_env.namespace, backup_env.database
    bucket, s3_admin = backup_env.bucket, backup_env.s3
    admin_api = backup_env.admin_api
    _fill(database, rows=50_000)
    # A table the backup role may not read: pg_dump fails with "permission denied".
    with psycopg.connect(stack.pg_dsn(database["dbname"]), autocommit=True) as conn:
        conn.execute("CREATE TABLE zz_secret_payroll (id int, salary numeric)")
        conn.execute("REVOKE ALL ON zz_secret_payroll FROM PUBLIC")
    backup_env.setup()
    assert backup_env.run() == 3  # a privilege the role lacks does not come with time

    status = get_status(admin_api, namespace, "databasebackups", "orders")
    found = conditions(status)
    assert found["BackupSucceeded"]["reason"] == "InsufficientPrivilege"
    assert "permission denied for table zz_secret_payroll" in found["BackupSucceeded"]["message"]
    assert f"GRANT pg_read_all_data TO {database['username']}" in found["BackupSucceeded"]["message"]
    assert found["Ready"]["status"] == "False"
    assert "lastSuccessfulBackup" not in status
    assert _keys(s3_admin, bucket) == []
    assert not s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_dry_run_checks_everything_and_writes_nothing(
    backup_setup: BackupEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace, bucket, s3_admin = backup_setup.namespace, backup_setup.bucket, backup_setup.s3
    admin_api = backup_setup.admin_api
    assert run_backup_job(backup_setup.kubeconfig, namespace, "--dry-run") == 0
    assert _keys(s3_admin, bucket) == []
    assert get_status(admin_api, namespace, "databasebackups", "orders") == {}
    assert "dry run: resource, Secrets" in capsys.readouterr().out


def test_wrong_database_password_is_a_permanent_failure_in_status(
    capsys: pytest.CaptureFixture[str], backup_env: BackupEnv
) -> None:
    stack, namespace, database = backup_env.stack, backup_env.namespace, backup_env.database
    storage_spec, admin_api, create_secret = backup_env.storage_spec, backup_env.admin_api, backup_env.create_secret
    create_resource = backup_env.create_resource
    setup_backup(stack, {**database, "password": "wrong-password-123"}, storage_spec, create_secret, create_resource)
    assert backup_env.run() == 3
    found = conditions(get_status(admin_api, namespace, "databasebackups", "orders"))
    assert found["Ready"]["reason"] == "AuthenticationFailed"
    assert "wrong-password-123" not in json.dumps(found)
    assert "wrong-password-123" not in capsys.readouterr().out


def test_invalid_spec_is_recorded_and_exits_3(backup_env: BackupEnv) -> None:
    stack, namespace, database = backup_env.stack, backup_env.namespace, backup_env.database
    storage_spec, admin_api, create_secret = backup_env.storage_spec, backup_env.admin_api, backup_env.create_secret
    create_resource = backup_env.create_resource
    spec = {
        **storage_spec,
        "credentials": {
            **storage_spec["credentials"],
            "secretAccessKey": {"name": "cellar-object-storage", "key": "nope"},
        },
    }
    setup_backup(stack, database, spec, create_secret, create_resource)
    assert backup_env.run() == 3
    ready = conditions(get_status(admin_api, namespace, "databasebackups", "orders"))["Ready"]
    assert ready["reason"] == "InvalidSpec"
    assert ready["message"] == (
        'spec.storage.credentials.secretAccessKey: Secret "cellar-object-storage" has no key '
        '"nope" (keys present: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)'
    )


def test_a_pg_dump_older_than_the_server_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backup_env: BackupEnv
) -> None:
    namespace = backup_env.namespace
    admin_api, bucket = backup_env.admin_api, backup_env.bucket
    s3_admin = backup_env.s3
    old = tmp_path / "pg_dump"
    old.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n")
    old.chmod(0o755)
    monkeypatch.setenv("CELLAR_PG_BINDIR", str(tmp_path))
    backup_env.setup()
    assert backup_env.run() == 3
    ready = conditions(get_status(admin_api, namespace, "databasebackups", "orders"))["Ready"]
    assert ready["reason"] == "PgDumpTooOld"
    assert ready["message"].startswith("pg_dump 9 is older than the server (15.")
    assert _keys(s3_admin, bucket) == []


def test_a_server_certificate_the_secrets_ca_did_not_sign_is_permanent_and_says_what_to_fix(
    backup_env: BackupEnv, tmp_path: Path
) -> None:
    from tests.harness.certificates import self_signed

    env = backup_env
    other_ca, _ = self_signed("some other CA", tmp_path)
    with env.stack.tls() as server_ca:
        env.database = {**env.database, "sslrootcert": other_ca.read_text()}
        env.setup()
        env.create_resource(  # the same, verifying the server's certificate and name
            "DatabaseBackup",
            {"metadata": {"name": "verified"}, "spec": {**_verify_full(env), "storage": env.storage_spec}},
        )
        assert env.run(name="verified") == 3  # not retried: a person must fix the CA
        refused = env.conditions("DatabaseBackup", "verified")["BackupSucceeded"]
        print(f"wrong CA: {refused['reason']}: {refused['message']}")
        assert refused["reason"] == "CertificateRejected"
        assert "sslrootcert" in refused["message"]
        assert "sslMode verify-full" in refused["message"]
        assert "BEGIN CERTIFICATE" not in refused["message"]

        env.create_secret("cellar-database", {**env.database, "sslrootcert": server_ca})
        assert env.run(name="verified") == 0  # the right CA: verify-full passes


def _verify_full(env: BackupEnv) -> dict[str, Any]:
    return {"database": {"secretRef": {"name": "cellar-database"}, "sslMode": "verify-full"}}
