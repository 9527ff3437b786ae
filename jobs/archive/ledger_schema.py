"""The ledger's schema (`cellar` in the archived database): checked without locks, migrated once.

Every run needs the ledger's tables, but a fleet starts many runs on one database at once, and DDL takes
table locks: `CREATE INDEX` a SHARE lock on the ledger (which waits behind every open batch and makes every
later batch's INSERT wait behind it), `ALTER TABLE` an ACCESS EXCLUSIVE one. So a run reads the schema's
version from the schema's comment (a catalog read, no lock on cellar's tables) and does nothing more when
it is current. Only an older or missing schema is migrated, by one run at a time (an advisory lock), one
step per transaction, each step first asking the catalog whether it is done, each lock wait bounded by a
short lock timeout and tried again: a step holds at most one of cellar's tables locked, so it cannot wait
in a circle with a batch, and a batch never waits behind it for longer than that timeout. The version is
written last, so a run killed mid-migration leaves a schema the next run migrates again. The design
(docs/design.md, "The ledger's schema") lists which lock each step takes.
"""

from __future__ import annotations

import logging
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from common.db import backoff_seconds, lock_holders
from common.errors import PermanentError, RetryableError
from common.reasons import Reason
from jobs.archive.table import Connection

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
_VERSION_COMMENT = "cellar archive ledger, schema version {}"
_CURRENT = _VERSION_COMMENT.format(SCHEMA_VERSION)
_VERSION_PATTERN = re.compile(r"schema version (\d+)")
# One advisory lock for the migration, apart from the per-table archive locks (statements.lock_id).
MIGRATION_LOCK = (zlib.crc32(b"cellar.ledger-schema") << 32) - (1 << 63)
STEP_LOCK_TIMEOUT_MS = 2000

_LEDGER = """
CREATE TABLE IF NOT EXISTS cellar.archive_ledger (
    object_key   text PRIMARY KEY,
    batch_id     uuid NOT NULL,
    relation     text NOT NULL,
    manifest_key text NOT NULL,
    rows         bigint NOT NULL,
    bytes        bigint NOT NULL,
    sha256       text NOT NULL,
    min_ts       timestamptz,
    max_ts       timestamptz,
    min_key      text,
    max_key      text,
    last_row     jsonb,
    cutoff       timestamptz NOT NULL,
    mode         text NOT NULL,
    run_id       text NOT NULL,
    archived_at  timestamptz NOT NULL DEFAULT now(),
    restored_at  timestamptz
)"""
_HOLDS = """
CREATE TABLE IF NOT EXISTS cellar.archive_holds (
    relation text NOT NULL,
    key      text NOT NULL,
    PRIMARY KEY (relation, key)
);
COMMENT ON TABLE cellar.archive_holds IS
    'Rows brought back into their source table by cellar unarchive; the archiver does not archive them again'"""
_PARTITIONS = """
CREATE TABLE IF NOT EXISTS cellar.archive_partitions (
    relation   text NOT NULL,
    partition  text NOT NULL,
    state      text NOT NULL,
    run_id     text NOT NULL,
    rows       bigint,
    updated_at timestamptz NOT NULL DEFAULT now(),
    definition jsonb,
    PRIMARY KEY (relation, partition)
);
COMMENT ON TABLE cellar.archive_partitions IS
    'Partitions archived whole: detaching (a run is on it, or crashed on it), archived (dropped) or kept'"""


@dataclass(frozen=True)
class Step:
    """One migration step: `done` asks the catalog (no lock on cellar's tables); `statement` runs only if not."""

    what: str
    done: str
    statement: str
    # The version mark needs the schema's owner; a role that was given a schema made for it goes on without
    # the mark (its steps are then checked in the catalog at each start, under the advisory lock).
    needs_owner: bool = False


STEPS = (
    Step("schema cellar", "SELECT to_regnamespace('cellar') IS NOT NULL", "CREATE SCHEMA IF NOT EXISTS cellar"),
    Step("table cellar.archive_ledger", "SELECT to_regclass('cellar.archive_ledger') IS NOT NULL", _LEDGER),
    Step(
        "index cellar.archive_ledger_relation",
        "SELECT to_regclass('cellar.archive_ledger_relation') IS NOT NULL",
        "CREATE INDEX IF NOT EXISTS archive_ledger_relation ON cellar.archive_ledger (relation, max_ts)",
    ),
    Step("table cellar.archive_holds", "SELECT to_regclass('cellar.archive_holds') IS NOT NULL", _HOLDS),
    Step("table cellar.archive_partitions", "SELECT to_regclass('cellar.archive_partitions') IS NOT NULL", _PARTITIONS),
    # How to create a partition again (bound, sub-partitioning, children), for unarchive into the source;
    # a ledger made before schema version 2 lacks it.
    Step(
        "column cellar.archive_partitions.definition",
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'cellar.archive_partitions'::regclass "
        "AND attname = 'definition' AND NOT attisdropped)",
        "ALTER TABLE cellar.archive_partitions ADD COLUMN IF NOT EXISTS definition jsonb",
    ),
    Step(
        f"schema version {SCHEMA_VERSION}",
        f"SELECT obj_description(to_regnamespace('cellar'), 'pg_namespace') = '{_CURRENT}'",
        f"COMMENT ON SCHEMA cellar IS '{_CURRENT}'",
        needs_owner=True,
    ),
)


def schema_version(conn: Connection) -> int:
    """The version the ledger's schema has in this database (0: none, or made before versions were kept)."""
    row = conn.execute(
        "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = 'cellar'"
    ).fetchone()
    conn.rollback()
    found = _VERSION_PATTERN.search(str(row[0])) if row and row[0] else None
    return int(found.group(1)) if found else 0


def ensure_ledger(
    conn: Connection, *, wait_seconds: float = 120.0, stopping: Callable[[], bool] = lambda: False
) -> None:
    """Make the ledger's schema current; a current one costs one catalog read and takes no lock.

    `wait_seconds` bounds the wait for another run's migration and for the locks of this one's steps.
    """
    version = schema_version(conn)
    if version >= SCHEMA_VERSION:
        return
    deadline = time.monotonic() + wait_seconds
    _take_migration_lock(conn, deadline, stopping)
    try:
        version = schema_version(conn)  # another run may have migrated while this one waited
        if version >= SCHEMA_VERSION:
            return
        log.info("migrating the ledger's schema", extra={"from_version": version, "to_version": SCHEMA_VERSION})
        for step in STEPS:
            _run_step(conn, step, deadline, stopping)
    finally:
        conn.rollback()
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        conn.commit()


def _take_migration_lock(conn: Connection, deadline: float, stopping: Callable[[], bool]) -> None:
    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (MIGRATION_LOCK,)).fetchone()
        conn.commit()
        if row and row[0]:
            return
        if time.monotonic() >= deadline or stopping():
            raise RetryableError(
                "another run kept migrating the ledger's schema (schema cellar) for longer than this run waits; "
                "the next run tries again",
                reason=Reason.LOCK_TIMEOUT,
            )
        time.sleep(backoff_seconds(0, cap=0.5, first=0.1))


def _run_step(conn: Connection, step: Step, deadline: float, stopping: Callable[[], bool]) -> None:
    attempt = 0
    while True:
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = {STEP_LOCK_TIMEOUT_MS}")
                row = conn.execute(step.done).fetchone()
                if row and row[0]:
                    return
                conn.execute(step.statement)
            log.info("ledger schema step done", extra={"step": step.what})
            return
        except psycopg.errors.InsufficientPrivilege as exc:
            if step.needs_owner:
                log.warning("the ledger's schema version is not marked", extra={"why": exc.diag.message_primary})
                return
            raise PermanentError(
                f"the role cannot create {step.what} (the archive ledger) in this database ({exc.diag.message_primary})"
                ": GRANT CREATE ON DATABASE to it, or have the database's owner run the archive once",
                reason=Reason.INSUFFICIENT_PRIVILEGE,
            ) from None
        except psycopg.errors.LockNotAvailable:
            attempt += 1
            holders = lock_holders(conn, ["cellar.archive_ledger", "cellar.archive_partitions"])
            if time.monotonic() >= deadline or stopping():
                raise RetryableError(
                    f"migrating the ledger's schema ({step.what}) kept waiting for a lock held by "
                    f"{'; '.join(holders) or 'a session that has since let go'}; the next run tries again",
                    reason=Reason.LOCK_TIMEOUT,
                ) from None
            log.warning(
                "a ledger schema step waited too long for a lock; trying again",
                extra={"step": step.what, "attempt": attempt, "held_by": holders},
            )
            time.sleep(backoff_seconds(attempt, cap=5.0))
