"""The CRDs on a real kube-apiserver: schema validation at apply time, samples, lookup."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from common.errors import NotFound
from common.kube import DATABASE_BACKUP, Kube, ResourceRef
from common.kube_client import connect
from tests.conftest import apply_manifests
from tests.harness.chart import FLEET_EXAMPLE, render
from tests.harness.stack import LocalStack

MINIMAL_BACKUP_SPEC: dict[str, Any] = {
    "database": {"secretRef": {"name": "cellar-database"}},
    "storage": {
        "bucket": "some-bucket",
        "credentials": {"accessKeyId": {"name": "s", "key": "id"}, "secretAccessKey": {"name": "s", "key": "key"}},
    },
}


def test_server_is_a_real_kube_apiserver_of_at_least_1_34(stack: LocalStack, admin_api: Any) -> None:
    version = client.VersionApi(admin_api).get_code()
    print(f"kube-apiserver reports {version.git_version}")
    assert version.major == "1"
    assert int(version.minor.rstrip("+")) >= 34


def test_every_resource_of_the_fleet_example_applies(admin_api: Any, namespace: str) -> None:
    documents = render(FLEET_EXAMPLE, namespace=namespace)
    resources = [d for d in documents if d["apiVersion"] == "cellar.dev/v1alpha1"]
    assert len(resources) == 8
    assert apply_manifests(admin_api, resources, namespace)
    stored = client.CustomObjectsApi(admin_api).get_namespaced_custom_object(
        "cellar.dev", "v1alpha1", namespace, "databasebackups", "orders"
    )
    # Defaults from the schema were applied by the server.
    assert stored["spec"]["compression"] == {"algorithm": "zstd", "workers": 0}
    assert stored["spec"]["database"]["connectTimeoutSeconds"] == 10
    assert stored["spec"]["storage"]["requestChecksum"] == "WhenSupported"
    assert stored["spec"]["storage"]["prefix"] == f"{namespace}/orders"


def _rejection(create: Callable[[str, dict[str, Any]], Any], kind: str, spec: dict[str, Any]) -> str:
    with pytest.raises(ApiException) as raised:
        create(kind, {"metadata": {"name": "bad"}, "spec": spec})
    assert raised.value.status == 422, raised.value.body
    return str(raised.value.body)


def test_missing_required_field_is_rejected_by_the_server(create_resource: Any) -> None:
    spec = {k: v for k, v in MINIMAL_BACKUP_SPEC.items() if k != "database"}
    body = _rejection(create_resource, "DatabaseBackup", spec)
    assert "spec.database: Required value" in body


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"storage": {"bucket": "Bad_Bucket"}}, "spec.storage.bucket"),
        ({"compression": {"algorithm": "brotli"}}, "spec.compression.algorithm"),
        ({"compression": {"algorithm": "gzip", "level": 15}}, "gzip levels are 1 to 9"),
        (
            {"storage": {"serverSideEncryption": {"algorithm": "AES256", "kmsKeyId": "k"}}},
            "kmsKeyId is only allowed with algorithm aws:kms",
        ),
        ({"storage": {"credentials": {"inheritFromIAMRole": True}}}, None),
        (
            {"storage": {"credentials": {"accessKeyId": {"name": "s", "key": "id"}}}},
            "set either inheritFromIAMRole: true, or both accessKeyId and secretAccessKey",
        ),
        ({"staleAfter": "tomorrow"}, "spec.staleAfter"),
        ({"staleAfter": "0s"}, '"field":"spec.staleAfter"'),
        ({"staleAfter": "0s"}, "must be more than 0s"),
        ({"retention": {"incompleteAfter": "0h"}}, '"field":"spec.retention.incompleteAfter"'),
        ({"retention": {"maxAge": "0d"}}, "must be more than 0s"),
        ({"retention": {"incompleteAfter": "10m"}}, None),
        ({"database": {"secretRef": {"name": "db"}, "port": 70000}}, "spec.database.port"),
    ],
)
def test_schema_rules(create_resource: Any, change: dict[str, Any], expected: str | None) -> None:
    spec = yaml.safe_load(yaml.safe_dump(MINIMAL_BACKUP_SPEC))
    for key, value in change.items():
        if isinstance(value, dict) and key in spec and key != "database":
            if "credentials" in value:
                spec[key]["credentials"] = value["credentials"]
            else:
                spec[key].update(value)
        else:
            spec[key] = value
    if expected is None:  # a valid variant: accepted
        create_resource("DatabaseBackup", {"metadata": {"name": "ok"}, "spec": spec})
        return
    assert expected in _rejection(create_resource, "DatabaseBackup", spec)


def test_restore_and_archive_rules(create_resource: Any) -> None:
    body = _rejection(
        create_resource,
        "DatabaseRestore",
        {"backup": {"name": "orders"}, "target": {"secretRef": {"name": "t"}}, "createDatabase": True, "clean": True},
    )
    assert "clean has nothing to drop" in body
    body = _rejection(
        create_resource,
        "TableArchive",
        {
            "database": {"secretRef": {"name": "d"}},
            "storage": MINIMAL_BACKUP_SPEC["storage"],
            "table": {"name": "orders"},
            "timestampColumn": "created_at",
        },
    )
    assert "spec.olderThan: Required value" in body
    archive = {
        "database": {"secretRef": {"name": "d"}},
        "storage": MINIMAL_BACKUP_SPEC["storage"],
        "table": {"name": "orders"},
        "timestampColumn": "created_at",
        "olderThan": "0d",  # every row older than now
    }
    body = _rejection(create_resource, "TableArchive", {**archive, "maxRunTime": "0s"})
    assert "spec.maxRunTime: Invalid value" in body
    assert "must be more than 0s" in body
    zero = {**archive, "lockTimeout": "0s", "statementTimeout": "0s", "batch": {"pause": "0s"}}
    created = create_resource("TableArchive", {"metadata": {"name": "zeros"}, "spec": zero})
    assert created["spec"]["lockTimeout"] == created["spec"]["statementTimeout"] == "0s"  # kept, not defaulted


def test_lookup_found_and_not_found(stack: LocalStack, namespace: str, create_resource: Any) -> None:
    create_resource("DatabaseBackup", {"metadata": {"name": "found"}, "spec": MINIMAL_BACKUP_SPEC})
    kube = Kube(connect(str(stack.kubeconfig)))
    resource = kube.get(ResourceRef(DATABASE_BACKUP, namespace, "found"))
    assert resource["metadata"]["name"] == "found"
    with pytest.raises(NotFound) as raised:
        kube.get(ResourceRef(DATABASE_BACKUP, namespace, "missing"))
    assert str(raised.value) == f'DatabaseBackup "missing" was not found in namespace "{namespace}"'


def test_job_exits_3_with_a_clear_message_when_its_resource_is_missing(
    stack: LocalStack, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.integration import probe_job

    code = probe_job.main(["--kubeconfig", str(stack.kubeconfig), "--namespace", namespace, "--name", "nope"])
    assert code == 3
    out = capsys.readouterr().out
    assert f'DatabaseBackup \\"nope\\" was not found in namespace \\"{namespace}\\"' in out


def test_printer_columns_show_health(admin_api: Any) -> None:
    crd = client.ApiextensionsV1Api(admin_api).read_custom_resource_definition("databasebackups.cellar.dev")
    columns = [c.name for c in crd.spec.versions[0].additional_printer_columns]
    assert columns[:5] == ["Ready", "Reason", "Last Success", "Size", "Verified"]
