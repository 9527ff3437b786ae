"""`KubeTransport` over the official kubernetes client, and where a job finds its credentials and namespace."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from common.errors import UsageError
from common.kube import KubeApiError, ResourceKind

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def _retry_after(headers: Any) -> float | None:
    """A Retry-After header in seconds (the API server sends seconds, never a date)."""
    try:
        value = (headers or {}).get("Retry-After")
        return min(float(value), 60.0) if value is not None else None
    except (TypeError, ValueError):
        return None


class ClientTransport:
    """`KubeTransport` over the official kubernetes client."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self._api_client = api_client
        self._custom = client.CustomObjectsApi(api_client)
        self._events = client.EventsV1Api(api_client)
        # No CoreV1Api: importing it imports the models of the whole core group (about 250 modules, half a
        # second of every job's start) for the one call below, which reads a Secret as plain JSON.

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, _request_timeout=(10, 60), **kwargs)
        except ApiException as exc:
            raise KubeApiError(int(exc.status or 0), _api_message(exc), _retry_after(exc.headers)) from exc
        except (HTTPError, OSError) as exc:
            raise KubeApiError(0, f"cannot reach the Kubernetes API server: {exc}") from exc

    def get_custom_object(self, kind: ResourceKind, namespace: str, name: str) -> dict[str, Any]:
        result = self._call(
            self._custom.get_namespaced_custom_object, kind.group, kind.version, namespace, kind.plural, name
        )
        return cast(dict[str, Any], result)

    def merge_patch_status(
        self, kind: ResourceKind, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        result = self._call(
            self._custom.patch_namespaced_custom_object_status,
            kind.group,
            kind.version,
            namespace,
            kind.plural,
            name,
            dict(body),
            _content_type="application/merge-patch+json",
        )
        return cast(dict[str, Any], result)

    def get_secret_data(self, namespace: str, name: str) -> dict[str, str]:
        secret = self._call(self._get_json, "/api/v1/namespaces/{namespace}/secrets/{name}", namespace, name)
        return {key: base64.b64decode(value).decode("utf-8") for key, value in (secret.get("data") or {}).items()}

    def get_config_map_data(self, namespace: str, name: str) -> dict[str, str]:
        config_map = self._call(self._get_json, "/api/v1/namespaces/{namespace}/configmaps/{name}", namespace, name)
        return dict(config_map.get("data") or {})

    def _get_json(self, path: str, namespace: str, name: str, _request_timeout: Any) -> dict[str, Any]:
        """GET a namespaced object as a dict, with the client's authentication (raises ApiException)."""
        request = self._api_client.param_serialize(
            method="GET",
            resource_path=path,
            path_params={"namespace": namespace, "name": name},
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self._api_client.call_api(*request, _request_timeout=_request_timeout)
        response.read()
        return cast(dict[str, Any], self._api_client.response_deserialize(response, {"200": "object"}).data)

    def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        self._call(self._events.create_namespaced_event, namespace, dict(body))


def _api_message(exc: Any) -> str:
    import json

    try:
        payload = json.loads(exc.body)
        return str(payload.get("message") or exc.reason)
    except (TypeError, ValueError):
        return str(exc.reason or exc)


def connect(kubeconfig: str | None = None) -> ClientTransport:
    """Load Kubernetes credentials and return a transport.

    Order: an explicit `--kubeconfig` (a person asked for it), then the in-cluster service account,
    then `$KUBECONFIG`, then `~/.kube/config`. `config.load_config()` is not used: it prefers the
    kubeconfig over the service account and prints to stdout.
    """
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    if kubeconfig:
        _load_kubeconfig(config, configuration, kubeconfig, "--kubeconfig")
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except ConfigException:
            candidate = os.environ.get("KUBECONFIG")
            source = "$KUBECONFIG"
            if not candidate:
                candidate, source = str(Path.home() / ".kube" / "config"), "~/.kube/config"
                if not Path(candidate).exists():
                    raise UsageError(
                        "no Kubernetes credentials: not running in a cluster (KUBERNETES_SERVICE_HOST is "
                        "unset), no --kubeconfig given, $KUBECONFIG unset and ~/.kube/config missing"
                    ) from None
            _load_kubeconfig(config, configuration, candidate.split(os.pathsep)[0], source)
    return ClientTransport(client.ApiClient(configuration))


def _load_kubeconfig(config: Any, configuration: Any, path: str, source: str) -> None:
    from kubernetes.config.config_exception import ConfigException

    if not Path(path).is_file():
        raise UsageError(f"kubeconfig {path} (from {source}) does not exist or is not a file")
    try:
        config.load_kube_config(config_file=path, client_configuration=configuration)
    except (ConfigException, OSError, ValueError) as exc:
        raise UsageError(f"cannot load kubeconfig {path} (from {source}): {exc}") from exc


def in_cluster_namespace() -> str | None:
    """The Pod's namespace from the service-account mount, when running in a cluster."""
    try:
        return (SERVICE_ACCOUNT_DIR / "namespace").read_text(encoding="utf-8").strip() or None
    except OSError:
        return None
