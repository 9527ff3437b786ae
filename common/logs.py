"""Logging on stdout: JSON lines (one object per line, every line carrying the run id and resource) for
Pods, CI and log collectors; short readable lines for a person at a terminal (`--log-format`)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from common.redact import redact, redact_nested

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


LOG_FORMATS = ("auto", "json", "text")


class _CellarFormatter(logging.Formatter):
    def __init__(self, static_fields: dict[str, Any]) -> None:
        super().__init__()
        self.static_fields = static_fields

    @staticmethod
    def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
        return {key: value for key, value in vars(record).items() if key not in _RESERVED and not key.startswith("_")}


class JsonFormatter(_CellarFormatter):
    """Formats a record as one JSON object; extra fields given with `extra=` become keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        entry.update(self.static_fields)
        entry.update(self.extra_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # Redact each value, not the JSON text, so masking can never break a line's JSON; values JSON
        # cannot hold (datetimes, exceptions) are turned into text and redacted too.
        return json.dumps(redact_nested(entry), default=lambda value: redact(str(value)), ensure_ascii=False)


class TextFormatter(_CellarFormatter):
    """One short line for a person: time, level, message, then the record's own fields as key=value.

    The run id, job and resource, the same on every line of a run, are left out; so is nothing else.
    """

    MAX_VALUE = 160

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        parts = [f"{moment} {record.levelname.lower():7} {record.getMessage()}"]
        for key, value in redact_nested(self.extra_fields(record)).items():
            # redact_nested masked the values; what JSON cannot hold is turned into text and masked here.
            text = (
                value
                if isinstance(value, str)
                else json.dumps(value, default=lambda v: redact(str(v)), ensure_ascii=False)
            )
            if len(text) > self.MAX_VALUE:
                text = text[: self.MAX_VALUE - 3] + "..."
            parts.append(f"{key}={text}")
        line = "  ".join(parts)
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


def configure_logging(
    job: str, run_id: str, stream: TextIO | None = None, level: int = logging.INFO, log_format: str = "json"
) -> None:
    """Send every cellar log line to stdout (`stream`), as JSON with the job name and run id, or as text."""
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

    set_log_format(log_format)


def set_log_format(log_format: str) -> None:
    """json, text, or auto: text when stdout is a terminal, else JSON."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    for handler in logging.getLogger().handlers:
        if not isinstance(handler.formatter, _CellarFormatter):
            continue
        stream = getattr(handler, "stream", None)
        text = log_format == "text" or (log_format == "auto" and bool(stream and stream.isatty()))
        wanted = TextFormatter if text else JsonFormatter
        if type(handler.formatter) is not wanted:
            handler.setFormatter(wanted(handler.formatter.static_fields))


def bind_resource(namespace: str, name: str) -> None:
    """Add the custom resource's namespace/name to every following log line."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, _CellarFormatter):
            handler.formatter.static_fields["resource"] = f"{namespace}/{name}"
