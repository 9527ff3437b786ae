"""The backup job against the real servers, run with its restricted ServiceAccount."""

from __future__ import annotations

import json

from kubernetes import client

from tests.integration.backup_helpers import (
    conditions,
    get_status,
    load_sample_data,
    run_backup_job,
    schema_of,
    table_contents,
)
from tests.integration.environments import BackupEnv


def test_round_trip_backup_then_restore_gives_identical_schema_and_data(backup_env: BackupEnv) -> None:
    stack, admin_api, namespace = backup_env.stack, backup_env.admin_api, backup_env.namespace
    database, bucket = backup_env.database, backup_env.bucket
    s3_admin = backup_env.s3
    job_kubeconfig = backup_env.job_kubeconfig
    load_sample_data(stack, database)
    backup_env.setup()
    kubeconfig = job_kubeconfig("backup")

    assert run_backup_job(kubeconfig, namespace) == 0
    status = get_status(admin_api, namespace, "databasebackups", "orders")
    found = conditions(status)
    assert found["Ready"]["status"] == "True"
    assert found["BackupSucceeded"]["reason"] == "Completed"
    assert found["Progressing"]["status"] == "False"
    backup = status["lastSuccessfulBackup"]
    assert backup["key"].startswith("test/data/")
    assert backup["key"].endswith(".pgdump.zst")
    assert status["backupsKept"] == 1
    assert status["freshUntil"] > backup["completionTime"]

    stored = s3_admin.get_object(Bucket=bucket, Key=backup["key"])["Body"].read()
    import hashlib

    assert hashlib.sha256(stored).hexdigest() == backup["sha256"]
    manifest = json.loads(s3_admin.get_object(Bucket=bucket, Key=backup["manifestKey"])["Body"].read())
    counts = {f"{t['schema']}.{t['name']}": t["rows"] for t in manifest["tables"]}
    assert counts == {"public.everything": 502, "sales.orders": 300, 'Mixed Case.Weird "Name"': 3}
    assert manifest["countsInDumpSnapshot"] is True
    assert manifest["bytesStored"] == len(stored)
    assert manifest["bytesStored"] < manifest["bytesRaw"]

    # Restore into a new database through a DatabaseRestore.
    backup_env.create_restore("orders-restore", {**database, "dbname": "unused"}, f"{database['dbname']}_restored")
    assert backup_env.run("restore", name="orders-restore") == 0
    restore_status = get_status(admin_api, namespace, "databaserestores", "orders-restore")
    assert conditions(restore_status)["Succeeded"]["status"] == "True"
    assert restore_status["key"] == backup["key"]

    restored = f"{database['dbname']}_restored"
    assert schema_of(stack, database, restored) == schema_of(stack, database)
    original_rows = table_contents(database)
    assert original_rows == table_contents(database, restored)
    assert len(original_rows["public.everything"]) == 502

    events = client.EventsV1Api(admin_api).list_namespaced_event(namespace).items
    reasons = sorted((e.regarding.kind, e.reason) for e in events)
    assert ("DatabaseBackup", "Completed") in reasons
    assert ("DatabaseRestore", "Completed") in reasons
