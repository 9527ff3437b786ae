"""The user's cluster, as kubectl reaches it: their kubeconfig and context, one line for each failed call.

Errors are cellar's own (common.errors), with the reasons and exit codes of the jobs' table: a refused call
is `Forbidden` (3) naming the verb and resource a Role must grant, a missing object `NotFound` (3), a server
that cannot be reached `KubernetesUnavailable` (1).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from common.errors import Forbidden, NotFound, PermanentError, RetryableError, UsageError
from common.kube import ResourceKind
from common.reasons import Reason

CRONJOB = ResourceKind("CronJob", "cronjobs", group="batch", version="v1")
JOB = ResourceKind("Job", "jobs", group="batch", version="v1")
POD = ResourceKind("Pod", "pods", group="", version="v1")
# Labels of what the chart makes (cellar.labels and the CronJobs' own in _helpers.tpl and scheduled.yaml).
PART_OF = "app.kubernetes.io/part-of=cellar"
RESOURCE_LABEL = "cellar.dev/resource"
NAME_LABEL = "app.kubernetes.io/name"
FIELD_MANAGER = "kubectl-cellar"


@dataclass(frozen=True)
class Target:
    """Where a command works: one namespace, or every namespace (`-A`)."""

    namespace: str
    all_namespaces: bool = False


class Cluster:
    """The API groups the commands use, over one ApiClient of the user's kubeconfig and context."""

    def __init__(self, api_client: Any, context: str) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.context = context
        self.custom = client.CustomObjectsApi(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)

    def call(self, verb: str, kind: ResourceKind, where: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One API call; `where` names the object or namespace for the message of a failure."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, _request_timeout=(10, 60), **kwargs)
        except ApiException as exc:
            raise self._translate(int(exc.status or 0), _message(exc), verb, kind, where) from exc
        except (HTTPError, OSError) as exc:
            raise RetryableError(
                f"cannot reach the Kubernetes API server of context {self.context!r}: {exc}; check the cluster is up "
                "and `kubectl cluster-info` works",
                reason=Reason.KUBERNETES_UNAVAILABLE,
            ) from exc

    def _translate(self, status: int, message: str, verb: str, kind: ResourceKind, where: str) -> Exception:
        if status == 401:
            return Forbidden(
                f"the API server did not accept the credentials of context {self.context!r}: log in again "
                f"(kubectl get ns shows the same). Server said: {message}"
            )
        if status == 403:
            return Forbidden(
                f"permission denied: context {self.context!r} cannot {verb} {kind.resource} {where}; ask for a Role "
                f"granting {verb} on {kind.resource} there, or use --context of one that has it"
            )
        if status == 404:
            return NotFound(f"{kind.kind} {where} was not found")
        if status in (429, 500, 502, 503, 504):
            return RetryableError(
                f"{verb} {kind.resource} {where}: the API server answered {status}: {message}; try again",
                reason=Reason.KUBERNETES_UNAVAILABLE,
            )
        return PermanentError(f"{verb} {kind.resource} {where}: {message}", reason=Reason.API_REJECTED)


def _message(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason or exc)


def connect(kubeconfig: str | None, context: str | None) -> tuple[Cluster, str]:
    """The cluster and the context's namespace ('default' when it names none), as kubectl would pick them:
    --kubeconfig, else $KUBECONFIG (its first file), else ~/.kube/config, else the Pod's ServiceAccount."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    path = kubeconfig or (os.environ.get("KUBECONFIG") or "").split(os.pathsep)[0] or str(Path.home() / ".kube/config")
    configuration = client.Configuration()
    if not Path(path).is_file():
        if kubeconfig or os.environ.get("KUBECONFIG"):
            raise UsageError(f"kubeconfig {path} does not exist or is not a file; pass --kubeconfig FILE")
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except ConfigException:
            raise UsageError(
                "no kubeconfig: pass --kubeconfig FILE, set $KUBECONFIG, or write ~/.kube/config"
            ) from None
        from common.kube_client import in_cluster_namespace

        return Cluster(client.ApiClient(configuration), "in-cluster"), in_cluster_namespace() or "default"
    try:
        # Read here, not with list_kube_config_contexts: that refuses a file without current-context even when
        # --context names one, where kubectl does not.
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        contexts = [c for c in document.get("contexts") or [] if isinstance(c, dict)]
        wanted = context or document.get("current-context")
        chosen = next((c for c in contexts if c.get("name") == wanted), None)
        if chosen is None:
            names = ", ".join(sorted(str(c.get("name")) for c in contexts)) or "none"
            what = f"context {wanted!r} is not in {path}" if wanted else f"{path} has no current-context"
            raise UsageError(f"{what} (its contexts: {names}); pass --context NAME")
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=path, context=chosen["name"], client_configuration=configuration
        )
    except (ConfigException, OSError, ValueError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot load kubeconfig {path}: {exc}") from exc
    namespace = (chosen.get("context") or {}).get("namespace") or "default"
    return Cluster(client.ApiClient(configuration), chosen["name"]), namespace
