"""A run of the archive job: batches until nothing is due, the run time is up, or SIGTERM.

The parts it coordinates, each in its own module: the SQL (statements), the lanes and how they share
the work (lanes), one batch's capture and publish in a transaction (batches), the objects' layout and
verified upload (objects), standbys (standbys), and the ledger (ledger). The guarantee, that every
row is always in the table or in a verified object a committed ledger row describes, is argued in
docs/design.md.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import psycopg

from common.errors import CellarError, InvalidSpec
from common.runtime import Interrupts
from jobs.archive.arrow_reads import ArrowReader
from jobs.archive.batch_records import BatchResult, CapturedBatch, RunTotals, rollback_quietly
from jobs.archive.batches import BatchWorker, Destination, RunScope
from jobs.archive.lanes import Lane, jsonable, split_into_lanes
from jobs.archive.lock_waits import LockWaits
from jobs.archive.partitions import PartitionArchiver, PartitionResult, as_batch_result
from jobs.archive.settings import DEFAULT_TUNING, ArchiveSettings, Tuning, live_changes, parse_archive_spec
from jobs.archive.standbys import StandbyGate
from jobs.archive.statements import due_range
from jobs.archive.table import Connection

log = logging.getLogger(__name__)


class Stopped(enum.Enum):
    """Why a run's batches ended (SIGTERM and failures leave by an exception instead)."""

    DONE = "done"  # nothing more was due
    MAX_RUN_TIME = "maxRunTime"  # spec.maxRunTime was up, or a standby held the batches until then


@dataclass(frozen=True)
class RunHooks:
    """What a run's batches call out to: `on_progress` (rows done), `open_connection` (one more to the same
    database, for lanes; none: one batch at a time), `reread_spec` (the resource's spec as it is now: its live
    fields, settings.LIVE_FIELDS, apply from the next batch on), `on_standby_hold` (see StandbyGate) and
    `open_reader` (binary reads of whole partitions)."""

    on_progress: Callable[[int], None] = lambda _: None
    open_connection: Callable[[], Connection] | None = None
    reread_spec: Callable[[], Mapping[str, Any]] | None = None
    on_standby_hold: Callable[[str | None], None] = lambda _: None
    open_reader: Callable[[], ArrowReader] | None = None


class Archiver:
    """Runs batches until nothing is due, the run time is up, or SIGTERM.

    In Move mode without a pause, the due rows are split by time into lanes (spec.batch.parallelism)
    that run side by side, and within a lane two batches overlap on two connections: while one
    batch's rows are encoded, uploaded and committed on the lane's publisher thread, the lane's next
    DELETE runs on its other connection. Every batch is still its own transaction that keeps the
    guarantee on its own; SKIP LOCKED and the lanes' disjoint time ranges keep batches' rows apart.
    Copy mode (each batch continues after the previous one's last row) and a configured pause run one
    batch at a time.
    """

    def __init__(
        self,
        scope: RunScope,
        settings: ArchiveSettings,
        interrupts: Interrupts,
        hooks: RunHooks = RunHooks(),
        tuning: Tuning = DEFAULT_TUNING,
        destination: Destination = Destination(),  # noqa: B008 (frozen, never changed)
    ) -> None:
        """`destination`: where the batches go (objects, encrypted or not, or an Iceberg table)."""
        self.scope = scope
        self.conn, self.info, self.cutoff, self.run_id = scope.conn, scope.info, scope.cutoff, scope.run_id
        self.interrupts = interrupts
        self.on_progress = hooks.on_progress
        self.tuning = tuning
        self.batches = BatchWorker(scope, settings, tuning, destination)
        # More connections let batches overlap: only in Move mode without a pause (see the class doc).
        open_connection = hooks.open_connection
        self._open_connection = open_connection if settings.mode == "Move" and not settings.pause else None
        self._open_reader = hooks.open_reader
        self._totals_lock = threading.Lock()
        self.standbys = StandbyGate(settings.max_replication_lag, hooks.on_standby_hold)
        self.lock_waits = LockWaits(
            settings.relation, tuning.lock_wait_attempts, settings.lock_timeout.total_seconds(), self._stopping
        )
        self._reread_spec = hooks.reread_spec
        self._settings_lock = threading.Lock()  # one lane reads the spec again at a time
        self._settings_read_at = self._started = time.monotonic()
        self._last_settings_notice = ""

    @property
    def settings(self) -> ArchiveSettings:
        """The run's settings as they are now (a spec read again may change them between batches)."""
        return self.batches.settings

    def run(self) -> tuple[RunTotals, Stopped]:
        """Batches until nothing is due, the run time is up, or SIGTERM; returns totals and why it stopped."""
        self._started = self._settings_read_at = time.monotonic()
        try:
            whole = self._whole_partitions()
            if self._open_connection is None:
                totals, stopped = self._run_one_at_a_time()
            else:
                totals, stopped = self._run_lanes(self._lanes(), self._open_connection)
            for result in whole:
                totals.add(as_batch_result(result))
                totals.partitions += 1
            return totals, stopped
        finally:
            self.batches.close()

    def _whole_partitions(self) -> list[PartitionResult]:
        """Partitions wholly before the cutoff go first, each read once and dropped (partitions.py); the row
        batches then take what is left (partitions that straddle the cutoff, the default partition)."""
        if self._open_connection is None:
            return []
        whole = PartitionArchiver(
            self.scope,
            self._open_connection,
            self.batches,
            self.settings,
            keep_detached=self.settings.keep_detached,
            open_reader=self._open_reader,
        )
        done = whole.run(self._stopping)
        self.interrupts.check()
        if done:
            self.on_progress(sum(r.rows for r in done))
        return done

    def _lanes(self) -> list[Lane]:
        if self.settings.parallelism <= 1:
            return [Lane()]
        oldest, newest = due_range(self.conn, self.settings, self.info, self.cutoff)
        lanes = split_into_lanes(oldest, newest, self.settings.parallelism)
        log.info("lanes", extra={"lanes": [[jsonable(lane.start), jsonable(lane.end)] for lane in lanes]})
        return lanes

    def _run_one_at_a_time(self) -> tuple[RunTotals, Stopped]:
        totals = RunTotals()
        lane = Lane()
        while True:
            self._refresh_settings()
            if not self.standbys.wait(self.conn, self._stopping):
                self.interrupts.check()  # SIGTERM while waiting: record Interrupted
                return totals, Stopped.MAX_RUN_TIME
            timed_out: psycopg.errors.LockNotAvailable | None = None
            with self.interrupts.deferred():
                try:
                    captured = self.batches.capture(self.conn, lane)
                    result = self.batches.publish(captured) if captured is not None else BatchResult()
                except psycopg.errors.LockNotAvailable as error:  # rolled back: nothing moved
                    timed_out = error
            if timed_out is not None:
                self.interrupts.check()
                self.lock_waits.failed(self.conn, timed_out)
                self.interrupts.check()
                continue
            self.lock_waits.succeeded()
            totals.add(result)
            self.on_progress(totals.rows)
            self.interrupts.check()  # SIGTERM during the batch: it finished (or rolled back); stop here
            if result.rows == 0:
                return totals, Stopped.DONE
            if time.monotonic() >= self._deadline():
                return totals, Stopped.MAX_RUN_TIME
            self._pause(self.interrupts.requested.is_set)
            self.interrupts.check()  # SIGTERM during the pause: stop before the next batch

    def _run_lanes(self, lanes: list[Lane], open_connection: Callable[[], Connection]) -> tuple[RunTotals, Stopped]:
        """Every lane on a thread of its own with two connections (the first lane's first one is the run's
        own); the run ends when every lane has. SIGTERM, the run time, or a lane's failure stops every
        lane after its batches in flight have committed or rolled back."""
        totals = RunTotals()
        halt = threading.Event()  # a lane failed: the others stop
        opened: list[Connection] = []
        try:
            for _ in range(2 * len(lanes) - 1):
                opened.append(open_connection())
            pairs = [[self.conn, opened[0]], *([opened[i], opened[i + 1]] for i in range(1, len(opened), 2))]
            # SIGTERM only sets a flag while the lanes run; each lane stops at its next batch boundary.
            with (
                self.interrupts.deferred(),
                ThreadPoolExecutor(max_workers=len(lanes), thread_name_prefix="archive-lane") as threads,
            ):
                running = [
                    threads.submit(self._run_lane, lane, pair, totals, halt)
                    for lane, pair in zip(lanes, pairs, strict=True)
                ]
                wait(running)
            failures = [f.exception() for f in running if f.exception() is not None]
            if failures:
                # The first failure is the cause; the others are lanes stopped by it (or the same cause).
                raise failures[0]  # type: ignore[misc]
            self.interrupts.check()  # SIGTERM: every lane's batches ended cleanly; record Interrupted
            stopped = [f.result() for f in running]
            return totals, Stopped.MAX_RUN_TIME if Stopped.MAX_RUN_TIME in stopped else Stopped.DONE
        finally:
            for conn in opened:
                with contextlib.suppress(psycopg.Error):
                    conn.close()

    def _run_lane(self, lane: Lane, connections: list[Connection], totals: RunTotals, halt: threading.Event) -> Stopped:
        idle = list(connections)
        pending: Future[BatchResult] | None = None  # the batch being published on the lane's publisher
        unpublished: CapturedBatch | None = None  # captured here, not yet handed to the publisher
        publisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="archive-publish")

        def collect() -> None:
            nonlocal pending
            finished, pending = pending, None
            if finished is not None:
                result = finished.result()  # a failed batch rolled back on the publisher; this raises it
                with self._totals_lock:
                    totals.add(result)
                    self.on_progress(totals.rows)

        try:
            while True:
                conn = idle.pop()
                self._refresh_settings()
                if not self.standbys.wait(conn, lambda: halt.is_set() or self._stopping()):
                    idle.append(conn)
                    collect()  # the batch in flight finishes (or rolls back) before the lane stops
                    return Stopped.MAX_RUN_TIME
                try:
                    unpublished = self.batches.capture(conn, lane)
                except psycopg.errors.LockNotAvailable as error:  # rolled back: nothing moved
                    self.lock_waits.failed(conn, error)
                    idle.append(conn)
                    collect()
                    continue
                collect()
                stopping = halt.is_set() or self._stopping()
                if unpublished is None:
                    idle.append(conn)
                    return Stopped.DONE
                captured, unpublished = unpublished, None
                pending = publisher.submit(self._publish_and_release, captured, idle)
                if stopping:
                    collect()  # the batch in flight finishes (or rolls back) before the lane stops
                    return Stopped.MAX_RUN_TIME
                # A pause set while the run goes on (spec re-read): each lane pauses between its batches.
                self._pause(lambda: halt.is_set() or self._stopping())
        except BaseException:
            halt.set()
            raise
        finally:
            if unpublished is not None:
                rollback_quietly(unpublished.conn)
            if pending is not None:  # leaving on an error: the batch in flight still ends cleanly
                with contextlib.suppress(Exception):
                    pending.result()
            publisher.shutdown(wait=True)

    def _publish_and_release(self, captured: CapturedBatch, idle: list[Connection]) -> BatchResult:
        """Publish a lane's batch; one that timed out waiting for a lock rolled back, and its rows, still in the
        table, are taken again when the lane looks back from its start (BatchWorker.capture)."""
        try:
            result = self.batches.publish(captured)
            self.lock_waits.succeeded()
            return result
        except psycopg.errors.LockNotAvailable as error:
            self.lock_waits.failed(captured.conn, error)
            return BatchResult()
        finally:
            idle.append(captured.conn)

    def _deadline(self) -> float:
        return self._started + self.settings.max_run_time.total_seconds()

    def _stopping(self) -> bool:
        """SIGTERM arrived or the run time is up."""
        return self.interrupts.requested.is_set() or time.monotonic() >= self._deadline()

    def _refresh_settings(self) -> None:
        """Between batches, at most every tuning.settings_reread_seconds: read the resource again and apply its
        live fields (batch size, pause, replication lag, run time, timeouts), so that a run of hours can be
        slowed down or cut short with `kubectl patch`. Other changes wait for the next run. A spec that no
        longer parses, or an API server that does not answer, leaves the settings as they are."""
        if self._reread_spec is None or time.monotonic() - self._settings_read_at < self.tuning.settings_reread_seconds:
            return
        if not self._settings_lock.acquire(blocking=False):
            return  # another lane is at it
        try:
            self._settings_read_at = time.monotonic()
            try:
                changed = parse_archive_spec(self._reread_spec())
            except InvalidSpec as exc:
                self._notice("the spec was changed into an invalid one; this run keeps its settings", str(exc))
                return
            except CellarError as exc:
                self._notice("could not read the spec again; this run keeps its settings", str(exc))
                return
            updated, applied, later = live_changes(self.settings, changed)
            if applied:
                self.standbys.limit = updated.max_replication_lag
                self.batches.live.apply(updated)
                log.info("settings changed; the next batches use them", extra={"changed": applied})
            if later:
                self._notice("the spec changed; these fields take effect at the next run", ", ".join(later))
        finally:
            self._settings_lock.release()

    def _notice(self, message: str, detail: str) -> None:
        """A warning about the spec, logged once until it changes (the spec is read every few seconds)."""
        if detail != self._last_settings_notice:
            self._last_settings_notice = detail
            log.warning(message, extra={"detail": detail})

    def _pause(self, stopping: Callable[[], bool]) -> None:
        """spec.batch.pause between batches, in short sleeps, ended early once `stopping()` is true."""
        end = time.monotonic() + self.settings.pause.total_seconds()
        while not stopping() and time.monotonic() < end:
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))
