"""JSON-lines logging on stdout, one object per line, every line carrying the run id and resource."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from common.redact import redact, redact_nested

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object; extra fields given with `extra=` become keys."""

    def __init__(self, static_fields: dict[str, Any]) -> None:
        super().__init__()
        self.static_fields = static_fields

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        entry.update(self.static_fields)
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # Redact each value, not the JSON text, so masking can never break a line's JSON; values JSON
        # cannot hold (datetimes, exceptions) are turned into text and redacted too.
        return json.dumps(redact_nested(entry), default=lambda value: redact(str(value)), ensure_ascii=False)


def configure_logging(job: str, run_id: str, stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """Send every cellar log line to stdout as JSON with the job name and run id."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter({"job": job, "run_id": run_id}))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # Library chatter (boto's credential lookups, urllib3 retries) is noise at INFO.
    for noisy in ("botocore", "boto3", "urllib3", "kubernetes", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def bind_resource(namespace: str, name: str) -> None:
    """Add the custom resource's namespace/name to every following log line."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter):
            handler.formatter.static_fields["resource"] = f"{namespace}/{name}"
