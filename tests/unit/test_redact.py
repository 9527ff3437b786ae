from __future__ import annotations

import io
import json
import logging
import os

from common.logs import bind_resource, configure_logging
from common.redact import MASK, redact, register_secret


def test_registered_secrets_are_masked_anywhere() -> None:
    register_secret("hunter2-long")
    assert redact("connect failed for password hunter2-long at host") == f"connect failed for password {MASK} at host"


def test_longer_secret_masked_whole() -> None:
    register_secret("abcd")
    register_secret("abcdefgh")
    assert redact("x abcdefgh y") == f"x {MASK} y"


def test_inline_credentials_are_masked_even_if_unregistered() -> None:
    assert redact("password=letmein host=db") == f"password={MASK} host=db"
    assert redact("postgresql://app:letmein@db:5432/app") == f"postgresql://app:{MASK}@db:5432/app"
    assert "AKIA" not in redact("aws_secret_access_key=AKIAXXXXSECRET")
    # A field path that merely names a secret is not one.
    assert redact("spec.storage.credentials.secretAccessKey: Secret x") == (
        "spec.storage.credentials.secretAccessKey: Secret x"
    )


def test_short_values_are_not_searched() -> None:
    register_secret("db")
    assert redact("db is fine") == "db is fine"


def test_log_lines_are_json_with_run_id_and_resource_and_no_secret() -> None:
    stream = io.StringIO()
    configure_logging("backup", "run123", stream=stream)
    bind_resource("prod", "orders")
    register_secret("super-secret-value")
    logging.getLogger("cellar").info("connecting", extra={"dsn": "user=a password=super-secret-value"})
    record = json.loads(stream.getvalue().strip())
    assert record["run_id"] == "run123"
    assert record["resource"] == "prod/orders"
    assert record["job"] == "backup"
    assert record["msg"] == "connecting"
    assert "super-secret-value" not in stream.getvalue()


def test_text_log_lines_are_short_readable_and_hold_no_secret() -> None:
    stream = io.StringIO()
    configure_logging("backup", "run123", stream=stream, log_format="text")
    bind_resource("prod", "orders")
    register_secret("super-secret-value")
    logging.getLogger("cellar").info(
        "connecting", extra={"dsn": "user=a password=super-secret-value", "progress": {"done": 5, "unit": "rows"}}
    )
    line = stream.getvalue().strip()
    assert "\n" not in line
    assert " info    connecting  dsn=user=a password=***" in line
    assert 'progress={"done": 5, "unit": "rows"}' in line
    assert "run123" not in line  # the same on every line of a run: left out
    assert "super-secret-value" not in line


def test_auto_writes_json_unless_stdout_is_a_terminal() -> None:
    stream = io.StringIO()  # not a terminal, as in a Pod
    configure_logging("backup", "run123", stream=stream, log_format="auto")
    logging.getLogger("cellar").info("hello")
    assert json.loads(stream.getvalue())["msg"] == "hello"

    # A real terminal: a pseudo-terminal's far end, read back from its near end.
    near, far = os.openpty()
    with os.fdopen(far, "w") as terminal:
        configure_logging("backup", "run123", stream=terminal, log_format="auto")
        logging.getLogger("cellar").info("hello")
        terminal.flush()
        written = os.read(near, 4096).decode()
    os.close(near)
    configure_logging("backup", "run123", stream=io.StringIO())  # no handler left on the closed terminal
    assert written.split()[1:] == ["info", "hello"]


def test_age_identities_are_masked_even_if_unregistered() -> None:
    identity = "AGE-SECRET-KEY-1QYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQS3290GG"
    masked = redact(f"could not parse {identity} (line 1)")
    assert identity not in masked
    assert masked == "could not parse *** (line 1)"
