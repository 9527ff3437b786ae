"""Which resource a run is for, and how to reach the API server: from the command line, the environment, or
(the namespace) the Pod's service-account mount."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from common.errors import UsageError
from common.kube_client import in_cluster_namespace
from common.schema import DNS_SUBDOMAIN

_NAME = re.compile(DNS_SUBDOMAIN)


@dataclass(frozen=True)
class Invocation:
    """Which resource a run is for and how to reach the API server."""

    name: str
    namespace: str
    kubeconfig: str | None
    dry_run: bool


def add_invocation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="name of the custom resource (env CELLAR_RESOURCE_NAME)")
    parser.add_argument("--namespace", help="its namespace (env CELLAR_NAMESPACE; in a cluster, the Pod's)")
    parser.add_argument("--kubeconfig", help="kubeconfig to use instead of the in-cluster service account")
    parser.add_argument("--dry-run", action="store_true", help="check everything, write nothing")


def resolve_invocation(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Invocation:
    """Resource name and namespace from flags, then env, then (namespace) the service-account mount."""
    env = os.environ if environ is None else environ
    name = args.name or env.get("CELLAR_RESOURCE_NAME")
    namespace = args.namespace or env.get("CELLAR_NAMESPACE") or env.get("POD_NAMESPACE") or in_cluster_namespace()
    if not name:
        raise UsageError("which resource? pass --name or set CELLAR_RESOURCE_NAME")
    if not namespace:
        raise UsageError(
            "which namespace? pass --namespace or set CELLAR_NAMESPACE (in a cluster it is read "
            "from the service account)"
        )
    for what, value in (("name", name), ("namespace", namespace)):
        if not _NAME.match(value) or len(value) > 253:
            raise UsageError(f"--{what} {value!r} is not a valid Kubernetes name")
    return Invocation(name=name, namespace=namespace, kubeconfig=args.kubeconfig, dry_run=bool(args.dry_run))
