from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from common.conditions import Condition, find_condition, is_condition_true, remove_condition, set_condition

T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_adds_a_new_condition_with_all_fields() -> None:
    result = set_condition([], Condition("Ready", "True", "Completed", "done"), 4, T0)
    assert result == [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Completed",
            "message": "done",
            "lastTransitionTime": "2026-11-01T12:00:00Z",
            "observedGeneration": 4,
        }
    ]


def test_same_status_keeps_transition_time_but_updates_the_rest() -> None:
    first = set_condition([], Condition("Ready", "False", "DumpFailed", "a"), 1, T0)
    second = set_condition(first, Condition("Ready", "False", "UploadFailed", "b"), 2, T1)
    assert second == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "UploadFailed",
            "message": "b",
            "lastTransitionTime": "2026-11-01T12:00:00Z",
            "observedGeneration": 2,
        }
    ]


def test_status_change_moves_transition_time() -> None:
    first = set_condition([], Condition("Ready", "False", "DumpFailed", "a"), 1, T0)
    second = set_condition(first, Condition("Ready", "True", "Completed", "b"), 1, T1)
    assert second[0]["lastTransitionTime"] == "2026-11-01T12:05:00Z"


def test_other_types_are_untouched_and_order_kept() -> None:
    conditions = [
        {"type": "A", "status": "True", "reason": "X", "message": "", "lastTransitionTime": "t"},
        {"type": "Ready", "status": "True", "reason": "Y", "message": "", "lastTransitionTime": "t"},
        {"type": "B", "status": "False", "reason": "Z", "message": "", "lastTransitionTime": "t"},
    ]
    result = set_condition(conditions, Condition("Ready", "False", "Failed", "m"), None, T0)
    assert [c["type"] for c in result] == ["A", "Ready", "B"]
    assert result[0] == conditions[0]
    assert result[2] == conditions[2]
    assert conditions[1]["status"] == "True", "the input list is not mutated"


def test_never_duplicates_a_type() -> None:
    result: list[dict[str, object]] = []
    for index in range(5):
        result = set_condition(result, Condition("Ready", "True", "Completed", str(index)), None, T0)
    assert len(result) == 1


@pytest.mark.parametrize("reason", ["", "lowercase", "Has Space", "Dash-ed"])
def test_reason_must_be_camel_case(reason: str) -> None:
    with pytest.raises(ValueError, match="CamelCase"):
        set_condition([], Condition("Ready", "True", reason, "m"), None, T0)


def test_long_messages_are_truncated_to_the_api_limit() -> None:
    result = set_condition([], Condition("Ready", "True", "Completed", "x" * 40000), None, T0)
    assert len(result[0]["message"]) == 32768


def test_helpers() -> None:
    conditions = set_condition([], Condition("Ready", "True", "Completed", ""), None, T0)
    assert is_condition_true(conditions, "Ready")
    assert not is_condition_true(conditions, "Verified")
    assert find_condition(conditions, "Verified") is None
    assert remove_condition(conditions, "Ready") == []
