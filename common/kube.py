"""Kubernetes access for cellar's jobs.

`KubeTransport` is the one thin seam over the official client: it makes single API calls and turns
the client's exceptions into `KubeApiError`. Everything above it (`Kube`) holds the policy: retries
with backoff and jitter on 429/5xx/connection errors and never on 400/403/404/422, optimistic
concurrency for status writes, human messages for 403 and 404, best-effort Events. Unit tests fake
`KubeTransport` and nothing else.
"""

from __future__ import annotations

import base64
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

import tenacity

from common.errors import Forbidden, InvalidSpec, NotFound, PermanentError, RetryableError, UsageError
from common.reasons import Reason
from common.redact import redact, redact_nested, register_secret
from common.schema import GROUP, VERSION

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
EVENT_NOTE_LIMIT = 1024  # bytes: the API server refuses a longer Event note with 422


@dataclass(frozen=True)
class ResourceKind:
    kind: str
    plural: str
    group: str = GROUP
    version: str = VERSION

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> str:
        """The name RBAC and error messages use, for example `databasebackups.cellar.dev`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


DATABASE_BACKUP = ResourceKind("DatabaseBackup", "databasebackups")
DATABASE_RESTORE = ResourceKind("DatabaseRestore", "databaserestores")
TABLE_ARCHIVE = ResourceKind("TableArchive", "tablearchives")
SECRET = ResourceKind("Secret", "secrets", group="", version="v1")
CONFIG_MAP = ResourceKind("ConfigMap", "configmaps", group="", version="v1")
EVENT = ResourceKind("Event", "events", group="events.k8s.io", version="v1")


@dataclass(frozen=True)
class ResourceRef:
    kind: ResourceKind
    namespace: str
    name: str

    def __str__(self) -> str:
        return f'{self.kind.kind} "{self.name}" in namespace "{self.namespace}"'


class KubeApiError(Exception):
    """One failed API call: `status` is the HTTP status, 0 when the server was not reached."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after  # seconds the server asked to wait (Retry-After), if it did


def _retry_after(headers: Any) -> float | None:
    """A Retry-After header in seconds (the API server sends seconds, never a date)."""
    try:
        value = (headers or {}).get("Retry-After")
        return min(float(value), 60.0) if value is not None else None
    except (TypeError, ValueError):
        return None


class KubeTransport(Protocol):
    """The seam: single calls, no retries, no policy."""

    def get_custom_object(self, kind: ResourceKind, namespace: str, name: str) -> dict[str, Any]: ...

    def merge_patch_status(
        self, kind: ResourceKind, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]: ...

    def get_secret_data(self, namespace: str, name: str) -> dict[str, str]: ...

    def get_config_map_data(self, namespace: str, name: str) -> dict[str, str]: ...

    def create_event(self, namespace: str, body: Mapping[str, Any]) -> None: ...


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


# Status codes worth another try: throttling, server-side trouble, and "not reached at all" (0).
RETRYABLE_STATUSES = frozenset({0, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    initial_wait: float = 0.5
    max_wait: float = 8.0


class Kube:
    """The policy over `KubeTransport`: retries, concurrency-safe status writes, clear errors."""

    def __init__(
        self,
        transport: KubeTransport,
        *,
        retry: RetryPolicy | None = None,
        controller: str = "cellar.dev/job",
        instance: str | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.transport = transport
        self.retry = retry or RetryPolicy()
        self.controller = controller
        # The Pod name (downward API HOSTNAME) identifies which run posted an Event.
        self.instance = (instance or os.environ.get("POD_NAME") or socket.gethostname())[:128]
        self._sleep = sleep

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """Jittered exponential backoff, or longer when the server said how long (429 with Retry-After)."""
        backoff = tenacity.wait_exponential_jitter(multiplier=self.retry.initial_wait, max=self.retry.max_wait)(state)
        error = state.outcome.exception() if state.outcome else None
        asked = error.retry_after if isinstance(error, KubeApiError) else None
        return max(backoff, asked or 0.0)

    def _retrying(self, fn: Callable[[], Any], what: str) -> Any:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, KubeApiError) and e.status in RETRYABLE_STATUSES),
            stop=tenacity.stop_after_attempt(self.retry.attempts),
            wait=self._wait,
            before_sleep=lambda state: log.warning(
                "retrying Kubernetes call",
                extra={
                    "call": what,
                    "attempt": state.attempt_number,
                    "of": self.retry.attempts,
                    "wait_seconds": round(state.upcoming_sleep, 2),
                    "error": str(state.outcome.exception()) if state.outcome else "",
                },
            ),
            reraise=True,
            sleep=self._sleep or tenacity.nap.sleep,
        )
        return retrying(fn)

    def _translate(self, exc: KubeApiError, verb: str, ref: ResourceRef, *, subresource: str = "") -> Exception:
        target = f"{ref.kind.resource}{'/' + subresource if subresource else ''}"
        if exc.status == 403:
            grant = f"Grant the job's ServiceAccount '{verb}' on '{target}' in its Role (the Helm chart renders it)"
            if ref.kind.resource in ("secrets", "configmaps"):
                grant = (
                    "The Helm chart's Roles name the Secrets and ConfigMaps of the specs in its values file: name "
                    "it in the spec of a resource under backups:, archives: or restores:"
                    + (", or under extraSecrets" if ref.kind.resource == "secrets" else "")
                )
            return Forbidden(
                f'permission denied: cannot {verb} {target} "{ref.name}" in namespace "{ref.namespace}". '
                f"{grant}. Server said: {exc.message}"
            )
        if exc.status == 404:
            return NotFound(f'{ref.kind.kind} "{ref.name}" was not found in namespace "{ref.namespace}"')
        if exc.status in (400, 422):
            return PermanentError(
                f'the API server rejected {verb} {target} "{ref.name}": {exc.message}', reason=Reason.API_REJECTED
            )
        if exc.status in RETRYABLE_STATUSES or exc.status == 409:
            return RetryableError(
                f'{verb} {target} "{ref.name}" in namespace "{ref.namespace}" still failing after '
                f"{self.retry.attempts} attempts: {exc.message}",
                reason=Reason.KUBERNETES_UNAVAILABLE,
            )
        return PermanentError(f'{verb} {target} "{ref.name}" failed: {exc.message}', reason=Reason.API_REJECTED)

    def get(self, ref: ResourceRef) -> dict[str, Any]:
        """Read a custom resource."""
        try:
            return cast(
                dict[str, Any],
                self._retrying(
                    lambda: self.transport.get_custom_object(ref.kind, ref.namespace, ref.name), f"get {ref}"
                ),
            )
        except KubeApiError as exc:
            raise self._translate(exc, "get", ref) from exc

    def read_secret_key(self, namespace: str, name: str, key: str, *, field: str, sensitive: bool = True) -> str:
        """One value of a Secret, registered for redaction when `sensitive` (a password, not a host name).

        `field` is the spec path that named the Secret, so a missing key says what to fix.
        """
        value = _key_of(self.read_secret(namespace, name, field=field), SECRET, name, key, field)
        if sensitive:
            register_secret(value)
        return value

    def read_secret(self, namespace: str, name: str, *, field: str) -> dict[str, str]:
        """All values of a Secret. The caller registers the sensitive ones with `register_secret`."""
        return self._read_data(
            ResourceRef(SECRET, namespace, name), lambda: self.transport.get_secret_data(namespace, name), field
        )

    def read_config_map_key(self, namespace: str, name: str, key: str, *, field: str) -> str:
        """One value of a ConfigMap (never a secret); `field` is the spec path that named it."""
        ref = ResourceRef(CONFIG_MAP, namespace, name)
        data = self._read_data(ref, lambda: self.transport.get_config_map_data(namespace, name), field)
        return _key_of(data, CONFIG_MAP, name, key, field)

    def _read_data(self, ref: ResourceRef, fetch: Callable[[], dict[str, str]], field: str) -> dict[str, str]:
        """The data of a Secret or ConfigMap the spec names at `field`: missing is the spec's fault."""
        try:
            data = self._retrying(fetch, f"get {ref.kind.kind.lower()} {ref.name}")
        except KubeApiError as exc:
            if exc.status == 404:
                raise InvalidSpec(
                    f'{field}: {ref.kind.kind} "{ref.name}" was not found in namespace "{ref.namespace}"'
                ) from exc
            raise self._translate(exc, "get", ref) from exc
        return cast(dict[str, str], data)

    def update_status(
        self,
        ref: ResourceRef,
        mutate: Callable[[dict[str, Any]], Mapping[str, Any] | None],
        *,
        max_conflicts: int = 20,
    ) -> dict[str, Any]:
        """Apply `mutate` to the freshly read resource and write the status it returns.

        `mutate(resource)` returns the status fields to merge (None: nothing to write). The write is
        a merge patch carrying the resourceVersion that was read, so a concurrent writer makes it
        fail with 409; then the resource is read again and `mutate` recomputed, and no update is lost.
        Lists such as `conditions` must be returned whole (a merge patch replaces lists): compute
        them from the resource passed in, so conditions other writers set survive.
        """
        for attempt in range(max_conflicts):
            resource = self.get(ref)
            status_patch = mutate(resource)
            if status_patch is None:
                return resource
            body: dict[str, Any] = {
                "metadata": {"resourceVersion": resource["metadata"]["resourceVersion"]},
                "status": redact_nested(dict(status_patch)),
            }
            try:
                return self._patch_status(ref, body)
            except KubeApiError as exc:
                if exc.status == 409:
                    log.debug("status write conflicted; re-reading", extra={"resource": str(ref)})
                    # A jittered pause, growing to 0.2 s: writers that conflicted together do not all
                    # re-read and write again in step (client-go's RetryOnConflict waits too).
                    (self._sleep or time.sleep)(random.uniform(0, min(0.2, 0.005 * 2**attempt)))  # noqa: S311
                    continue
                raise self._translate(exc, "patch", ref, subresource="status") from exc
        raise RetryableError(
            f"status of {ref} kept changing under us: {max_conflicts} conflicting writes in a row",
            reason=Reason.STATUS_CONFLICT,
        )

    def _patch_status(self, ref: ResourceRef, body: dict[str, Any]) -> dict[str, Any]:
        return cast(
            dict[str, Any],
            self._retrying(
                lambda: self.transport.merge_patch_status(ref.kind, ref.namespace, ref.name, body),
                f"patch status of {ref}",
            ),
        )

    def post_event(
        self,
        regarding: Mapping[str, Any],
        *,
        reason: str,
        action: str,
        note: str,
        warning: bool = False,
    ) -> None:
        """Post an events.k8s.io/v1 Event about `regarding`; a failure is logged, never raised."""
        metadata = regarding.get("metadata", {})
        namespace = metadata.get("namespace", "")
        body = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"generateName": f"{metadata.get('name', 'cellar')}-", "namespace": namespace},
            "eventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "action": action,
            "reason": reason,
            "note": cut_to_bytes(redact(note), EVENT_NOTE_LIMIT),
            "type": "Warning" if warning else "Normal",
            "reportingController": self.controller,
            "reportingInstance": self.instance,
            "regarding": {
                "apiVersion": regarding.get("apiVersion"),
                "kind": regarding.get("kind"),
                "name": metadata.get("name"),
                "namespace": namespace,
                "uid": metadata.get("uid"),
                "resourceVersion": metadata.get("resourceVersion"),
            },
        }
        try:
            self._retrying(lambda: self.transport.create_event(namespace, body), "create event")
        except Exception as exc:  # noqa: BLE001 (an Event is best-effort by contract)
            log.warning("could not post Event", extra={"event_reason": reason, "error": redact(str(exc))})


def cut_to_bytes(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes of UTF-8, at a character boundary (a limit the API server counts in
    bytes: a character cut in two would be invalid UTF-8, so the partial one is dropped)."""
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


def _key_of(data: Mapping[str, str], kind: ResourceKind, name: str, key: str, field: str) -> str:
    if key not in data:
        present = ", ".join(sorted(data)) or "none"
        raise InvalidSpec(f'{field}: {kind.kind} "{name}" has no key "{key}" (keys present: {present})')
    return str(data[key])
