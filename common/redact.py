"""Keeps secrets out of everything cellar writes.

Every value read from a Secret is registered here as soon as it is read; log lines, condition
messages, Event notes and the termination log pass through `redact` before they leave the process,
so a secret that ends up inside an exception text (a DSN in a driver error, say) is still masked.
"""

from __future__ import annotations

import re
import threading
from typing import Any

MASK = "***"
# Secrets shorter than this would mask ordinary words ("a", "db") everywhere; they are still never
# logged on purpose, only not searched for inside other text.
_MIN_LENGTH = 4

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None
# key=value (libpq DSN, env, query string) and URL userinfo forms of credentials that may appear in
# driver messages even when the value itself was never registered (a password typed into a DSN by hand).
_INLINE = re.compile(
    r"(?i)(password|passwd|secret[_-]?access[_-]?key|session[_-]?token|aws_secret_access_key)"
    r"(\s*=\s*)('[^']*'|\"[^\"]*\"|[^\s'\",;&}]+)"
)
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s]+):([^@/\s]+)@")
# An age identity (private key) is masked wherever it appears, even one never read from a Secret.
_AGE_IDENTITY = re.compile(r"AGE-SECRET-KEY-1[0-9A-Z]+")


def register_secret(value: str | None) -> None:
    """Remember a secret value so that `redact` masks it wherever it appears."""
    global _pattern  # noqa: PLW0603 (one process-wide registry, rebuilt under the lock)
    if not value or len(value) < _MIN_LENGTH:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def redact(text: str) -> str:
    """Return `text` with every registered secret and every inline credential masked."""
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _AGE_IDENTITY.sub(MASK, text)
    text = _INLINE.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return _URL_USERINFO.sub(lambda m: f"{m.group(1)}:{MASK}@", text)


def redact_nested(value: Any) -> Any:
    """`value` with `redact` applied to every string inside its dicts, lists and tuples (tuples become lists)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_nested(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_nested(v) for v in value]
    return value


def forget_all_secrets() -> None:
    """Clear the registry (tests only: a job process registers for its whole life)."""
    global _pattern  # noqa: PLW0603
    with _lock:
        _secrets.clear()
        _pattern = None
