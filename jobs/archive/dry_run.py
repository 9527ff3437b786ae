"""The archive's dry run: what a run would move, and the layout it would write, reported without changing anything."""

from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import Any

from common.conditions import format_time
from common.reasons import Reason
from common.run_status import RunStatus
from common.runtime import RunContext
from jobs.archive.layout import DueMeasure, choose_granularity
from jobs.archive.opening import OpenedTable
from jobs.archive.partitions import due_partitions
from jobs.archive.settings import DEFAULT_TUNING, ArchiveSettings, Tuning
from jobs.archive.statements import dry_run_report, oldest_row_time
from jobs.archive.status import ARCHIVE_RUNS
from jobs.archive.table import TableInfo

log = logging.getLogger(__name__)


def layout_advice(
    partitioning: str, rows: int, days: int, months: int, batch_rows: int, tuning: Tuning = DEFAULT_TUNING
) -> str | None:
    """Advice for a dry run when Daily partitions cut every batch into many small files, or None.

    A batch writes one file per day it holds (at most tuning.max_partitions_per_batch): where a day holds a
    quarter of a batch or less, that is four files or more per batch, each an encode, an upload and a
    write in the store, and query engines read many small files slower than a few large ones. `days` and
    `months`: how many of each hold due rows.
    """
    if partitioning != "Daily" or rows <= 0 or days <= 0 or months <= 0:
        return None
    per_day = rows / days
    if per_day * 4 > batch_rows:
        return None
    daily_files = min(math.ceil(batch_rows / per_day), days, tuning.max_partitions_per_batch)
    monthly_files = min(math.ceil(batch_rows / (rows / months)), months)
    monthly = "one or two" if monthly_files <= 1 else f"about {monthly_files}"
    return (
        f"a day holds about {round(per_day)} rows, so a batch of {batch_rows} rows writes about {daily_files} "
        f"files of one day each; with partitioning: Monthly it would write {monthly} "
        "(fewer uploads, and files that query engines read faster)"
    )


def auto_layout_note(settings: ArchiveSettings, report: dict[str, Any]) -> str:
    """What partitioning (partitionBy): Auto would choose from the rows a dry run measured, for its message."""
    iceberg = settings.iceberg
    field = "partitioning" if iceberg is None else "iceberg.partitionBy"
    if (settings.partitioning if iceberg is None else iceberg.partition_by) != "Auto" or not report["rows"]:
        return ""
    choice = choose_granularity(DueMeasure(report["rows"], report["bytes"], report["days"], report["months"]))
    return (
        f" Layout: {field}: Auto chooses {choice.partitioning if iceberg is None else choice.transform} for a new "
        f"archive ({choice.why}); an archive that exists keeps its own."
    )


def report_dry_run(
    ctx: RunContext, opened: OpenedTable, info: TableInfo, cutoff: datetime, tuning: Tuning, scan_warning: str | None
) -> str:
    """What a run would move, its whole partitions, layout advice and one batch's plan, as the run's message;
    spec.dryRun also reports it in status. Nothing is changed."""
    conn, settings = opened.conn, opened.settings
    report = dry_run_report(conn, settings, info, cutoff, tuning)
    whole = [p.name for p in due_partitions(conn, settings, info, cutoff)]
    log.info("dry run", extra={"would_move": {k: v for k, v in report.items() if k != "plan"}, "plan": report["plan"]})
    advice = layout_advice(
        settings.partitioning, report["rows"], report["days"], report["months"], settings.batch_rows, tuning
    )
    message = (
        f"dry run: {report['rows']} rows ({report['bytes']} bytes, {report['days']} days, "
        f"{report['oldest']} to {report['newest']}) of {settings.relation} are older than "
        f"{format_time(cutoff)}; nothing was changed."
        + (f" Warning: {scan_warning}" if scan_warning else "")
        + (f" Partitions archived whole (detached, read once, dropped): {', '.join(whole)}." if whole else "")
        + (f" Layout: {advice}." if advice else "")
        + auto_layout_note(settings, report)
        + f" Plan of one batch:\n{report['plan']}"
    )
    if settings.dry_run and not ctx.dry_run:  # spec.dryRun reports in status; --dry-run writes nothing
        RunStatus.of(ctx, ARCHIVE_RUNS).reported(
            Reason.DRY_RUN_COMPLETED,
            message,
            {"cutoff": format_time(cutoff), "oldestRowTime": oldest_row_time(conn, settings, info)},
        )
    return message
