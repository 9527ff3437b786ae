"""One run's status, written in one place: started, progress, succeeded, failed.

Each job describes its kind's runs once, as a `RunShape`: the condition its outcome is written to, whether a
`Progressing` condition and `Ready` follow the run, the record that describes the run, and the Events' action.
A `RunStatus` writes every step of one run from it. Status is written as a JSON merge patch, where a field a
write leaves out keeps its old value: the run's record is written whole at its start and at its end (see
common.status), so nothing of an earlier run stays in it, whichever way this one ends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, Self

from common.conditions import Condition, ConditionStatus, ConditionType, format_time
from common.errors import CellarError
from common.reasons import Reason

if TYPE_CHECKING:
    from common.runtime import RunContext


class RunFields(Protocol):
    """A record of one run (common.status): its status fields, and the same record as a run ending now."""

    def as_fields(self) -> dict[str, Any]: ...

    def ended(self, at: str, reason: Reason, message: str) -> Self: ...


class StatusFields(Protocol):
    """A status record (common.status): the fields it writes, under its own key."""

    def as_fields(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RunShape:
    """What a kind's runs write, beside the fields each run adds."""

    action: str  # the Events' action: Backup, Archive, Restore, ...
    outcome: ConditionType | None  # the condition that tells how the run went; None: Events only
    # Policy objects (a nightly backup) show a run under way in Progressing; a one-shot object (a restore) in its
    # outcome condition, Unknown while it runs.
    progressing: bool = False
    ready: bool = False  # Ready follows the outcome
    progress: bool = False  # writes `progress` while it runs (cleared when it ends)
    # The record of a run that failed before it started, from its id and start; None: a failure writes none.
    first_record: Callable[[str, str], RunFields] | None = None
    failure_note: str = "{error}"  # the failure's Event note


class RunStatus:
    """The status writes of one run of a job, in the order they happen."""

    def __init__(self, ctx: RunContext, shape: RunShape) -> None:
        self.ctx = ctx
        self.shape = shape
        # What a failure writes: the record started() wrote (with what the run knew then), else a first one.
        self.record = shape.first_record(ctx.run_id, format_time(ctx.started)) if shape.first_record else None

    @classmethod
    def of(cls, ctx: RunContext, shape: RunShape) -> RunStatus:
        """The run's writer: made at its first use, then the same for every step of the run."""
        writer = ctx.status_writer
        if not isinstance(writer, RunStatus) or writer.shape is not shape:
            writer = cls(ctx, shape)
            ctx.status_writer = writer
        return writer

    def started(
        self,
        message: str,
        note: str,
        record: RunFields | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        """The run began: under way in its conditions (`message`), its record, an Event (`note`)."""
        if record is not None:
            self.record = record
        under_way = Condition(
            self._running_condition(), "True" if self.shape.progressing else "Unknown", Reason.RUNNING, message
        )
        self.ctx.update_status([under_way], {**(fields or {}), **(record.as_fields() if record else {})})
        self.ctx.event(Reason.STARTED, note, action=self.shape.action)

    def progressed(self, figures: Mapping[str, Any]) -> None:
        """How far the run is (common.progress's figures)."""
        self.ctx.update_status(fields={"progress": dict(figures)})

    def under_way(self, reason: Reason, message: str) -> None:
        """The run goes on, differently: Progressing with another reason (batches waiting for a standby)."""
        self.ctx.update_status([Condition(self._running_condition(), "True", reason, message)])

    def succeeded(
        self,
        reason: Reason,
        message: str,
        record: StatusFields | None = None,
        *,
        conditions: Sequence[Condition] = (),
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        """The run ended well: its outcome, its record, `fields`, an Event. `conditions` are the kind's own
        (one of a type the shape writes takes its place: a DatabaseBackup's Ready follows its newest backup)."""
        written = {**(fields or {}), **(record.as_fields() if record else {})}
        if self.shape.progress:
            written["progress"] = None
        self.ctx.update_status(self._outcome("True", reason, message, conditions), written)
        self.ctx.event(reason, message, action=self.shape.action)

    def reported(self, reason: Reason, message: str, fields: Mapping[str, Any] | None = None) -> None:
        """A run that only reports (a dry run): its outcome and Ready, no record, nothing under way."""
        outcome = [c for c in self._outcome("True", reason, message) if c.type != ConditionType.PROGRESSING]
        self.ctx.update_status(outcome, fields)
        self.ctx.event(reason, message, action=self.shape.action)

    def skipped(self, record: StatusFields, reason: Reason, message: str) -> None:
        """A run that stepped aside (another one holds the work): its record and an Event; the outcome
        conditions stay the other run's."""
        self.ctx.update_status(fields=record.as_fields())
        self.ctx.event(reason, message, action=self.shape.action)

    def failed(self, error: CellarError, conditions: Sequence[Condition] = ()) -> None:
        """The run failed (`Interrupted` by SIGTERM too): its outcome, its record ending now, a Warning Event."""
        message = str(error)
        written: dict[str, Any] = {}
        if self.record is not None:
            written.update(self.record.ended(format_time(datetime.now(UTC)), error.reason, message).as_fields())
        if self.shape.progress:
            written["progress"] = None
        outcome = self._outcome("False", error.reason, message, conditions)
        if outcome or written:
            self.ctx.update_status(outcome, written)
        self.ctx.event(
            error.reason, self.shape.failure_note.format(error=message), action=self.shape.action, warning=True
        )

    def _running_condition(self) -> ConditionType:
        if self.shape.progressing:
            return ConditionType.PROGRESSING
        if self.shape.outcome is None:
            raise TypeError(f"{self.shape.action}: a run with no outcome condition shows no run under way")
        return self.shape.outcome

    def _outcome(
        self, status: ConditionStatus, reason: Reason, message: str, own: Sequence[Condition] = ()
    ) -> list[Condition]:
        written: list[Condition] = []
        if self.shape.progressing:
            written.append(Condition(ConditionType.PROGRESSING, "False", reason, message))
        if self.shape.outcome is not None:
            written.append(Condition(self.shape.outcome, status, reason, message))
        if self.shape.ready:
            written.append(Condition(ConditionType.READY, status, reason, message))
        for condition in own:
            at = next((i for i, c in enumerate(written) if c.type == condition.type), None)
            if at is None:
                written.append(condition)
            else:
                written[at] = condition
        return written
