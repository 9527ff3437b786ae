"""`kubectl cellar list NAME --direct`: the listing of `cellar-backup list` from this machine, with the user's own
Kubernetes permissions, against real backups in MinIO. (The default, a Job in the cluster, runs on the real node:
test_e2e.py.)"""

from __future__ import annotations

import json

import pytest

from tests.integration.cli_helpers import cellar
from tests.integration.environments import BackupEnv


def test_list_direct_shows_the_backups_in_storage(backup_env: BackupEnv, capsys: pytest.CaptureFixture[str]) -> None:
    backup_env.setup()
    assert backup_env.run() == 0
    status = backup_env.status("DatabaseBackup", "orders")
    kubeconfig = backup_env.stack.kubeconfig  # the user's (here, the admin's) own credentials

    ran = cellar(capsys, kubeconfig, "list", "orders", "--direct", "-o", "json", "-n", backup_env.namespace)
    assert ran.code == 0, ran.err
    (listed,) = json.loads(ran.out)["backups"]
    assert listed["key"] == status["lastSuccessfulBackup"]["key"]
    assert listed["databases"] == [backup_env.database["dbname"]]
    assert listed["encrypted_to"] == []

    ran = cellar(capsys, kubeconfig, "list", "orders", "--direct", "-n", backup_env.namespace)
    assert ran.code == 0, ran.err
    assert ran.out.splitlines()[0].split()[:3] == ["COMPLETED", "BACKUP", "DATABASES"]
    assert listed["backup_id"] in ran.out


def test_list_of_no_backup_says_where_to_look(backup_env: BackupEnv, capsys: pytest.CaptureFixture[str]) -> None:
    ran = cellar(capsys, backup_env.stack.kubeconfig, "list", "nope", "--direct", "-n", backup_env.namespace)
    assert ran.code == 3
    assert ran.err.startswith(f'NotFound: DatabaseBackup "nope" is not in namespace "{backup_env.namespace}"')
