"""One owner per storage prefix, against the real API server and MinIO: a second resource given the same
bucket and prefix is refused before it writes anything, readers take only their own resource's backups,
a deleted and re-created resource takes its prefix back only when a person says so, and two first runs at
once cannot both claim a prefix."""

from __future__ import annotations

import json
import threading
from typing import Any

import psycopg
import pytest
from kubernetes import client

from common.errors import PermanentError
from common.ownership import Area, Owner, claim_prefix
from common.secrets import StorageCredentials
from common.spec import SpecReader
from common.storage import open_store
from common.storage_spec import StorageSpec
from tests.conftest import new_database
from tests.harness.stack import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.integration.archive_helpers import archived_objects, dsn, ids_in_table, setup_archive
from tests.integration.backup_helpers import _dsn
from tests.integration.environments import ArchiveEnv, BackupEnv

OWNER_KEY = "test/cellar-owner.json"


def keys(env: BackupEnv | ArchiveEnv, prefix: str = "test/") -> set[str]:
    pages = env.s3.get_paginator("list_objects_v2").paginate(Bucket=env.bucket, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def manifests(env: BackupEnv) -> dict[str, dict[str, Any]]:
    return {
        key: json.loads(env.s3.get_object(Bucket=env.bucket, Key=key)["Body"].read())
        for key in keys(env, "test/manifests/")
    }


def uid(env: BackupEnv | ArchiveEnv, plural: str, name: str) -> str:
    stored = client.CustomObjectsApi(env.admin_api).get_namespaced_custom_object(
        "cellar.dev", "v1alpha1", env.namespace, plural, name
    )
    return str(stored["metadata"]["uid"])


def second_backup(env: BackupEnv, name: str, **spec: Any) -> dict[str, Any]:
    """Another DatabaseBackup `name`, of another database (in the Secret the backup job may also read),
    with the same storage block, prefix included: a copied resource."""
    other = new_database(env.stack)
    with psycopg.connect(_dsn(other), autocommit=True) as conn:
        conn.execute("CREATE TABLE b_only AS SELECT g AS id FROM generate_series(1, 10) g")
    env.create_secret("cellar-verify-target", other)
    env.create_resource(
        "DatabaseBackup",
        {
            "metadata": {"name": name},
            "spec": {
                "database": {"secretRef": {"name": "cellar-verify-target"}, "sslMode": "disable"},
                "storage": env.storage_spec,
                **spec,
            },
        },
    )
    return other


def test_a_second_resource_on_a_prefix_is_refused_and_deletes_nothing(backup_env: BackupEnv) -> None:
    env = backup_env
    env.setup(retention={"keepLast": 1})
    second_backup(env, "copied", retention={"keepLast": 1})
    assert env.run() == 0
    owned = keys(env)
    assert OWNER_KEY in owned

    assert env.run(name="copied") == 3
    refused = env.conditions("DatabaseBackup", "copied")["BackupSucceeded"]
    print(f"the copy: {refused['reason']}: {refused['message']}")
    assert refused["reason"] == "PrefixInUse"
    message = refused["message"]
    assert f"DatabaseBackup {env.namespace}/orders (uid {uid(env, 'databasebackups', 'orders')})" in message
    assert "spec.storage.prefix" in message
    assert f"kubectl annotate databasebackup copied -n {env.namespace} cellar.dev/take-over-prefix=" in message
    assert keys(env) == owned  # nothing written, nothing deleted

    assert env.run() == 0  # the owner goes on; its retention keeps one backup, its own
    (only,) = manifests(env).values()
    assert only["resource"] == f"{env.namespace}/orders"


def test_readers_take_only_their_own_resources_backups(
    backup_env: BackupEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    """A prefix two resources wrote to before it had an owner: each keeps, lists and restores its own."""
    env = backup_env
    env.setup(retention={"keepLast": 1})
    other = second_backup(env, "other", retention={"keepLast": 1})
    assert env.run(name="other") == 0  # "other" wrote first, and owns the prefix
    env.s3.delete_object(Bucket=env.bucket, Key=OWNER_KEY)  # as if it wrote before cellar had owner records
    assert env.run() == 0  # "orders" claims the prefix now; "other"'s backup is older than its own
    assert env.run() == 0  # keepLast 1 thins out orders' backups, never other's
    by_resource = sorted(m["resource"] for m in manifests(env).values())
    assert by_resource == [f"{env.namespace}/orders", f"{env.namespace}/other"]

    capsys.readouterr()
    assert env.run("list", "-o", "json") == 0
    listed = json.loads(capsys.readouterr().out)["backups"]
    assert [b["backup_id"] for b in listed] == [
        m["backupId"] for m in manifests(env).values() if m["resource"] == f"{env.namespace}/orders"
    ]
    assert env.status("DatabaseBackup", "orders")["backupsKept"] == 1

    # The newest backup under the prefix is "other"'s (written by hand just now); a restore of "orders"
    # still takes orders' own.
    foreign = next(m for m in manifests(env).values() if m["resource"].endswith("/other"))
    newer = {**foreign, "backupId": "29990101T000000Z-newest", "endTime": "2999-01-01T00:00:00Z"}
    env.s3.put_object(Bucket=env.bucket, Key="test/manifests/29990101T000000Z-newest.json", Body=json.dumps(newer))
    env.create_restore("newest", env.database, "restored_newest")
    assert env.run("restore", name="newest") == 0
    with psycopg.connect(_dsn(env.database, "restored_newest")) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert "b_only" not in tables  # not other's database
    with psycopg.connect(_dsn(other)) as conn:
        assert conn.execute("SELECT count(*) FROM b_only").fetchone() == (10,)


def test_a_recreated_resource_takes_its_prefix_back_only_when_annotated(backup_env: BackupEnv) -> None:
    env = backup_env
    env.setup(retention={"keepLast": 2})
    assert env.run() == 0
    old_uid = uid(env, "databasebackups", "orders")
    client.CustomObjectsApi(env.admin_api).delete_namespaced_custom_object(
        "cellar.dev", "v1alpha1", env.namespace, "databasebackups", "orders"
    )
    env.setup(retention={"keepLast": 2})  # the same name, a new uid
    before = keys(env)
    assert env.run() == 3
    refused = env.conditions("DatabaseBackup", "orders")["BackupSucceeded"]
    assert refused["reason"] == "PrefixInUse"
    assert "created anew" in refused["message"]
    assert f"cellar.dev/take-over-prefix={old_uid}" in refused["message"]
    assert keys(env) == before

    client.CustomObjectsApi(env.admin_api).patch_namespaced_custom_object(
        "cellar.dev",
        "v1alpha1",
        env.namespace,
        "databasebackups",
        "orders",
        {"metadata": {"annotations": {"cellar.dev/take-over-prefix": old_uid}}},
    )
    assert env.run() == 0
    record = json.loads(env.s3.get_object(Bucket=env.bucket, Key=OWNER_KEY)["Body"].read())
    assert record["owner"]["uid"] == uid(env, "databasebackups", "orders") != old_uid
    assert [o["uid"] for o in record["previousOwners"]] == [old_uid]
    assert env.status("DatabaseBackup", "orders")["backupsKept"] == 2  # the old resource's backup is kept
    assert env.run() == 0  # owned now: no annotation needed, and keepLast 2 thins out across both
    assert env.status("DatabaseBackup", "orders")["backupsKept"] == 2
    assert len(manifests(env)) == 2


def test_two_first_runs_at_once_claim_a_prefix_once(backup_env: BackupEnv) -> None:
    env = backup_env
    spec = StorageSpec.parse(SpecReader(env.storage_spec, "spec.storage"))
    credentials = StorageCredentials(S3_ACCESS_KEY, S3_SECRET_KEY, None, None)
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def first_run(n: int) -> None:
        store = open_store(spec, credentials)
        barrier.wait(timeout=60)
        try:
            claim_prefix(Area.of_backups(store), Owner("DatabaseBackup", env.namespace, f"r{n}", f"uid-{n}"))
            outcomes.append("claimed")
        except PermanentError as error:
            outcomes.append(error.reason)

    threads = [threading.Thread(target=first_run, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    print(f"8 first runs at once: {sorted(outcomes)}")
    assert sorted(outcomes) == ["PrefixInUse"] * 7 + ["claimed"]


def test_two_archives_of_one_table_on_one_prefix_are_refused_other_tables_share_it(archive_env: ArchiveEnv) -> None:
    env = archive_env
    other = {**env.database, "dbname": f"{env.database['dbname']}_b"}  # the same role's second database
    with psycopg.connect(env.stack.pg_dsn(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {other['dbname']} OWNER {env.database['username']}")
    for database in (env.database, other):
        with psycopg.connect(dsn(database), autocommit=True) as conn:
            for table in ("orders", "events"):
                conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, created_at timestamptz NOT NULL)")
                conn.execute(f"INSERT INTO {table} SELECT g, now() - interval '100 days' FROM generate_series(1, 50) g")
    setup_archive(env)  # public.orders of the test's database
    setup_archive(env, table="events", name="events")  # another table, the same prefix: its own folder
    assert env.run() == 0
    assert env.run(name="events") == 0
    assert ids_in_table(env.database) == set() == ids_in_table(env.database, "events")

    # A copy of the first, over the same table of another database, the same prefix.
    env.create_resource(
        "TableArchive",
        {
            "metadata": {"name": "copied"},
            "spec": {
                "database": {"secretRef": {"name": "cellar-database"}, "dbname": other["dbname"], "sslMode": "disable"},
                "storage": env.storage_spec,
                "table": {"schema": "public", "name": "orders"},
                "timestampColumn": "created_at",
                "olderThan": "30d",
            },
        },
    )
    before = keys(env)
    assert env.run(name="copied") == 3
    refused = env.conditions("TableArchive", "copied")["ArchiveSucceeded"]
    assert refused["reason"] == "PrefixInUse"
    assert "(the archive of public.orders)" in refused["message"]
    assert keys(env) == before
    assert len(ids_in_table(other)) == 50  # nothing moved
    assert sum(t.num_rows for t in archived_objects(env.s3, env.bucket).values()) == 50


def test_a_dry_run_reports_the_refusal_and_claims_nothing(backup_env: BackupEnv) -> None:
    env = backup_env
    env.setup()
    assert env.run("--dry-run") == 0
    assert OWNER_KEY not in keys(env)  # a dry run claims nothing
    second_backup(env, "copied")
    assert env.run() == 0
    assert env.run("--dry-run", name="copied") == 3
