"""Database connections against a real PostgreSQL: failures are clear messages, not tracebacks."""

from __future__ import annotations

from typing import Any

import pytest

from common.db import connect
from common.errors import ConnectionFailed, PermanentError
from tests.harness.stack import free_port
from tests.integration.environments import database_settings


def test_connects_with_timeouts_and_application_name(database: dict[str, Any]) -> None:
    from datetime import timedelta

    settings = database_settings(database)
    with connect(
        settings,
        application_name="cellar-test",
        statement_timeout=timedelta(seconds=7),
        lock_timeout=timedelta(seconds=2),
    ) as conn:
        row = conn.execute(
            "SELECT current_setting('application_name'), current_setting('statement_timeout'),"
            " current_setting('lock_timeout')"
        ).fetchone()
    assert row == ("cellar-test", "7s", "2s")


def test_wrong_password_is_a_clear_permanent_error(database: dict[str, Any]) -> None:
    settings = database_settings(database, password="definitely-wrong-password")
    with pytest.raises(PermanentError) as raised:
        connect(settings, application_name="cellar-test")
    message = str(raised.value)
    print(f"wrong password: {message}")
    assert raised.value.reason == "AuthenticationFailed"
    assert message.startswith(f"cannot log in to database '{database['dbname']}' on 127.0.0.1:")
    assert "Check the username and password in the database Secret" in message
    assert "definitely-wrong-password" not in message
    assert "Traceback" not in message


def test_unreachable_host_is_a_retryable_connection_failure(database: dict[str, Any]) -> None:
    settings = database_settings(database, port=str(free_port()))
    with pytest.raises(ConnectionFailed) as raised:
        connect(settings, application_name="cellar-test")
    message = str(raised.value)
    print(f"unreachable: {message}")
    assert raised.value.exit_code == 1
    assert "cannot reach database" in message
    assert "Check the host and port" in message
    assert database["password"] not in message
