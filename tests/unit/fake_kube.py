"""A fake `KubeTransport`, the one seam over the Kubernetes client unit tests may fake.

Status writes are applied as the API server applies them: a JSON merge patch (RFC 7386), where an object
merges key by key, null removes the key, and anything else (a list included) replaces what was there.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from common.kube import KubeApiError, ResourceKind


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


class FakeTransport:
    def __init__(self, kind: str = "DatabaseBackup", status: Mapping[str, Any] | None = None) -> None:
        self.objects: dict[str, dict[str, Any]] = {
            "orders": {
                "apiVersion": "cellar.dev/v1alpha1",
                "kind": kind,
                "metadata": {
                    "name": "orders",
                    "namespace": "prod",
                    "resourceVersion": "1",
                    "generation": 1,
                    "uid": "u1",
                },
                "spec": {},
                "status": copy.deepcopy(dict(status or {})),
            }
        }
        self.get_failures: list[KubeApiError] = []
        self.patch_failures: list[KubeApiError] = []
        self.calls: list[str] = []
        self.events: list[Mapping[str, Any]] = []
        self.patches: list[dict[str, Any]] = []  # the status part of every status write accepted, in order
        self.secrets: dict[str, dict[str, str]] = {}
        self.config_maps: dict[str, dict[str, str]] = {}

    def get_custom_object(self, kind: ResourceKind, namespace: str, name: str) -> dict[str, Any]:
        self.calls.append("get")
        if self.get_failures:
            raise self.get_failures.pop(0)
        if name not in self.objects:
            raise KubeApiError(404, "not found")
        return copy.deepcopy(self.objects[name])

    def merge_patch_status(
        self, kind: ResourceKind, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        self.calls.append("patch")
        if self.patch_failures:
            raise self.patch_failures.pop(0)
        current = self.objects[name]
        if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]:
            raise KubeApiError(409, "conflict")
        self.patches.append(copy.deepcopy(dict(body["status"])))
        current["status"] = merge_patch(current["status"], body["status"])
        current["metadata"]["resourceVersion"] = str(int(current["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(current)

    def get_secret_data(self, namespace: str, name: str) -> dict[str, str]:
        if name not in self.secrets:
            raise KubeApiError(404, "not found")
        return self.secrets[name]

    def get_config_map_data(self, namespace: str, name: str) -> dict[str, str]:
        if self.get_failures:
            raise self.get_failures.pop(0)
        if name not in self.config_maps:
            raise KubeApiError(404, "not found")
        return self.config_maps[name]

    def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        if self.patch_failures:
            raise self.patch_failures.pop(0)
        self.events.append(body)

    @property
    def status(self) -> dict[str, Any]:
        return copy.deepcopy(self.objects["orders"]["status"])
