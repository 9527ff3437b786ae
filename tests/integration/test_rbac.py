"""The job's ServiceAccount, bound to the Role cronjobs/ ships, can do its work and nothing more."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.errors import Forbidden, InvalidSpec
from common.kube import DATABASE_BACKUP, TABLE_ARCHIVE, Kube, ResourceRef, connect
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
