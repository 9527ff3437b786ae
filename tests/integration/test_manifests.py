"""cronjobs/ rendered with kustomize and applied to a real kube-apiserver: a field the server rejects
fails here, not in a cluster."""

from __future__ import annotations

import subprocess
from typing import Any

import yaml
from kubernetes.dynamic import DynamicClient

from tests.harness.cluster import REPO
from tests.harness.stack import LocalStack


def render(stack: LocalStack, directory: str) -> list[dict[str, Any]]:
    output = subprocess.run(
        [str(stack.binaries["kubectl"]), "kustomize", str(REPO / directory)], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(output) if d]


def test_example_overlay_renders_and_every_manifest_is_accepted(
    stack: LocalStack, admin_api: Any, namespace: str
) -> None:
    documents = render(stack, "cronjobs/overlays/example")
    kinds = sorted(d["kind"] for d in documents)
    assert kinds == [
        "CronJob",
        "CronJob",
        "CustomResourceDefinition",
        "CustomResourceDefinition",
        "CustomResourceDefinition",
        "DatabaseBackup",
        "Role",
        "Role",
        "RoleBinding",
        "RoleBinding",
        "ServiceAccount",
        "ServiceAccount",
        "TableArchive",
    ]
    dynamic = DynamicClient(admin_api)
    created = {}
    for document in documents:
        api = dynamic.resources.get(api_version=document["apiVersion"], kind=document["kind"])
        if document["kind"] == "CustomResourceDefinition":
            # Cluster-scoped and installed by the session fixture from the same files: a dry-run replace
            # proves the rendered form is accepted as it is.
            current = api.get(name=document["metadata"]["name"])
            document["metadata"]["resourceVersion"] = current.metadata.resourceVersion
            api.replace(body=document, dry_run="All")
            continue
        assert document["metadata"]["namespace"] == "shop"
        document["metadata"]["namespace"] = namespace
        api.create(body=document, namespace=namespace, dry_run="All")
        created[(document["kind"], document["metadata"]["name"])] = api.create(body=document, namespace=namespace)

    backup = created[("CronJob", "cellar-backup")].to_dict()
    spec = backup["spec"]
    assert (spec["schedule"], spec["timeZone"], spec["concurrencyPolicy"]) == ("15 1 * * *", "Europe/Berlin", "Forbid")
    job = spec["jobTemplate"]["spec"]
    assert [r["action"] for r in job["podFailurePolicy"]["rules"]] == ["FailJob", "Ignore"]
    assert job["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2, 3]
    pod = job["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "ghcr.io/cellar-dev/cellar-backup:0.1.0"
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert "runAsUser" not in pod["securityContext"]  # OpenShift assigns one
    assert {e["name"] for e in container["env"]} == {"CELLAR_RESOURCE_NAME", "CELLAR_NAMESPACE", "POD_NAME"}
    assert all(len(name) <= 52 for kind, name in created if kind == "CronJob")


def test_the_sample_restore_and_its_job_are_accepted(admin_api: Any, namespace: str) -> None:
    dynamic = DynamicClient(admin_api)
    for name in ("databaserestore.yaml", "restore-job.yaml"):
        document = yaml.safe_load((REPO / "cronjobs" / "samples" / name).read_text())
        api = dynamic.resources.get(api_version=document["apiVersion"], kind=document["kind"])
        api.create(body=document, namespace=namespace, dry_run="All")
    job = yaml.safe_load((REPO / "cronjobs" / "samples" / "restore-job.yaml").read_text())
    mounts = job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "staging", "mountPath": "/staging"} in mounts
