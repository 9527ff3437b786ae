"""Pure functions over `metav1.Condition` lists with apimachinery `meta.SetStatusCondition` semantics."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, NamedTuple

from common.reasons import Reason


class ConditionType(StrEnum):
    """Every condition type cellar writes (docs/guide.md says which kind has which)."""

    READY = "Ready"  # a policy object (DatabaseBackup, TableArchive) is in good shape
    PROGRESSING = "Progressing"  # a policy object's run is under way (True), or how the last one ended (False)
    BACKUP_SUCCEEDED = "BackupSucceeded"  # how a DatabaseBackup's last run went
    ARCHIVE_SUCCEEDED = "ArchiveSucceeded"  # how a TableArchive's last run went
    VERIFIED = "Verified"  # how a DatabaseBackup's last restore test went
    SUCCEEDED = "Succeeded"  # a DatabaseRestore, a one-shot object: Unknown while it runs


ConditionStatus = Literal["True", "False", "Unknown"]
# A condition as the API server stores it (metav1.Condition, a JSON object).
StoredCondition = dict[str, Any]


class Condition(NamedTuple):
    """A condition a run sets: the type, its status, the reason (declared in common.reasons), a message."""

    type: ConditionType
    status: ConditionStatus
    reason: Reason
    message: str


# metav1.Condition limits: the API server rejects longer messages.
MAX_MESSAGE_LENGTH = 32768


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, the form metav1.Time serialises to."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find_condition(conditions: Sequence[Mapping[str, Any]], condition_type: str) -> StoredCondition | None:
    for condition in conditions:
        if condition.get("type") == condition_type:
            return dict(condition)
    return None


def set_condition(
    conditions: Sequence[Mapping[str, Any]], condition: Condition, observed_generation: int | None, now: datetime
) -> list[StoredCondition]:
    """Return a new list with `condition` upserted by its type.

    `lastTransitionTime` moves only when `status` changes; reason, message and observedGeneration
    are always overwritten; conditions of other types are kept untouched and in order.
    """
    condition_type, status, reason, message = condition
    if not reason or not reason[0].isupper() or not reason.isalnum():
        raise ValueError(f"condition reason must be CamelCase letters and digits, got {reason!r}")
    if len(message) > MAX_MESSAGE_LENGTH:
        message = message[: MAX_MESSAGE_LENGTH - 3] + "..."
    result = [copy.deepcopy(dict(c)) for c in conditions]
    new: StoredCondition = {
        "type": str(condition_type),
        "status": status,
        "reason": str(reason),
        "message": message,
        "lastTransitionTime": format_time(now),
    }
    if observed_generation is not None:
        new["observedGeneration"] = observed_generation
    for index, existing in enumerate(result):
        if existing.get("type") != condition_type:
            continue
        if existing.get("status") == status and existing.get("lastTransitionTime"):
            new["lastTransitionTime"] = existing["lastTransitionTime"]
        result[index] = new
        return result
    result.append(new)
    return result


def remove_condition(conditions: Sequence[Mapping[str, Any]], condition_type: str) -> list[StoredCondition]:
    return [dict(c) for c in conditions if c.get("type") != condition_type]


def is_condition_true(conditions: Sequence[Mapping[str, Any]], condition_type: str) -> bool:
    found = find_condition(conditions, condition_type)
    return found is not None and found.get("status") == "True"
