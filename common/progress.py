"""Progress of long work: done, rate and ETA in the logs, and (at most every 30 s) in status."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from common.conditions import format_time
from common.status import Progress

log = logging.getLogger(__name__)

STATUS_INTERVAL_SECONDS = 30.0
LOG_INTERVAL_SECONDS = 10.0


class ProgressReporter:
    """Call `update(done)` as often as you like; it decides when to log and when to write status.

    `total` may be None while it is still being counted (`set_total` then); until then there is no ETA.
    It may be an estimate: once `done` passes it, the total shown is `done` (and there is no ETA).
    """

    def __init__(
        self,
        unit: str,
        total: int | None,
        publish: Callable[[dict[str, Any]], object] | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        status_interval: float = STATUS_INTERVAL_SECONDS,
        log_interval: float = LOG_INTERVAL_SECONDS,
    ) -> None:
        self.unit = unit
        self.total = None if total is None else max(0, total)
        self.publish = publish
        self.clock = clock
        self.status_interval = status_interval
        self.log_interval = log_interval
        self.started = clock()
        self.done = 0
        self._last_status = self.started
        self._last_log = self.started

    def set_total(self, total: int) -> None:
        self.total = max(0, total)

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(1e-6, self.clock() - self.started)
        rate = self.done / elapsed
        total = None if self.total is None else max(self.total, self.done)
        now = datetime.now(UTC)
        eta = None
        if total is not None and total > self.done and rate > 0:
            eta = format_time(now + timedelta(seconds=(total - self.done) / rate))
        return Progress(self.done, self.unit, round(rate, 1), format_time(now), total, eta).to_status()

    def after(self, offset: int) -> Callable[[int], None]:
        """An `update` for one part of the work whose own count starts at `offset` of the whole (one database
        of several, one object of several)."""
        return lambda done: self.update(offset + done)

    def update(self, done: int, detail: Mapping[str, Any] | None = None) -> None:
        """`detail`: more figures for the log line (bytes beside rows, say); status shows the Progress fields only."""
        self.done = done
        now = self.clock()
        if now - self._last_log >= self.log_interval:
            self._last_log = now
            log.info("progress", extra={"progress": {**self.snapshot(), **(detail or {})}})
        if self.publish is not None and now - self._last_status >= self.status_interval:
            self._last_status = now
            try:
                self.publish(self.snapshot())
            except Exception as exc:  # noqa: BLE001 (progress is informative; the work goes on)
                log.warning("could not write progress to status", extra={"error": str(exc)})
