"""Kubernetes access for cellar's jobs.

`KubeTransport` is the one thin seam over the official client (kube_client.py): it makes single API calls and
turns the client's exceptions into `KubeApiError`. Everything above it (`Kube`) holds the policy: retries
with backoff and jitter on 429/5xx/connection errors and never on 400/403/404/422, optimistic
concurrency for status writes, human messages for 403 and 404, best-effort Events. Unit tests fake
`KubeTransport` and nothing else.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast

import tenacity

from common.errors import Forbidden, InvalidSpec, NotFound, PermanentError, RetryableError
from common.reasons import Reason
from common.redact import redact, redact_nested, register_secret
from common.schema import GROUP, VERSION

log = logging.getLogger(__name__)

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


class KubeTransport(Protocol):
    """The seam: single calls, no retries, no policy."""

    def get_custom_object(self, kind: ResourceKind, namespace: str, name: str) -> dict[str, Any]: ...

    def merge_patch_status(
        self, kind: ResourceKind, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]: ...

    def get_secret_data(self, namespace: str, name: str) -> dict[str, str]: ...

    def get_config_map_data(self, namespace: str, name: str) -> dict[str, str]: ...

    def create_event(self, namespace: str, body: Mapping[str, Any]) -> None: ...


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
