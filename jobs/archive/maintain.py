"""`cellar-archive maintain`: an Iceberg archive's table kept healthy. Small files compacted (iceberg_compaction),
old snapshots expired and files nothing references deleted (iceberg_cleanup), in that order; the archive runs do
the same at their end unless spec.iceberg.maintenance.enabled is false.

One at a time per table: maintenance holds the table's archive lock (the advisory lock an archive run holds), so
a maintenance run beside an archive run of the same table waits for it, and an archive run that finds maintenance
holding the lock waits for that (instead of stepping aside, as it does for another archive run).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from common.conditions import format_time
from common.errors import CellarError, InvalidSpec, RetryableError, UsageError
from common.kube import TABLE_ARCHIVE
from common.reasons import Reason
from common.run_status import RunStatus
from common.runtime import RunContext
from common.spec import parse_duration
from common.storage import ObjectStore
from jobs.archive.iceberg import IcebergTable
from jobs.archive.iceberg_batches import recorded_batches
from jobs.archive.iceberg_cleanup import Cleaned, CleanupScope, clean
from jobs.archive.iceberg_compaction import Compacted, compact
from jobs.archive.ledger_schema import ensure_ledger
from jobs.archive.opening import open_table
from jobs.archive.settings import DEFAULT_TUNING, Tuning
from jobs.archive.statements import lock_id, try_lock
from jobs.archive.status import MAINTAIN_RUNS, MaintenanceRecord
from jobs.archive.table import Connection, TableInfo

log = logging.getLogger(__name__)

APPLICATION = "cellar-archive-maintain"  # what a maintenance run's sessions say they are: archive runs wait for it
LOCK_POLL_SECONDS = 1.0
DEFAULT_WAIT = "1h"


@dataclass(frozen=True)
class MaintenanceScope:
    """What a maintenance needs: the table, the store of its files, the ledger's connection (the table's archive
    lock held on it) and the run's id (in each compaction snapshot's summary)."""

    iceberg: IcebergTable
    store: ObjectStore
    conn: Connection
    run_id: str


@dataclass(frozen=True)
class Maintained:
    compacted: Compacted
    cleaned: Cleaned
    seconds: float

    def message(self, identifier: str) -> str:
        c, d = self.compacted, self.cleaned
        return (
            f"Iceberg table {identifier} maintained in {self.seconds:.1f}s: {c.files_rewritten} small files of "
            f"{c.partitions} partitions rewritten into {c.files_written}, {d.snapshots_expired} snapshots expired, "
            f"{d.files_deleted} unreferenced files deleted"
            + (f"; {d.kept_unrecorded} old snapshots kept for the ledger" if d.kept_unrecorded else "")
            + (f"; {d.files_kept_young} unreferenced files kept for the grace period" if d.files_kept_young else "")
            + (f"; {d.files_locked} held by an object lock" if d.files_locked else "")
            + (f"; {len(c.skipped)} partitions another writer changed, left for the next run" if c.skipped else "")
        )

    def record(self, identifier: str) -> MaintenanceRecord:
        c, d = self.compacted, self.cleaned
        return MaintenanceRecord(
            format_time(datetime.now(UTC)),
            c.files_rewritten,
            c.files_written,
            d.snapshots_expired,
            d.files_deleted,
            self.message(identifier),
        )


def maintain_table(scope: MaintenanceScope) -> Maintained:
    """Compact, then expire and delete what nothing references (compaction's old files go once the snapshots that
    reference them expire). The table's archive lock must be held."""
    started = time.monotonic()
    iceberg = scope.iceberg
    settings = iceberg.iceberg.maintenance
    compacted = compact(iceberg, scope.run_id)
    recorded = recorded_batches(scope.conn, iceberg.relation)
    cleanup = CleanupScope(
        iceberg, scope.store, recorded, datetime.now(UTC), settings.snapshot_retention, settings.orphan_grace
    )
    cleaned = clean(cleanup)
    done = Maintained(compacted, cleaned, time.monotonic() - started)
    log.info(
        "Iceberg maintenance summary",
        extra={
            "table": iceberg.iceberg.identifier,
            "partitions": compacted.partitions,
            "files_rewritten": compacted.files_rewritten,
            "files_written": compacted.files_written,
            "rows_rewritten": compacted.rows,
            "snapshots_expired": cleaned.snapshots_expired,
            "kept_unrecorded": cleaned.kept_unrecorded,
            "files_deleted": cleaned.files_deleted,
            "files_kept_young": cleaned.files_kept_young,
            "seconds": round(done.seconds, 3),
        },
    )
    return done


def maintenance_holds_lock(conn: Connection, info: TableInfo) -> bool:
    """Whether the table's archive lock is held by a maintenance run (an archive run waits for it)."""
    key = lock_id(info) & 0xFFFFFFFFFFFFFFFF
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = "
        "'advisory' AND l.granted AND l.classid::bigint = %s AND l.objid::bigint = %s AND l.objsubid = 1 "
        "AND a.application_name = %s)",
        (key >> 32, key & 0xFFFFFFFF, APPLICATION),
    ).fetchone()
    conn.rollback()
    return bool(row and row[0])


def wait_for_lock(conn: Connection, info: TableInfo, wait: timedelta, holder: str) -> None:
    """Take the table's archive lock, waiting up to `wait` while `holder` (what holds it, for the log) has it."""
    deadline = time.monotonic() + wait.total_seconds()
    logged = False
    while not try_lock(conn, info):
        if time.monotonic() >= deadline:
            raise RetryableError(
                f"{holder} held the table's archive lock for longer than {wait}; nothing was changed, and the "
                "next run tries again",
                reason=Reason.LOCK_TIMEOUT,
            )
        if not logged:
            log.info("waiting for the table's archive lock", extra={"holder": holder, "wait": wait.total_seconds()})
            logged = True
        time.sleep(LOCK_POLL_SECONDS)


class MaintainJob:
    name = "maintain"
    kind = TABLE_ARCHIVE
    application_name = APPLICATION
    description = (
        "Keep an Iceberg archive's table healthy: small data files compacted, old snapshots expired, files no "
        "snapshot references deleted."
    )

    def __init__(self, tuning: Tuning = DEFAULT_TUNING) -> None:
        self.tuning = tuning

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--wait",
            default=DEFAULT_WAIT,
            help=f"how long to wait for an archive run of the table to end (default {DEFAULT_WAIT})",
        )

    def run(self, ctx: RunContext, args: argparse.Namespace) -> str:
        try:
            wait = parse_duration(args.wait, "--wait")
        except CellarError as exc:
            raise UsageError(str(exc)) from None
        opened = open_table(ctx, self.tuning)
        settings, conn, info = opened.settings, opened.conn, opened.info
        with conn, opened.owning:
            if settings.iceberg is None or opened.iceberg_access is None:
                raise InvalidSpec(
                    f"spec.format: {settings.format}: maintain compacts Iceberg tables only; a folder of Parquet "
                    "files is not compacted in place (a reader listing it mid-merge would see rows twice). "
                    "docs/guide.md (Maintain an Iceberg archive) says how to move an archive into an Iceberg table"
                )
            if ctx.dry_run:
                return f"dry run: would maintain the Iceberg table {settings.iceberg.identifier}"
            wait_for_lock(conn, info, wait, "an archive run")
            ensure_ledger(conn)
            iceberg = IcebergTable.open(settings, info, opened.iceberg_access, create=False)
            done = maintain_table(MaintenanceScope(iceberg, opened.store, conn, ctx.run_id))
        message = done.message(settings.iceberg.identifier)
        RunStatus.of(ctx, MAINTAIN_RUNS).succeeded(Reason.MAINTAINED, message, done.record(settings.iceberg.identifier))
        return message

    def record_failure(self, ctx: RunContext, error: CellarError) -> None:
        RunStatus.of(ctx, MAINTAIN_RUNS).failed(error)


def take_archive_lock(conn: Connection, info: TableInfo, wait: timedelta) -> bool:
    """An archive run's lock of the table: taken at once, or after waiting up to `wait` for a maintenance run that
    holds it. False where another archive run holds it (the run steps aside)."""
    if try_lock(conn, info):
        return True
    if not maintenance_holds_lock(conn, info):
        return try_lock(conn, info)  # the holder may have just ended
    wait_for_lock(conn, info, wait, "a maintenance run")
    return True


def maintain_after_run(ctx: RunContext, scope: MaintenanceScope) -> Maintained | str:
    """The end of an archive run: maintenance with the run's lock held. Its failure does not fail the run (the
    batches are committed): a Warning Event and the reason, returned for the run's message."""
    try:
        return maintain_table(scope)
    except CellarError as exc:
        log.warning("Iceberg maintenance failed; the archive run's batches stand", extra={"error": str(exc)})
        ctx.event(exc.reason, f"maintenance failed: {exc}", action="Maintain", warning=True)
        return f"maintenance failed ({exc.reason}): {exc}"
