"""Encrypted backups and archives (spec.encryption, age) against the real servers: keys made by the stock `age-keygen`,
backups read back by the stock `age -d | zstd -d | pg_restore`, and by cellar's own restore and restore
test; without the right identity nothing is written to the target; no key is ever logged or recorded."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest
from kubernetes import client

from common.encryption import fingerprint
from tests.integration.archive_helpers import ids_in_table, list_all, manifests, patch_spec, setup_archive
from tests.integration.backup_helpers import load_sample_data, table_contents
from tests.integration.environments import ArchiveEnv, BackupEnv
from tests.integration.processes import run_until_failpoint, start_job

IDENTITY_SECRET = "cellar-backup-identity"  # the names the backup job's Role may read
RECIPIENTS_MAP = "cellar-backup-recipients"


def keypair(directory: Path, name: str) -> tuple[Path, str, str]:
    """An identity file made by the stock age-keygen: (its path, its text, its public key)."""
    path = directory / f"{name}.txt"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout
    return path, path.read_text(), public.strip()


def everything_written(env: BackupEnv, out: str, *kinds_and_names: tuple[str, str]) -> str:
    """The job's log output, the named resources' status, and every Event of the namespace, as text."""
    statuses = [json.dumps(env.status(kind, name)) for kind, name in kinds_and_names]
    events = client.EventsV1Api(env.admin_api).list_namespaced_event(env.namespace).items
    return "\n".join([out, *statuses, *(f"{e.reason} {e.note}" for e in events)])


def stock_restore(identity: Path, encrypted: Path, dsn: str) -> None:
    """`age -d -i identity encrypted | zstd -d | pg_restore -d dsn`, each the stock tool."""
    age = subprocess.Popen(["age", "-d", "-i", str(identity), str(encrypted)], stdout=subprocess.PIPE)
    zstd = subprocess.Popen(["zstd", "-d", "-c"], stdin=age.stdout, stdout=subprocess.PIPE)
    restore = subprocess.run(
        ["pg_restore", "--no-owner", "--single-transaction", "--exit-on-error", "-d", dsn],
        stdin=zstd.stdout,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (age.wait(), zstd.wait(), restore.returncode) == (0, 0, 0), restore.stderr


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    ops_path, ops_identity, ops_public = keypair(tmp_path, "ops")
    _, vault_identity, vault_public = keypair(tmp_path, "vault")
    return {
        "ops_path": ops_path,
        "ops_identity": ops_identity,
        "ops_public": ops_public,
        "vault_identity": vault_identity,
        "vault_public": vault_public,
    }


def create_recipients_map(env: BackupEnv, text: str) -> None:
    client.CoreV1Api(env.admin_api).create_namespaced_config_map(
        env.namespace, {"metadata": {"name": RECIPIENTS_MAP}, "data": {"recipients.txt": text}}
    )


def test_an_encrypted_backup_restores_with_stock_age_and_through_cellar(
    backup_env: BackupEnv, keys: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env, database = backup_env, backup_env.database
    load_sample_data(env.stack, database)
    # The ops key comes from a recipients file in a ConfigMap, the vault key inline; the restore test
    # decrypts with the ops identity, from the Secret the Role names.
    create_recipients_map(env, f"# ops team\n{keys['ops_public']}\n")
    env.create_secret(IDENTITY_SECRET, {"identity.txt": keys["ops_identity"]})
    env.setup(
        encryption={
            "recipients": [keys["vault_public"]],
            "recipientsFrom": {"configMapKeyRef": {"name": RECIPIENTS_MAP, "key": "recipients.txt"}},
            "identitySecretRef": {"name": IDENTITY_SECRET, "key": "identity.txt"},
        },
        verify={"enabled": True},
    )
    assert env.run() == 0
    status = env.status("DatabaseBackup", "orders")
    found = {c["type"]: c for c in status["conditions"]}
    assert found["Verified"]["reason"] == "RestoreTestPassed"
    assert "age-encrypted to 2 recipients" in found["BackupSucceeded"]["message"]
    key = status["lastSuccessfulBackup"]["key"]
    assert key.endswith(".pgdump.zst.age")

    stored = env.s3.get_object(Bucket=env.bucket, Key=key)["Body"].read()
    assert stored.startswith(b"age-encryption.org/v1\n")
    manifest = json.loads(
        env.s3.get_object(Bucket=env.bucket, Key=status["lastSuccessfulBackup"]["manifestKey"])["Body"].read()
    )
    assert manifest["formatVersion"] == 2
    assert manifest["encryption"] == {
        "format": "age",
        "recipients": [fingerprint(keys["vault_public"]), fingerprint(keys["ops_public"])],
    }
    # Integrity is checkable without the key: the checksum is of the stored, encrypted bytes.
    assert hashlib.sha256(stored).hexdigest() == manifest["sha256"] == status["lastSuccessfulBackup"]["sha256"]
    assert manifest["bytesStored"] == len(stored)

    # Restore without cellar: the stock age, zstd and pg_restore.
    encrypted = tmp_path / "backup.age"
    encrypted.write_bytes(stored)
    by_hand = f"{database['dbname']}_by_hand"
    with psycopg.connect(env.stack.pg_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{by_hand}" OWNER "{database["username"]}"')
    stock_restore(keys["ops_path"], encrypted, env.on({**database, "dbname": by_hand}).dsn)
    original = table_contents(database)
    assert table_contents(database, by_hand) == original
    assert len(original["public.everything"]) == 502

    # Through a DatabaseRestore, decrypting with the other recipient's identity.
    env.create_secret(IDENTITY_SECRET, {"identity.txt": keys["vault_identity"]})  # either recipient opens it
    restored = f"{database['dbname']}_restored"
    env.create_restore(
        "decrypted",
        {**database, "dbname": "unused"},
        restored,
        decryption={"identitySecretRef": {"name": IDENTITY_SECRET, "key": "identity.txt"}},
    )
    assert env.run("restore", name="decrypted") == 0
    assert env.conditions("DatabaseRestore", "decrypted")["Succeeded"]["status"] == "True"
    assert table_contents(database, restored) == original

    written = everything_written(
        env, capsys.readouterr().out, ("DatabaseBackup", "orders"), ("DatabaseRestore", "decrypted")
    )
    assert "restore test passed" in written  # the log was captured
    for identity in (keys["ops_identity"], keys["vault_identity"]):
        secret_line = next(line for line in identity.splitlines() if line.startswith("AGE-SECRET-KEY-1"))
        assert secret_line not in written


def test_without_the_right_identity_nothing_is_written_and_a_damaged_object_is_refused(
    backup_env: BackupEnv, keys: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    env, database = backup_env, backup_env.database
    load_sample_data(env.stack, database)
    env.setup(encryption={"recipients": [keys["ops_public"]]})
    assert env.run() == 0
    key = env.status("DatabaseBackup", "orders")["lastSuccessfulBackup"]["key"]
    target = f"{database['dbname']}_never"
    # Allowed, but said: with no identity in the cluster, no restore test can read these backups.
    assert (
        "no restore test can read these backups"
        in env.conditions("DatabaseBackup", "orders")["BackupSucceeded"]["message"]
    )
    logged = capsys.readouterr().out
    assert logged.count("no restore test can read them") == 1  # logged once

    def target_exists() -> bool:
        with psycopg.connect(env.stack.pg_dsn()) as conn:
            found = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (target,)).fetchone()
        return found == (1,)

    # No identity at all.
    env.create_restore("no-key", {**database, "dbname": "unused"}, target)
    assert env.run("restore", name="no-key") == 3
    failed = env.conditions("DatabaseRestore", "no-key")["Succeeded"]
    assert failed["reason"] == "DecryptionFailed"
    assert "spec.decryption.identitySecretRef" in failed["message"]
    assert fingerprint(keys["ops_public"]) in failed["message"]
    assert not target_exists()

    # An identity of another key.
    env.create_secret(IDENTITY_SECRET, {"identity.txt": keys["vault_identity"]})
    decryption = {"identitySecretRef": {"name": IDENTITY_SECRET, "key": "identity.txt"}}
    env.create_restore("wrong-key", {**database, "dbname": "unused"}, target, decryption=decryption)
    assert env.run("restore", name="wrong-key") == 3
    failed = env.conditions("DatabaseRestore", "wrong-key")["Succeeded"]
    assert failed["reason"] == "DecryptionFailed"
    assert "none of the identities given" in failed["message"]
    assert not target_exists()

    # The right identity, but one byte of the stored object altered past the header: the chunk fails
    # age's authentication; the restore is refused and leaves no database behind.
    env.create_secret(IDENTITY_SECRET, {"identity.txt": keys["ops_identity"]})
    stored = bytearray(env.s3.get_object(Bucket=env.bucket, Key=key)["Body"].read())
    stored[len(stored) // 2] ^= 0x01
    env.s3.put_object(Bucket=env.bucket, Key=key, Body=bytes(stored))
    env.create_restore("damaged", {**database, "dbname": "unused"}, target, decryption=decryption)
    assert env.run("restore", name="damaged") == 3
    failed = env.conditions("DatabaseRestore", "damaged")["Succeeded"]
    assert failed["reason"] == "ChecksumMismatch"
    assert not target_exists()

    written = everything_written(
        env,
        capsys.readouterr().out,
        ("DatabaseRestore", "no-key"),
        ("DatabaseRestore", "wrong-key"),
        ("DatabaseRestore", "damaged"),
    )
    for identity in (keys["ops_identity"], keys["vault_identity"]):
        secret_line = next(line for line in identity.splitlines() if line.startswith("AGE-SECRET-KEY-1"))
        assert secret_line not in written


def test_bad_encryption_settings_are_refused_before_anything_is_written(
    backup_env: BackupEnv, keys: dict[str, Any]
) -> None:
    env = backup_env
    create_recipients_map(env, "# nobody yet\n")
    env.setup(encryption={"recipientsFrom": {"configMapKeyRef": {"name": RECIPIENTS_MAP, "key": "recipients.txt"}}})
    assert env.run() == 3
    failed = env.conditions("DatabaseBackup", "orders")["BackupSucceeded"]
    assert failed["reason"] == "InvalidSpec"
    assert 'ConfigMap "cellar-backup-recipients" key "recipients.txt" holds no age recipient' in failed["message"]
    assert env.s3.list_objects_v2(Bucket=env.bucket).get("KeyCount", 0) == 0


@pytest.mark.parametrize("fault", ["SIGTERM", "upload error"])
def test_an_encrypted_dump_cut_short_leaves_nothing_behind(
    backup_env: BackupEnv, keys: dict[str, Any], fault: str
) -> None:
    env = backup_env
    with psycopg.connect(env.dsn, autocommit=True) as conn:  # a dump of many 1 MiB reads
        conn.execute(
            "CREATE TABLE filler AS SELECT g AS id, md5(g::text) || repeat(md5((g * 7)::text), 8) AS payload "
            "FROM generate_series(1, 200000) g"
        )
    env.setup(
        compression={"algorithm": "none"},
        storage={**env.storage_spec, "partSizeMiB": 5},
        encryption={"recipients": [keys["ops_public"]]},
    )
    if fault == "SIGTERM":
        job = run_until_failpoint("jobs.backup", env.kubeconfig, env.namespace, "orders", "backup.dump-streaming")
        job.send_signal(signal.SIGTERM)
        _, err = job.communicate(timeout=60)
        assert job.returncode == 143, err
        reason = "Interrupted"
    else:  # the 12th MiB fails as an upload would, while the age thread is uploading the first ones
        job = start_job(
            "jobs.backup", env.kubeconfig, env.namespace, "orders", failpoint="backup.dump-streaming=error-after:12"
        )
        _, err = job.communicate(timeout=120)
        assert job.returncode == 1, err
        reason = "InjectedFailure"
    assert env.conditions("DatabaseBackup", "orders")["BackupSucceeded"]["reason"] == reason
    assert env.s3.list_objects_v2(Bucket=env.bucket).get("KeyCount", 0) == 0
    assert not env.s3.list_multipart_uploads(Bucket=env.bucket).get("Uploads")


ARCHIVE_IDENTITY = "cellar-archive-identity"


def decrypted_with_stock_age(env: ArchiveEnv, key: str, identity: Path, directory: Path) -> Path:
    """An archived object fetched and decrypted by the stock `age -d`: the Parquet file it holds."""
    encrypted = directory / key.rsplit("/", 1)[-1]
    encrypted.write_bytes(env.s3.get_object(Bucket=env.bucket, Key=key)["Body"].read())
    plain = directory / encrypted.name.removesuffix(".age")
    subprocess.run(["age", "-d", "-i", str(identity), "-o", str(plain), str(encrypted)], check=True)
    return plain


def encrypted_orders(env: ArchiveEnv, keys: dict[str, Any], rows: int, **spec: Any) -> None:
    """A table of `rows` orders, one an hour from 100 days ago, and a TableArchive that encrypts to the ops
    key, with the ops identity in the Secret the archive job's Role names."""
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, note text)")
        conn.execute(
            "INSERT INTO orders SELECT g, now() - interval '100 days' + g * interval '1 hour', 'order ' || g "
            "FROM generate_series(1, %s) g",
            (rows,),
        )
    env.create_secret(ARCHIVE_IDENTITY, {"key.txt": keys["ops_identity"]})
    identity = {"name": ARCHIVE_IDENTITY, "key": "key.txt"}
    setup_archive(env, encryption={"recipients": [keys["ops_public"]], "identitySecretRef": identity}, **spec)


def test_encrypted_archives_read_back_with_stock_age_and_duckdb_and_through_unarchive(
    archive_env: ArchiveEnv, keys: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env, database = archive_env, archive_env.database
    encrypted_orders(env, keys, 600, batch={"rows": 200})
    assert env.run() == 0
    left = ids_in_table(database)
    archived_ids = set(range(1, 601)) - left
    assert archived_ids  # the rows older than 30 days

    batch_manifests = manifests(env.s3, env.bucket)
    assert batch_manifests
    objects = [o for m in batch_manifests for o in m["objects"]]
    for manifest in batch_manifests:
        assert manifest["formatVersion"] == 2
        assert manifest["encryption"] == {"format": "age", "recipients": [fingerprint(keys["ops_public"])]}
    duckdb_rows = []
    for described in objects:
        key = described["objectKey"]
        assert key.endswith(".parquet.age")
        stored = env.s3.get_object(Bucket=env.bucket, Key=key)["Body"].read()
        assert stored.startswith(b"age-encryption.org/v1\n")
        assert hashlib.sha256(stored).hexdigest() == described["sha256"]  # checkable without the key
        plain = decrypted_with_stock_age(env, key, keys["ops_path"], tmp_path)
        duckdb_rows += duckdb.sql(f"SELECT id, note FROM read_parquet('{plain}')").fetchall()
    assert {i for i, _ in duckdb_rows} == archived_ids
    assert len(duckdb_rows) == len(archived_ids)
    assert all(note == f"order {i}" for i, note in duckdb_rows)

    # unarchive decrypts with the identity from the Secret.
    assert env.run("unarchive", "--from", "2000-01-01", "--to", "2100-01-01") == 0
    with psycopg.connect(env.dsn) as conn:
        back = {r[0] for r in conn.execute("SELECT id FROM orders_unarchived")}
    assert back == archived_ids

    # Without an identity, unarchive refuses before it creates anything.
    patch_spec(env.admin_api, env.namespace, {"encryption": {"identitySecretRef": None}})
    assert env.run("unarchive", "--from", "2000-01-01", "--to", "2100-01-01", "--side-table", "never") == 3
    with psycopg.connect(env.dsn) as conn:
        assert conn.execute("SELECT to_regclass('public.never')").fetchone() == (None,)
    written = capsys.readouterr().out
    assert "DecryptionFailed" in written
    assert "spec.encryption.identitySecretRef" in written
    secret_line = next(line for line in keys["ops_identity"].splitlines() if line.startswith("AGE-SECRET-KEY-1"))
    assert secret_line not in written


def test_an_encrypted_leftover_of_a_killed_run_is_checked_and_removed(
    archive_env: ArchiveEnv, keys: dict[str, Any]
) -> None:
    env, database = archive_env, archive_env.database
    encrypted_orders(env, keys, 300, batch={"rows": 100, "parallelism": 1})
    # Killed between its uploads and its COMMIT: encrypted objects no ledger row describes.
    job = run_until_failpoint("jobs.archive", env.kubeconfig, env.namespace, "orders", "archive.before-commit")
    job.send_signal(signal.SIGKILL)
    job.wait()
    leftovers = [o["Key"] for o in list_all(env.s3, env.bucket, "test/public.orders/")]
    assert leftovers
    assert all(key.endswith(".parquet.age") for key in leftovers)
    assert ids_in_table(database) == set(range(1, 301))  # the batch rolled back

    assert env.run() == 0
    message = env.status("TableArchive", "orders")["lastRun"]["message"]
    assert f"{len(leftovers) + 1} leftovers of crashed runs removed" in message  # and the batch's manifest
    remaining = {o["Key"] for o in list_all(env.s3, env.bucket, "test/public.orders/")}
    assert remaining.isdisjoint(leftovers)
    with psycopg.connect(env.dsn) as conn:
        recorded = {r[0] for r in conn.execute("SELECT object_key FROM cellar.archive_ledger")}
    assert recorded == remaining
