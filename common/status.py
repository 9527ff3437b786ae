"""Status payloads as typed records, written in one place.

A record's fields are snake_case here and camelCase in status (a trailing underscore is dropped:
`from_` is `from`). Status is written as a JSON merge patch, where a field left out keeps what status has:
a record that describes one thing alone (a run) is `written_whole`, its None fields written as null, which
clears them; any other record leaves its None fields out. Each record names the CRD schema it is written to,
and a test checks every record against the chart's CRDs, so a misspelt or mistyped field fails
there instead of being dropped silently by the API server.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Self

from common.reasons import Reason


def camel_case(name: str) -> str:
    head, *rest = name.rstrip("_").split("_")
    return head + "".join(part.title() for part in rest)


@dataclass(frozen=True)
class StatusRecord:
    """Base of every status payload."""

    # Where in which CRD's status this record is written: (CRD file, property path) pairs.
    written_to: ClassVar[tuple[tuple[str, str], ...]] = ()
    # None fields written as null (cleared by the merge patch) rather than left out (kept from before).
    written_whole: ClassVar[bool] = False

    def to_status(self) -> dict[str, Any]:
        written: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None and not self.written_whole:
                continue
            if isinstance(value, StatusRecord):
                value = value.to_status()
            elif isinstance(value, Reason):
                value = value.value
            written[camel_case(field.name)] = value
        return written

    def as_fields(self) -> dict[str, Any]:
        """The status fields this record writes: itself under the key its `written_to` names, or its own fields
        at the top of status (a record written to the path "")."""
        (path,) = {path for _, path in self.written_to}
        return {path: self.to_status()} if path else self.to_status()


@dataclass(frozen=True)
class Progress(StatusRecord):
    """`progress`: the run in flight."""

    written_to = (
        ("databasebackups.yaml", "progress"),
        ("databaserestores.yaml", "progress"),
        ("tablearchives.yaml", "progress"),
    )

    done: int
    unit: str
    rate_per_second: float
    update_time: str
    total: int | None = None
    eta: str | None = None


@dataclass(frozen=True)
class RunRecord(StatusRecord):
    """`lastRun`: how the last run went (each job adds its own figures), that run alone: a field that does not
    apply to it (the figures of a run that failed, the completion of one still going) is cleared."""

    written_whole = True
    run_id: str
    start_time: str
    completion_time: str | None = None
    duration_seconds: float | None = None
    reason: Reason | None = None
    message: str | None = None

    def ended(self, at: str, reason: Reason, message: str) -> Self:
        """The record of this run ending `at` with `reason` (common.run_status writes it when a run fails)."""
        return replace(self, completion_time=at, reason=reason, message=message)
