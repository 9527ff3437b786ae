"""Batches whose lock wait outlived spec.lockTimeout: rolled back, named, and tried again.

A lock timeout means another session held a lock a batch needed (an application's long transaction on the
table, a migration, a DDL statement queued behind one). The batch rolled back, so nothing moved; the run
names who held the lock, waits a little longer each time, and tries again. Only when batch after batch
times out does the run give up, with the retryable reason LockTimeout: the Job's next attempt carries on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg

from common.db import backoff_seconds, lock_holders
from common.errors import RetryableError
from common.reasons import Reason
from jobs.archive.table import Connection

log = logging.getLogger(__name__)

# What a batch locks besides the source table: the ledger it writes, the holds it reads, the partitions' states.
CELLAR_TABLES = ("cellar.archive_ledger", "cellar.archive_holds", "cellar.archive_partitions")


class LockWaits:
    """Counts the batches in a row that timed out waiting for a lock, shared by a run's lanes."""

    def __init__(self, relation: str, attempts: int, lock_timeout: float, stopping: Callable[[], bool]) -> None:
        self.relations = [relation, *CELLAR_TABLES]
        self.attempts = attempts
        self.lock_timeout = lock_timeout
        self.stopping = stopping
        self.total = 0  # every batch that timed out in this run, for the run's summary
        self._in_a_row = 0
        self._lock = threading.Lock()

    def succeeded(self) -> None:
        with self._lock:
            self._in_a_row = 0

    def failed(self, conn: Connection, error: psycopg.errors.LockNotAvailable) -> None:
        """A batch on `conn` (rolled back, idle again) timed out waiting for a lock: name who held it, then wait
        before the next batch, or raise LockTimeout when `attempts` batches in a row have timed out."""
        holders = holders_of(conn, self.relations)
        with self._lock:
            self._in_a_row += 1
            self.total += 1
            in_a_row = self._in_a_row
        if in_a_row >= self.attempts:
            raise lock_timeout(
                f"{in_a_row} batches in a row waited longer than spec.lockTimeout ({self.lock_timeout:g}s) for a lock "
                f"on {self.relations[0]} or cellar's ledger and were rolled back",
                holders,
            ) from error
        pause = backoff_seconds(in_a_row, cap=10.0)
        log.warning(
            "a batch waited longer than lockTimeout for a lock; it was rolled back and is tried again",
            extra={"attempt": in_a_row, "of": self.attempts, "held_by": holders, "retry_in_seconds": round(pause, 1)},
        )
        end = time.monotonic() + pause
        while not self.stopping() and time.monotonic() < end:
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))


def holders_of(conn: Connection, relations: list[str]) -> list[str]:
    """Who holds a lock on `relations` that a writer waits behind (common.db.lock_holders), after rolling `conn`
    back; naming them is a courtesy, so a failure to list them is said instead."""
    try:
        conn.rollback()
        return lock_holders(conn, relations)
    except psycopg.Error as exc:
        return [f"(could not be listed: {' '.join(str(exc).split())})"]


def lock_timeout(what: str, holders: list[str]) -> RetryableError:
    named = "; ".join(holders) or "a session that has let go since"
    return RetryableError(
        f"{what}; held by {named}. End or shorten that session's transaction, or raise spec.lockTimeout; the "
        "Job's next attempt carries on",
        reason=Reason.LOCK_TIMEOUT,
    )
