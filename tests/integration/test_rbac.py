"""Each job's ServiceAccount, bound to the Role the chart renders, can do its work and nothing more."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.errors import Forbidden, InvalidSpec
from common.kube import DATABASE_BACKUP, DATABASE_RESTORE, TABLE_ARCHIVE, Kube, ResourceRef
from common.kube_client import connect
from tests.harness.chart import rbac_of, render
from tests.harness.cluster import service_account_kubeconfig
from tests.integration.backup_helpers import run_backup_job
from tests.integration.environments import BackupEnv
from tests.integration.test_resources import MINIMAL_BACKUP_SPEC

MINIMAL_ARCHIVE_SPEC = {
    "database": {"secretRef": {"name": "d"}},
    "storage": MINIMAL_BACKUP_SPEC["storage"],
    "table": {"name": "orders"},
    "timestampColumn": "created_at",
    "olderThan": "30d",
}


@pytest.fixture
def backup_kube(job_kubeconfig: Callable[[str], Path]) -> Kube:
    return Kube(connect(str(job_kubeconfig("backup"))))


def test_backup_account_can_do_its_job(
    backup_kube: Kube,
    namespace: str,
    create_resource: Any,
    create_secret: Callable[[str, dict[str, str]], None],
    admin_api: Any,
) -> None:
    create_resource("DatabaseBackup", {"metadata": {"name": "b"}, "spec": MINIMAL_BACKUP_SPEC})
    create_secret("cellar-database", {"password": "s3cr3t-value"})
    ref = ResourceRef(DATABASE_BACKUP, namespace, "b")
    resource = backup_kube.get(ref)
    updated = backup_kube.update_status(ref, lambda r: {"backupsKept": 3})
    assert updated["status"]["backupsKept"] == 3
    assert (
        backup_kube.read_secret_key(namespace, "cellar-database", "password", field="spec.database") == "s3cr3t-value"
    )
    backup_kube.post_event(resource, reason="Started", action="Backup", note="a test event")
    from kubernetes import client

    events = client.EventsV1Api(admin_api).list_namespaced_event(namespace).items
    assert [(e.reason, e.reporting_controller, e.regarding.name) for e in events] == [
        ("Started", "cellar.dev/job", "b")
    ]


def test_backup_account_is_denied_everything_else(
    backup_kube: Kube, namespace: str, create_resource: Any, create_secret: Callable[[str, dict[str, str]], None]
) -> None:
    create_secret("someone-elses", {"token": "not-for-cellar"})
    create_resource("TableArchive", {"metadata": {"name": "a"}, "spec": MINIMAL_ARCHIVE_SPEC})

    with pytest.raises(Forbidden) as raised:
        backup_kube.get(ResourceRef(TABLE_ARCHIVE, namespace, "a"))
    message = str(raised.value)
    print(f"403 as the job reports it: {message}")
    assert message.startswith(f'permission denied: cannot get tablearchives.cellar.dev "a" in namespace "{namespace}"')
    assert f"system:serviceaccount:{namespace}:cellar-backup" in message

    with pytest.raises(Forbidden, match='cannot get secrets "someone-elses"'):
        backup_kube.read_secret(namespace, "someone-elses", field="spec.database.secretRef")

    # Listing Secrets is not in the Role at all (get by name only): the server answers 403.
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(backup_kube.transport._api_client)  # type: ignore[attr-defined]
    with pytest.raises(ApiException) as listing:
        core.list_namespaced_secret(namespace)
    assert listing.value.status == 403


def test_missing_secret_is_an_invalid_spec_naming_the_field(backup_kube: Kube, namespace: str) -> None:
    with pytest.raises(InvalidSpec) as raised:
        backup_kube.read_secret(namespace, "cellar-database", field="spec.database.secretRef")
    assert str(raised.value) == (
        f'spec.database.secretRef: Secret "cellar-database" was not found in namespace "{namespace}"'
    )


def test_archive_account_reaches_its_own_kind_only(
    job_kubeconfig: Callable[[str], Path], namespace: str, create_resource: Any
) -> None:
    kube = Kube(connect(str(job_kubeconfig("archive"))))
    create_resource("DatabaseBackup", {"metadata": {"name": "b"}, "spec": MINIMAL_BACKUP_SPEC})
    create_resource("TableArchive", {"metadata": {"name": "a"}, "spec": MINIMAL_ARCHIVE_SPEC})
    assert kube.get(ResourceRef(TABLE_ARCHIVE, namespace, "a"))["metadata"]["name"] == "a"
    assert kube.update_status(ResourceRef(TABLE_ARCHIVE, namespace, "a"), lambda r: {"cutoff": None})
    with pytest.raises(Forbidden, match=r'cannot get databasebackups\.cellar\.dev "b"'):
        kube.get(ResourceRef(DATABASE_BACKUP, namespace, "b"))
    with pytest.raises(Forbidden, match='cannot get secrets "cellar-restore-target"'):
        kube.read_secret(namespace, "cellar-restore-target", field="spec.database.secretRef")


def test_a_backup_without_restore_tests_runs_without_its_key_and_only_the_restore_reads_the_target(
    backup_env: BackupEnv, tmp_path: Path
) -> None:
    """The chart's Roles, computed from a values file: the nightly backup (encrypted, not restore-tested) may not
    read the age identity nor the restore target, and runs without them; the restore's ServiceAccount reads both."""
    env = backup_env
    key_file = tmp_path / "identity.txt"
    subprocess.run(["age-keygen", "-o", str(key_file)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(key_file)], check=True, capture_output=True, text=True).stdout
    identity = {"name": "cellar-backup-identity", "key": "identity.txt"}
    encryption = {"recipients": [public.strip()], "identitySecretRef": identity}
    values = {
        "backups": {
            "orders": {
                "spec": {
                    "database": {"secretRef": {"name": "cellar-database"}, "sslMode": "disable"},
                    "storage": env.storage_spec,
                    "encryption": encryption,
                }
            }
        },
        "restores": {
            "back": {
                "spec": {
                    "backup": {"name": "orders"},
                    "target": {"secretRef": {"name": "cellar-restore-target"}},
                    "decryption": {"identitySecretRef": identity},
                }
            }
        },
    }
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    documents = render(values_file, namespace=env.namespace)

    def kubeconfig(job: str) -> Path:
        rbac = rbac_of(documents, job)
        return service_account_kubeconfig(env.admin_api, env.stack, env.namespace, job, tmp_path / job, rbac)

    backup_config, restore_config = kubeconfig("backup"), kubeconfig("restore")
    env.setup(encryption=encryption)
    env.create_secret("cellar-backup-identity", {"identity.txt": key_file.read_text()})
    env.create_restore(
        "back", env.database, f"{env.database['dbname']}_back", decryption={"identitySecretRef": identity}
    )

    backup_kube = Kube(connect(str(backup_config)))
    for secret in ("cellar-backup-identity", "cellar-restore-target"):
        with pytest.raises(Forbidden, match=f'cannot get secrets "{secret}"'):
            backup_kube.read_secret(env.namespace, secret, field="spec")
    with pytest.raises(Forbidden, match=r'cannot get databaserestores\.cellar\.dev "back"'):
        backup_kube.get(ResourceRef(DATABASE_RESTORE, env.namespace, "back"))
    assert run_backup_job(backup_config, env.namespace) == 0

    restore_kube = Kube(connect(str(restore_config)))
    with pytest.raises(Forbidden, match='cannot get secrets "cellar-database"'):
        restore_kube.read_secret(env.namespace, "cellar-database", field="spec")
    with pytest.raises(Forbidden, match=r'cannot patch databasebackups\.cellar\.dev/status "orders"'):
        restore_kube.update_status(ResourceRef(DATABASE_BACKUP, env.namespace, "orders"), lambda r: {"backupsKept": 0})
    assert run_backup_job(restore_config, env.namespace, "restore", name="back") == 0
