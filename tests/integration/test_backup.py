"""The backup job against the real servers, run with its restricted ServiceAccount."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.harness.stack import LocalStack
from tests.integration.backup_helpers import (
    conditions,
    get_status,
    load_sample_data,
    run_backup_job,
    schema_of,
    setup_backup,
    table_contents,
)


def test_round_trip_backup_then_restore_gives_identical_schema_and_data(
    stack: LocalStack,
    admin_api: Any,
    namespace: str,
    database: dict[str, Any],
    storage_spec: dict[str, Any],
    storage_secret: None,
    bucket: str,
    s3_admin: Any,
    create_secret: Callable[..., None],
    create_resource: Callable[..., Any],
    job_kubeconfig: Callable[[str], Path],
) -> None:
    load_sample_data(stack, database)
    setup_backup(stack, database, storage_spec, create_secret, create_resource)
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
    create_secret("cellar-restore-target", {**database, "dbname": "unused"})
    create_resource(
        "DatabaseRestore",
        {
            "metadata": {"name": "orders-restore"},
            "spec": {
                "backup": {"name": "orders"},
                "createDatabase": True,
                "target": {
                    "secretRef": {"name": "cellar-restore-target"},
                    "dbname": f"{database['dbname']}_restored",
                    "sslMode": "disable",
                },
            },
        },
    )
    assert run_backup_job(kubeconfig, namespace, "restore", name="orders-restore") == 0
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
