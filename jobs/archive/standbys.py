"""Holding batches back while a standby falls behind (spec.batch.maxReplicationLag).

Every batch deletes rows, and every deleted row is WAL that each standby must replay. A run that moves
millions of rows can leave a standby minutes behind, and with it the reads served there and the data a
failover would lose. Like pt-archiver's --max-lag, a batch starts only once every standby streaming
from this server replays within the limit; the run waits (SIGTERM and maxRunTime still end it).

The lag is what the server itself measures (pg_stat_replication.replay_lag, PostgreSQL 10 and later),
with one correction: after WAL traffic stops, replay_lag keeps its last value for a while, so a standby
that has replayed everything written so far (replay_lsn at the current WAL position) counts as not
behind. Standbys that are not connected are not seen; a replication slot keeps their WAL instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import psycopg

from common.errors import InsufficientPrivilege

log = logging.getLogger(__name__)
Connection = psycopg.Connection[tuple[object, ...]]

POLL_SECONDS = 1.0  # how often a held batch looks again
REPORT_EVERY_SECONDS = 30.0  # a "still waiting" log line while batches are held

LAG_QUERY = """
SELECT coalesce(nullif(application_name, ''), host(client_addr), 'pid ' || pid),
       CASE WHEN replay_lsn >= pg_current_wal_lsn() THEN 0
            ELSE coalesce(extract(epoch FROM replay_lag)::float8, 0) END
FROM pg_stat_replication
ORDER BY 2 DESC
LIMIT 1
"""


@dataclass(frozen=True)
class StandbyLag:
    standby: str
    seconds: float


def check_lag_visible(conn: Connection, limit: timedelta | None) -> None:
    """With a limit set, refuse before any work when the role cannot see the standbys' lag.

    pg_stat_replication shows a role without pg_read_all_stats (in pg_monitor) every column but the
    process as NULL: the run would see no lag at all and never wait.
    """
    if limit is None:
        return
    row = conn.execute("SELECT current_user, pg_has_role('pg_read_all_stats', 'USAGE')").fetchone()
    conn.rollback()
    assert row is not None
    user, visible = row
    if not visible:
        raise InsufficientPrivilege(
            f"spec.batch.maxReplicationLag is set, but role {user} cannot read the standbys' lag in "
            f"pg_stat_replication: GRANT pg_monitor TO {user}, or remove maxReplicationLag"
        )


def worst_lag(conn: Connection) -> StandbyLag | None:
    """The standby furthest behind, or None when none is streaming from this server."""
    row = conn.execute(LAG_QUERY).fetchone()
    conn.rollback()  # no transaction (and no snapshot) stays open while batches wait
    if row is None:
        return None
    return StandbyLag(str(row[0]), float(str(row[1])))


class StandbyGate:
    """Lets a batch start only while every standby is within the limit; shared by the run's lanes.

    `held_seconds` is the time during which at least one batch was waiting (lanes wait side by side).
    `on_hold(message)` is told when batches start waiting (what for) and when they resume (None).
    """

    def __init__(self, limit: timedelta | None, on_hold: Callable[[str | None], None] = lambda _: None) -> None:
        self.limit = limit
        self.on_hold = on_hold
        self.held_seconds = 0.0
        self._lock = threading.Lock()
        self._waiting = 0
        self._held_since = 0.0
        self._reported = 0.0

    def waited_note(self) -> str:
        """For a run's or an unarchive's closing message: how long batches waited, when they did."""
        if self.held_seconds < 1:
            return ""
        return f"; waited {self.held_seconds:.0f}s for standbys over maxReplicationLag"

    def wait(self, conn: Connection, stopping: Callable[[], bool]) -> bool:
        """True when the batch may start; False when `stopping` turned true while it waited."""
        if self.limit is None:
            return True
        limit = self.limit.total_seconds()
        lag = worst_lag(conn)
        if lag is None or lag.seconds <= limit:
            return True
        self._enter(lag, limit)
        resumed = False
        try:
            while not stopping():
                time.sleep(POLL_SECONDS)
                lag = worst_lag(conn)
                if lag is None or lag.seconds <= limit:
                    resumed = True
                    break
                self._report(lag, limit)
        finally:
            self._leave(resumed)
        return resumed

    def _enter(self, lag: StandbyLag, limit: float) -> None:
        with self._lock:
            self._waiting += 1
            if self._waiting > 1:
                return
            self._held_since = self._reported = time.monotonic()
        log.warning(
            "a standby is behind; batches wait for it",
            extra={"standby": lag.standby, "lag_seconds": round(lag.seconds, 1), "limit_seconds": limit},
        )
        self.on_hold(
            f"waiting for standby {lag.standby}: it replays {lag.seconds:.0f}s behind, more than "
            f"spec.batch.maxReplicationLag ({limit:g}s)"
        )

    def _report(self, lag: StandbyLag, limit: float) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._reported < REPORT_EVERY_SECONDS:
                return
            self._reported = now
            waited = now - self._held_since
        log.info(
            "still waiting for a standby",
            extra={
                "standby": lag.standby,
                "lag_seconds": round(lag.seconds, 1),
                "limit_seconds": limit,
                "waited_seconds": round(waited, 1),
            },
        )

    def _leave(self, resumed: bool) -> None:
        with self._lock:
            self._waiting -= 1
            if self._waiting:
                return
            waited = time.monotonic() - self._held_since
            self.held_seconds += waited
        if resumed:
            log.info("the standbys caught up; batches resume", extra={"waited_seconds": round(waited, 1)})
            self.on_hold(None)
        else:
            log.info("the run stops while waiting for a standby", extra={"waited_seconds": round(waited, 1)})
