"""What counts as a full server (waited for), how long the waits grow, and the failpoint that pauses a job."""

from __future__ import annotations

import psycopg
import pytest

from common import failpoints
from common.db import _server_full, backoff_seconds, connect_wait_seconds


@pytest.mark.parametrize(
    "message",
    [
        "connection failed: FATAL:  sorry, too many clients already",
        'connection failed: FATAL:  too many connections for role "app"',
        'connection failed: FATAL:  too many connections for database "shop"',
        "FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute",
        "FATAL:  the database system is starting up",
    ],
)
def test_a_server_without_a_free_slot_is_waited_for(message: str) -> None:
    assert _server_full(psycopg.OperationalError(message))


@pytest.mark.parametrize(
    "message",
    [
        'connection failed: FATAL:  password authentication failed for user "app"',
        "connection failed: Connection refused",
        'FATAL:  database "shop" does not exist',
    ],
)
def test_other_connection_failures_are_not_waited_for(message: str) -> None:
    assert not _server_full(psycopg.OperationalError(message))


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    for attempt in range(12):
        pause = backoff_seconds(attempt, cap=10.0)
        assert 0.5 <= pause <= min(10.0, 0.5 * 2**attempt)
    assert max(backoff_seconds(20, cap=5.0) for _ in range(50)) <= 5.0


def test_the_connection_wait_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLAR_CONNECT_WAIT_SECONDS", "7.5")
    assert connect_wait_seconds() == 7.5
    monkeypatch.setenv("CELLAR_CONNECT_WAIT_SECONDS", "soon")
    assert connect_wait_seconds() == 120.0
    monkeypatch.delenv("CELLAR_CONNECT_WAIT_SECONDS")
    assert connect_wait_seconds() == 120.0


def test_a_wait_for_failpoint_names_its_file() -> None:
    parsed = failpoints._parse("a,b=error-after:2,c=wait-for:/tmp/go")
    assert parsed == {"a": None, "b": 2, "c": "/tmp/go"}
