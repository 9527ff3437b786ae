"""S3 Object Lock (spec.storage.objectLock) against the real MinIO: every object cellar writes is locked, the
store refuses to delete a locked version (MinIO answers 400 InvalidRequest "Object is WORM protected"; AWS
answers 403 AccessDenied), retention keeps what a lock holds and says until when, deletes it once the lock
ends, and a failed restore test takes a backup out of the catalog without deleting anything."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from botocore.exceptions import ClientError

from tests.harness.stack import wait_for
from tests.integration.archive_helpers import archived_objects, dsn, setup_archive
from tests.integration.backup_helpers import load_sample_data
from tests.integration.environments import ArchiveEnv, BackupEnv, JobEnvironment

# Long enough that a backup and the next one on a loaded machine finish while the first one's lock holds.
LOCK_SECONDS = 40


def with_locked_bucket(env: JobEnvironment, **lock: Any) -> Any:
    """The same environment over a new bucket created with object lock enabled, and a spec.storage that
    asks for it."""
    name = f"cellar-locked-{uuid.uuid4().hex[:8]}"
    env.s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    spec = {
        **env.storage_spec,
        "bucket": name,
        "objectLock": {"mode": "Governance", "retainFor": f"{LOCK_SECONDS}s", **lock},
    }
    return dataclasses.replace(env, bucket=name, storage_spec=spec)


def versions(env: JobEnvironment, prefix: str) -> list[dict[str, Any]]:
    return list(env.s3.list_object_versions(Bucket=env.bucket, Prefix=prefix).get("Versions", []))


def manifest_keys(env: JobEnvironment) -> list[str]:
    found = env.s3.list_objects_v2(Bucket=env.bucket, Prefix="test/manifests/").get("Contents", [])
    return sorted(o["Key"] for o in found)


def test_locked_backups_outlive_their_retention_until_the_lock_ends(backup_env: BackupEnv) -> None:
    env = with_locked_bucket(backup_env)
    load_sample_data(env.stack, env.database)
    env.setup(storage=env.storage_spec, retention={"keepLast": 1, "incompleteAfter": "1s"})
    started = datetime.now(UTC)
    assert env.run() == 0
    first_written = datetime.now(UTC)

    # Every object is written locked, until about LOCK_SECONDS after it was written.
    for listed in versions(env, "test/"):
        head = env.s3.head_object(Bucket=env.bucket, Key=listed["Key"], VersionId=listed["VersionId"])
        assert head["ObjectLockMode"] == "GOVERNANCE"
        assert started + timedelta(seconds=LOCK_SECONDS - 1) < head["ObjectLockRetainUntilDate"]
        assert head["ObjectLockRetainUntilDate"] < first_written + timedelta(seconds=LOCK_SECONDS + 1)
        # The store itself refuses to delete a locked version before its date.
        with pytest.raises(ClientError) as refused:
            env.s3.delete_object(Bucket=env.bucket, Key=listed["Key"], VersionId=listed["VersionId"])
        assert "WORM" in refused.value.response["Error"]["Message"]

    # The second backup: keepLast 1 lets the first go, but its lock holds it. Kept, and said so.
    assert env.run() == 0
    status = env.status("DatabaseBackup", "orders")
    message = status["lastRun"]["message"]
    assert "by object lock" in message
    assert "kept until" in message
    assert status["backupsKept"] == 2
    assert len(manifest_keys(env)) == 2
    assert env.conditions("DatabaseBackup", "orders")["Ready"]["status"] == "True"

    # Once every lock has ended, the next run deletes what the policy lets go, every version of it.
    last_lock_ends = max(
        env.s3.head_object(Bucket=env.bucket, Key=v["Key"], VersionId=v["VersionId"])["ObjectLockRetainUntilDate"]
        for v in versions(env, "test/")
    )

    def ended() -> bool:
        return datetime.now(UTC) > last_lock_ends + timedelta(seconds=1)

    wait_for(f"the locks to end (the last at {last_lock_ends})", ended, None, timeout=LOCK_SECONDS + 60)
    assert env.run() == 0
    status = env.status("DatabaseBackup", "orders")
    assert status["backupsKept"] == 1
    assert "object lock" not in status["lastRun"]["message"]
    (kept,) = manifest_keys(env)
    backup = json.loads(env.s3.get_object(Bucket=env.bucket, Key=kept)["Body"].read())
    left = sorted(v["Key"] for v in versions(env, "test/"))
    assert left == sorted([kept, backup["dataKey"], "test/cellar-owner.json"])  # the owner record is never deleted
    assert not env.s3.list_object_versions(Bucket=env.bucket, Prefix="test/").get("DeleteMarkers")


def test_a_failed_restore_test_is_recorded_on_locked_objects_without_deleting_them(backup_env: BackupEnv) -> None:
    env = with_locked_bucket(backup_env)
    load_sample_data(env.stack, env.database)
    env.setup(storage=env.storage_spec, verify={"enabled": True})
    assert env.run() == 0
    key = env.status("DatabaseBackup", "orders")["lastSuccessfulBackup"]["key"]
    # A lock protects versions, not keys: a new, damaged version of the object is what a restore reads.
    stored = bytearray(env.s3.get_object(Bucket=env.bucket, Key=key)["Body"].read())
    stored[len(stored) // 2] ^= 0xFF
    env.s3.put_object(Bucket=env.bucket, Key=key, Body=bytes(stored))

    assert env.run("verify") == 3
    found = env.conditions("DatabaseBackup", "orders")
    assert found["Verified"]["reason"] == "ChecksumMismatch"
    assert found["Ready"]["status"] == "False"
    # The manifest is still there (its lock forbids deleting it), and its copy in rejected/ takes the
    # backup out of the catalog: there is no backup left to verify.
    assert len(manifest_keys(env)) == 1
    rejected = env.s3.list_objects_v2(Bucket=env.bucket, Prefix="test/rejected/").get("Contents", [])
    assert len(rejected) == 1
    assert env.run("verify") == 3
    assert env.conditions("DatabaseBackup", "orders")["Verified"]["reason"] == "BackupNotFound"


def test_object_lock_on_a_bucket_without_it_is_refused_before_anything_is_written(backup_env: BackupEnv) -> None:
    env = backup_env
    env.setup(storage={**env.storage_spec, "objectLock": {"mode": "Compliance", "retainFor": "30d"}})
    assert env.run() == 3
    failed = env.conditions("DatabaseBackup", "orders")["BackupSucceeded"]
    assert failed["reason"] == "ObjectLockDisabled"
    assert "--object-lock-enabled-for-bucket" in failed["message"]
    assert env.s3.list_objects_v2(Bucket=env.bucket).get("KeyCount", 0) == 0


def test_archived_rows_are_written_locked(archive_env: ArchiveEnv) -> None:
    env = with_locked_bucket(archive_env, legalHold=True)
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, note text)")
        conn.execute(
            "INSERT INTO orders SELECT g, now() - interval '100 days' + g * interval '1 hour', 'x' "
            "FROM generate_series(1, 200) g"
        )
    setup_archive(env, storage=env.storage_spec, batch={"rows": 100})
    assert env.run() == 0
    assert sum(t.num_rows for t in archived_objects(env.s3, env.bucket).values()) == 200
    written = versions(env, "test/")
    assert written
    for listed in written:
        head = env.s3.head_object(Bucket=env.bucket, Key=listed["Key"], VersionId=listed["VersionId"])
        assert (head["ObjectLockMode"], head["ObjectLockLegalHoldStatus"]) == ("GOVERNANCE", "ON")
