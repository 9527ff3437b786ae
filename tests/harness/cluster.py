"""Putting cellar into a (test) cluster: CRDs, manifests, and a kubeconfig for a job's ServiceAccount.

Used by the pytest fixtures and by the demo, so both install cellar the same way.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from tests.harness.chart import CRD_DIR, job_rbac

REPO = Path(__file__).resolve().parents[2]


def admin_client(kubeconfig: Path) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration)


def install_crds(api_client: Any, timeout: float = 60) -> list[str]:
    """Create cellar's CRDs and wait until the server reports each Established."""
    from kubernetes import client

    api = client.ApiextensionsV1Api(api_client)
    names = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        api.create_custom_resource_definition(body)
        names.append(body["metadata"]["name"])
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            crd = api.read_custom_resource_definition(name)
            conditions = {c.type: c.status for c in (crd.status.conditions or [])}
            if conditions.get("Established") == "True":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"CRD {name} not Established after {timeout}s: {conditions}")
            time.sleep(0.2)
    return names


def apply_manifests(api_client: Any, documents: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    """Create every document in `namespace`, whatever its kind (discovery decides)."""
    from kubernetes.dynamic import DynamicClient

    dynamic = DynamicClient(api_client)
    for document in documents:
        document.setdefault("metadata", {})["namespace"] = namespace
        api = dynamic.resources.get(api_version=document["apiVersion"], kind=document["kind"])
        api.create(body=document, namespace=namespace)
    return documents


def service_account_kubeconfig(
    api_client: Any, stack: Any, namespace: str, job: str, path: Path, rbac: list[dict[str, Any]] | None = None
) -> Path:
    """Apply the chart's ServiceAccount, Role and RoleBinding of `job` (backup, archive or restore), mint a token
    for the ServiceAccount (TokenRequest API) and write a kubeconfig with it, so the job runs with exactly the
    permissions the chart gives it in a cluster. `rbac`: those documents as another values file renders them
    (default: the chart with tests/harness/chart-values.yaml)."""
    from kubernetes import client

    apply_manifests(api_client, rbac if rbac is not None else job_rbac(job), namespace)
    account = f"cellar-{job}"
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    token = (
        client.CoreV1Api(api_client).create_namespaced_service_account_token(account, namespace, request).status.token
    )
    path.write_text(
        stack.kubeconfig_for(
            user=f"system:serviceaccount:{namespace}:{account}", credentials={"token": token}, namespace=namespace
        )
    )
    return path
