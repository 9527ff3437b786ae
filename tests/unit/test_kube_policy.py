"""`Kube`'s policy over a fake `KubeTransport` (the one seam unit tests may fake)."""

from __future__ import annotations

from typing import Any

import pytest

from common.errors import Forbidden, InvalidSpec, NotFound, PermanentError, RetryableError
from common.kube import DATABASE_BACKUP, Kube, KubeApiError, ResourceRef, RetryPolicy, cut_to_bytes
from tests.unit.fake_kube import FakeTransport

REF = ResourceRef(DATABASE_BACKUP, "prod", "orders")


def _kube(transport: FakeTransport) -> Kube:
    return Kube(transport, retry=RetryPolicy(attempts=4), sleep=lambda _: None, instance="pod-1")


@pytest.mark.parametrize("status", [0, 429, 500, 503, 504])
def test_transient_errors_are_retried(status: int) -> None:
    transport = FakeTransport()
    transport.get_failures = [KubeApiError(status, "busy"), KubeApiError(status, "busy")]
    assert _kube(transport).get(REF)["metadata"]["name"] == "orders"
    assert transport.calls == ["get", "get", "get"]


def test_a_retry_after_from_the_server_is_waited_out() -> None:
    transport = FakeTransport()
    transport.get_failures = [KubeApiError(429, "slow down", retry_after=7), KubeApiError(503, "busy")]
    waited: list[float] = []
    kube = Kube(transport, retry=RetryPolicy(attempts=4, initial_wait=0.1, max_wait=1), sleep=waited.append)
    assert kube.get(REF)["metadata"]["name"] == "orders"
    assert waited[0] == 7  # what the server asked for, not the 0.1 s backoff
    assert 0 < waited[1] <= 1.0 + 1.0  # backoff (with up to 1 s of jitter) when the server said nothing


@pytest.mark.parametrize(
    ("status", "error"), [(400, PermanentError), (403, Forbidden), (404, NotFound), (422, PermanentError)]
)
def test_client_errors_are_never_retried(status: int, error: type[Exception]) -> None:
    transport = FakeTransport()
    transport.get_failures = [KubeApiError(status, "no")]
    with pytest.raises(error):
        _kube(transport).get(REF)
    assert transport.calls == ["get"]


def test_retries_give_up_with_a_retryable_error() -> None:
    transport = FakeTransport()
    transport.get_failures = [KubeApiError(503, "down")] * 10
    with pytest.raises(RetryableError, match="still failing after 4 attempts"):
        _kube(transport).get(REF)
    assert transport.calls == ["get"] * 4


def test_forbidden_names_verb_and_resource() -> None:
    transport = FakeTransport()
    transport.patch_failures = [KubeApiError(403, 'User "x" cannot patch resource')]
    with pytest.raises(Forbidden) as raised:
        _kube(transport).update_status(REF, lambda r: {"a": 1})
    assert str(raised.value).startswith(
        'permission denied: cannot patch databasebackups.cellar.dev/status "orders" in namespace "prod"'
    )


def test_conflict_rereads_and_recomputes() -> None:
    transport = FakeTransport()
    seen: list[str] = []

    def mutate(resource: dict[str, Any]) -> dict[str, Any]:
        seen.append(resource["metadata"]["resourceVersion"])
        if len(seen) == 1:  # someone else writes between our read and our patch
            transport.objects["orders"]["metadata"]["resourceVersion"] = "7"
            transport.objects["orders"]["status"] = {"backupsKept": 5}
        return {"backupsKept": int(resource.get("status", {}).get("backupsKept", 0)) + 1}

    result = _kube(transport).update_status(REF, mutate)
    assert seen == ["1", "7"]
    assert result["status"]["backupsKept"] == 6


def test_status_strings_are_redacted() -> None:
    from common.redact import register_secret

    register_secret("the-db-password")
    transport = FakeTransport()
    _kube(transport).update_status(REF, lambda r: {"message": "failed with the-db-password inside"})
    assert "the-db-password" not in str(transport.objects["orders"]["status"])


def test_events_are_best_effort_and_well_formed() -> None:
    transport = FakeTransport()
    kube = _kube(transport)
    resource = transport.objects["orders"]
    kube.post_event(resource, reason="Completed", action="Backup", note="x" * 2000)
    event = transport.events[0]
    assert event["regarding"]["uid"] == "u1"
    assert event["metadata"]["generateName"] == "orders-"
    assert len(event["note"]) == 1024
    assert event["reportingInstance"] == "pod-1"
    assert event["eventTime"].endswith("Z")
    transport.patch_failures = [KubeApiError(403, "no events for you")]
    kube.post_event(resource, reason="Completed", action="Backup", note="n")  # does not raise


def test_an_event_note_is_cut_to_the_api_servers_limit_in_bytes_on_a_character_boundary() -> None:
    transport = FakeTransport()
    # A localized PostgreSQL error: 2 bytes a character in UTF-8, so 1024 characters are 2048 bytes.
    note = "x" + "é" * 1000
    _kube(transport).post_event(transport.objects["orders"], reason="RestoreFailed", action="Restore", note=note)
    (event,) = transport.events
    assert len(event["note"].encode("utf-8")) <= 1024
    assert event["note"] == "x" + "é" * 511  # 1023 bytes: one more é would not fit, and half of one is no character
    assert cut_to_bytes("…" * 400, 1024) == "…" * 341  # 3 bytes each
    assert cut_to_bytes("short", 1024) == "short"


def test_missing_secret_key_lists_present_keys() -> None:
    transport = FakeTransport()
    transport.secrets["s"] = {"username": "u", "password": "p-secret"}
    with pytest.raises(
        Exception,
        match=r'spec\.storage: Secret "s" has no key "AWS_ACCESS_KEY_ID" '
        r"\(keys present: password, username\)",
    ):
        _kube(transport).read_secret_key("prod", "s", "AWS_ACCESS_KEY_ID", field="spec.storage")


def test_config_map_keys_are_read_with_retries_and_name_the_field_when_missing() -> None:
    transport = FakeTransport()
    transport.config_maps["keys"] = {"recipients.txt": "age1abc"}
    transport.get_failures = [KubeApiError(503, "busy")]
    kube = _kube(transport)
    field = "spec.encryption.recipientsFrom.configMapKeyRef"
    assert kube.read_config_map_key("prod", "keys", "recipients.txt", field=field) == "age1abc"
    with pytest.raises(
        InvalidSpec, match=f'{field}: ConfigMap "keys" has no key "other" \\(keys present: recipients.txt\\)'
    ):
        kube.read_config_map_key("prod", "keys", "other", field=field)
    with pytest.raises(InvalidSpec, match=f'{field}: ConfigMap "gone" was not found in namespace "prod"'):
        kube.read_config_map_key("prod", "gone", "k", field=field)
