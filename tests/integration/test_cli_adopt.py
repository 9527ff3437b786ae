"""`kubectl cellar adopt`: a re-created DatabaseBackup (or TableArchive) is refused with PrefixInUse, as a new user
finds it; adopt reads the prefix's owner record in MinIO, shows the hand-over, and with --yes annotates the
predecessor's uid, so the next run goes on and manages what the predecessor wrote."""

from __future__ import annotations

import json

import psycopg
import pytest
from kubernetes import client

from common.ownership import TAKE_OVER_ANNOTATION
from tests.integration.archive_helpers import dsn, ids_in_table, setup_archive
from tests.integration.cli_helpers import cellar
from tests.integration.environments import ArchiveEnv, BackupEnv


def annotations(env: BackupEnv, name: str) -> dict[str, str]:
    stored = client.CustomObjectsApi(env.admin_api).get_namespaced_custom_object(
        "cellar.dev", "v1alpha1", env.namespace, "databasebackups", name
    )
    return dict(stored["metadata"].get("annotations") or {})


def test_adopt_hands_a_recreated_backup_its_predecessors_prefix(
    backup_env: BackupEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    env, kubeconfig = backup_env, backup_env.stack.kubeconfig
    first = env.setup()
    assert env.run() == 0
    client.CustomObjectsApi(env.admin_api).delete_namespaced_custom_object(
        "cellar.dev", "v1alpha1", env.namespace, "databasebackups", "orders"
    )
    env.setup()  # the same name, re-created with a new uid (a rebuilt cluster, a GitOps tool)
    assert env.run() == 3, "refused: PrefixInUse"
    assert env.conditions("DatabaseBackup", "orders")["Ready"]["reason"] == "PrefixInUse"

    ran = cellar(capsys, kubeconfig, "adopt", "--all", "-n", env.namespace)
    assert ran.code == 0, ran.err
    old_uid = first["metadata"]["uid"]
    assert f"orders: take over: s3://{env.bucket}/test/ (predecessor uid {old_uid}" in ran.out
    assert "run again with --yes" in ran.out
    assert TAKE_OVER_ANNOTATION not in annotations(env, "orders"), "nothing is written without --yes"

    ran = cellar(capsys, kubeconfig, "adopt", "orders", "--yes", "-n", env.namespace)
    assert ran.code == 0, ran.err
    assert annotations(env, "orders")[TAKE_OVER_ANNOTATION] == old_uid
    assert env.run() == 0
    capsys.readouterr()
    assert env.run("list", "-o", "json") == 0
    assert len(json.loads(capsys.readouterr().out)["backups"]) == 2, "the predecessor's backup is its own now"

    ran = cellar(capsys, kubeconfig, "adopt", "orders", "-n", env.namespace)
    assert ran.code == 0, ran.err
    assert "orders: own:" in ran.out
    assert "nothing to take over" in ran.out


def test_adopt_needs_a_name_or_all(backup_env: BackupEnv, capsys: pytest.CaptureFixture[str]) -> None:
    ran = cellar(capsys, backup_env.stack.kubeconfig, "adopt", "-n", backup_env.namespace)
    assert ran.code == 2
    assert ran.err.startswith("UsageError: adopt: name one DatabaseBackup, or --all")


def test_adopt_hands_a_recreated_archive_its_predecessors_folder(
    archive_env: ArchiveEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    env, kubeconfig = archive_env, archive_env.stack.kubeconfig
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL);"
            "INSERT INTO orders SELECT g, now() - interval '400 days' + g * interval '1 hour' "
            "FROM generate_series(1, 50) g"
        )
    first = setup_archive(env)
    assert env.run() == 0
    client.CustomObjectsApi(env.admin_api).delete_namespaced_custom_object(
        "cellar.dev", "v1alpha1", env.namespace, "tablearchives", "orders"
    )
    setup_archive(env)  # re-created with a new uid
    assert env.run() == 3, "refused: PrefixInUse"

    ran = cellar(capsys, kubeconfig, "adopt", "--all", "--yes", "-n", env.namespace)
    assert ran.code == 0, ran.err
    old_uid = first["metadata"]["uid"]
    assert f"orders: take over: s3://{env.bucket}/test/public.orders/ (the archive of public.orders)" in ran.out
    assert f"tablearchive.cellar.dev/orders annotated {TAKE_OVER_ANNOTATION}={old_uid}" in ran.out
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("INSERT INTO orders SELECT g, now() - interval '300 days' FROM generate_series(51, 60) g")
    assert env.run() == 0
    assert ids_in_table(env.database) == set()
