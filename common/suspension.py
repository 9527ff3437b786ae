"""A resource suspended by an annotation (`kubectl cellar suspend`): its scheduled runs do nothing and exit 0.

An annotation on the custom resource, not the CronJob's spec.suspend: the chart writes spec.suspend (from
`suspend:` in its values), so Helm 4's server-side apply owns that field and the next `helm upgrade` would
conflict with any other writer of it. The chart writes no annotation but helm.sh/resource-policy, so this one
is left alone by every upgrade.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SUSPEND_ANNOTATION = "cellar.dev/suspended"
# The jobs a CronJob runs on schedule; a restore, a listing or an unarchive is asked for by a person and runs.
SCHEDULED_JOBS = frozenset({"backup", "archive"})


def suspended(resource: Mapping[str, Any]) -> bool:
    annotations = (resource.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(SUSPEND_ANNOTATION, "")).strip().lower() == "true"
