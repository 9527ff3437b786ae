"""A resource's spec, read and checked: `SpecReader` gives typed access that names the field path in every
error, and the records the jobs share (a Secret key reference, the database settings) parse themselves with
it; the object-storage settings are in common.storage_spec.

Everything is checked before any database, bucket or object is touched. The CRD schema already rejects most
bad specs at `kubectl apply` (with the patterns and choices in common.schema, which this module checks with
too); these checks repeat what a job depends on (a resource written before a CRD upgrade) and cover what a
schema cannot see. Errors name the field path and what to do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, overload

from common.errors import InvalidSpec
from common.schema import DNS_SUBDOMAIN, SSL_MODES

_DURATION_PART = re.compile(r"([0-9]+)(s|m|h|d|w)")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
NAME = re.compile(DNS_SUBDOMAIN)


def parse_duration(text: str, field: str) -> timedelta:
    """Parse `26h`, `7d`, `1h30m` (units s, m, h, d, w) into a timedelta."""
    if not isinstance(text, str) or not text or _DURATION_PART.sub("", text) != "":
        raise InvalidSpec(f"{field}: {text!r} is not a duration; write it like 30s, 15m, 26h, 7d or 1h30m")
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
    return timedelta(seconds=seconds)


class SpecReader:
    """Typed access to a spec mapping that reports the full field path on every error."""

    def __init__(self, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise InvalidSpec(f"{path}: must be an object")
        self.data = data
        self.path = path

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def child(self, key: str, *, required: bool = False) -> SpecReader:
        if required and not self.has(key):
            raise InvalidSpec(f"{self.path}.{key}: required")
        return SpecReader(self.data.get(key), f"{self.path}.{key}")

    def string(
        self,
        key: str,
        default: str | None = None,
        *,
        required: bool = False,
        choices: tuple[str, ...] | None = None,
        pattern: re.Pattern[str] | None = None,
    ) -> str:
        value = self.data.get(key, default)
        where = f"{self.path}.{key}"
        if value is None:
            if required:
                raise InvalidSpec(f"{where}: required")
            return ""
        if not isinstance(value, str):
            raise InvalidSpec(f"{where}: must be a string, got {type(value).__name__}")
        if choices is not None and value not in choices:
            raise InvalidSpec(f"{where}: {value!r} is not one of {', '.join(choices)}")
        if pattern is not None and not pattern.match(value):
            raise InvalidSpec(f"{where}: {value!r} does not match {pattern.pattern}")
        return value

    def optional_string(self, key: str) -> str | None:
        return self.string(key) if self.has(key) else None

    @overload
    def integer(self, key: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int: ...

    @overload
    def integer(
        self, key: str, default: None = None, *, minimum: int | None = None, maximum: int | None = None
    ) -> int | None: ...

    def integer(
        self, key: str, default: int | None = None, *, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        """The integer at `key`, or `default`: never None where a default is given."""
        value = self.data.get(key, default)
        where = f"{self.path}.{key}"
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidSpec(f"{where}: must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise InvalidSpec(f"{where}: {value} is below the minimum {minimum}")
        if maximum is not None and value > maximum:
            raise InvalidSpec(f"{where}: {value} is above the maximum {maximum}")
        return value

    def boolean(self, key: str, default: bool = False) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise InvalidSpec(f"{self.path}.{key}: must be true or false, got {value!r}")
        return value

    @overload
    def duration(self, key: str, default: str, *, positive: bool = False) -> timedelta: ...

    @overload
    def duration(self, key: str, default: None = None, *, positive: bool = False) -> timedelta | None: ...

    def duration(self, key: str, default: str | None = None, *, positive: bool = False) -> timedelta | None:
        """The duration at `key` (or `default`); None where neither is set. `positive`: 0s is refused, for
        fields where zero has no meaning (in the others, 0s means what the field's description says)."""
        value = self.data.get(key, default)
        if value is None:
            return None
        parsed = parse_duration(value, f"{self.path}.{key}")
        if positive and not parsed:
            raise InvalidSpec(f"{self.path}.{key}: must be more than 0s (got {value!r})")
        return parsed

    def string_list(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise InvalidSpec(f"{self.path}.{key}: must be a list of non-empty strings")
        return tuple(value)


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str
    field: str

    @classmethod
    def parse(cls, reader: SpecReader) -> SecretKeyRef:
        return cls(reader.string("name", required=True, pattern=NAME), reader.string("key", required=True), reader.path)


@dataclass(frozen=True)
class DatabaseSpec:
    """The spec's database block, before its Secret is read."""

    secret_name: str
    host: str | None
    port: int | None
    dbname: str | None
    ssl_mode: str
    connect_timeout: int
    field: str

    @classmethod
    def parse(cls, reader: SpecReader) -> DatabaseSpec:
        secret = reader.child("secretRef", required=True)
        return cls(
            secret_name=secret.string("name", required=True, pattern=NAME),
            host=reader.optional_string("host"),
            port=reader.integer("port", minimum=1, maximum=65535),
            dbname=reader.optional_string("dbname"),
            ssl_mode=reader.string("sslMode", "prefer", choices=SSL_MODES),
            connect_timeout=reader.integer("connectTimeoutSeconds", 10, minimum=1, maximum=300),
            field=reader.path,
        )
