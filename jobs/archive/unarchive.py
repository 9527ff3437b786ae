"""Bringing archived rows back: verify each object, stage it, INSERT ... ON CONFLICT DO NOTHING.

The manifests in storage are the source of truth (the ledger may be gone with its database): they
carry every column's PostgreSQL type, so each value is cast back exactly. Rows brought back into the
source table are put on hold (cellar.archive_holds) so the next run does not archive them again.
"""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime

from common.conditions import format_time
from common.encryption import Identities
from common.errors import CellarError, DecryptionFailed, UsageError
from common.failpoints import failpoint
from common.kube import TABLE_ARCHIVE
from common.reasons import Reason
from common.run_status import RunStatus
from common.runtime import RunContext
from common.storage import ObjectStore
from jobs.archive.ledger_schema import ensure_ledger
from jobs.archive.loading import LoadedPiece, LoadProgress, UnarchiveRequest, UnarchiveResult, load_rows, prepare_target
from jobs.archive.manifest import ArchivedObject, BatchManifest
from jobs.archive.objects import ObjectLayout, read_verified
from jobs.archive.opening import APPLICATION, open_table
from jobs.archive.repartition import Repartitioner
from jobs.archive.settings import DEFAULT_TUNING, ArchiveSettings, Tuning
from jobs.archive.standbys import StandbyGate, check_lag_visible
from jobs.archive.status import UNARCHIVE_RUNS, UnarchiveRecord
from jobs.archive.table import Column, TableInfo

log = logging.getLogger(__name__)


def objects_in_range(
    store: ObjectStore, settings: ArchiveSettings, start: datetime, end: datetime
) -> list[tuple[BatchManifest, ArchivedObject]]:
    """(batch manifest, object) for every archived object whose rows may fall in [start, end)."""
    layout = ObjectLayout(store, settings)
    chosen = []
    for listed in store.list_objects(layout.manifest_prefix):
        manifest = BatchManifest.read(store.get_bytes(listed.key), listed.key)
        chosen += [(manifest, described) for described in manifest.objects if described.spans(start, end)]
    return sorted(chosen, key=lambda item: (item[1].time_span[0], item[1].object_key))


def unarchive(request: UnarchiveRequest, store: ObjectStore, identities: Identities | None = None) -> UnarchiveResult:
    """Load the request's rows back from the archive's Parquet (or CSV) objects; idempotent, one transaction per
    object, each verified against its manifest. `identities` decrypt encrypted objects."""
    settings, conn = request.settings, request.conn
    chosen = objects_in_range(store, settings, request.start, request.end)
    encrypted = [d.object_key for m, d in chosen if m.encryption]
    if encrypted and identities is None:  # before anything is written, the side table included
        raise DecryptionFailed(
            f"{len(encrypted)} of the {len(chosen)} archived objects in range are encrypted (the first: "
            f"{encrypted[0]}); name the Secret holding an identity of their recipients in "
            "spec.encryption.identitySecretRef"
        )
    repartition = None
    if request.into == "source":  # the spans of timestamps about to be loaded
        spans = [(max(d.time_span[0], request.start), min(d.time_span[1], request.end)) for _, d in chosen]
        repartition = Repartitioner.plan(conn, settings, request.info, spans)
    target = prepare_target(request, repartition)
    result = UnarchiveResult()
    progress = LoadProgress(
        len(chosen), sum(d.rows for _, d in chosen), sum(d.bytes for _, d in chosen), request.progress_seconds
    )
    left_out: set[str] = set()
    for manifest, described in chosen:
        request.wait_for_standbys()
        key = described.object_key
        decoded, columns = _manifest_columns(manifest, key, request.info)
        dropped = {c.name for c in decoded if c not in columns} - left_out
        if dropped:  # once per column, not per object
            log.warning("archived columns no longer in the table are left out", extra={"columns": sorted(dropped)})
            left_out |= dropped
        table = read_verified(store, manifest, described, decoded, identities)
        inserted, in_range = load_rows(request, target, LoadedPiece(key, described.rows), columns, table)
        conn.execute("UPDATE cellar.archive_ledger SET restored_at = now() WHERE object_key = %s", (key,))
        failpoint("archive.unarchive-before-commit")
        conn.commit()
        result.add(table.num_rows, inserted, in_range)
        progress.loaded(table.num_rows, described.bytes, inserted)
    progress.summary(request.target_name)
    return result


def _manifest_columns(manifest: BatchManifest, key: str, info: TableInfo) -> tuple[list[Column], list[Column]]:
    """The object's columns as its manifest recorded them (to decode it), and those the table still has (to load:
    each cast back to its archived type, then into the table's, which may have widened since). A column added to
    the table since is in neither: its default fills it. One dropped since is decoded and left out."""
    by_name = {c.name: c for c in info.columns}
    decoded, loaded = [], []
    for described in manifest.columns:
        column = by_name.get(described.name)
        if column is None:
            decoded.append(Column(described.name, described.type, described.type, False, None, None))
            continue
        archived = Column(
            column.name,
            described.type,
            column.base,
            column.is_array,
            column.numeric_precision,
            column.numeric_scale,
            column.generated,
            fields=column.fields,
        )
        decoded.append(archived)
        loaded.append(archived)
    return decoded, loaded


def _date(text: str, flag: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not a date or time (ISO 8601, for example 2024-01-31)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class UnarchiveJob:
    name = "unarchive"
    kind = TABLE_ARCHIVE
    application_name = APPLICATION
    description = (
        "Load archived rows of a TableArchive back (start <= timestamp < end), verifying every object; idempotent."
    )

    def __init__(self, tuning: Tuning = DEFAULT_TUNING) -> None:
        self.tuning = tuning

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--from", dest="start", required=True, help="first timestamp to bring back (ISO 8601)")
        parser.add_argument("--to", dest="end", required=True, help="bring back rows older than this (ISO 8601)")
        parser.add_argument(
            "--into",
            choices=["side", "source"],
            default="side",
            help="side: a table <table>_unarchived beside the source (default); source: the table "
            "itself (those rows are then not archived again)",
        )
        parser.add_argument("--side-table", help="name of the side table (default <table>_unarchived)")
        parser.add_argument(
            "--allow-rearchive",
            action="store_true",
            help="with --into source: let the next run archive the restored rows again",
        )

    def run(self, ctx: RunContext, args: argparse.Namespace) -> str:
        start, end = _date(args.start, "--from"), _date(args.end, "--to")
        if end <= start:
            raise UsageError("--to must be after --from")
        opened = open_table(ctx, self.tuning, writes_to_store=False)
        settings, conn, store, info = opened.settings, opened.conn, opened.store, opened.info
        with conn, opened.owning:
            if ctx.dry_run:
                return f"dry run: would bring back {settings.relation} rows from {args.start} to {args.end}"
            check_lag_visible(conn, settings.max_replication_lag)
            ensure_ledger(conn)
            standbys = StandbyGate(settings.max_replication_lag)
            request = UnarchiveRequest(
                conn,
                settings,
                info,
                start,
                end,
                args.into,
                args.side_table,
                not args.allow_rearchive,
                standbys,
                progress_seconds=self.tuning.progress_log_seconds,
            )
            if opened.open_iceberg is not None:
                from jobs.archive.iceberg_unarchive import unarchive_iceberg

                result = unarchive_iceberg(request, opened.open_iceberg(info))
            else:
                result = unarchive(request, store, opened.identities)
        message = (
            f"{result.rows_inserted} rows brought back into {request.target_name} from {result.objects} verified "
            f"objects ({result.rows_in_range} in range, "
            f"{result.rows_in_range - result.rows_inserted} already there)" + standbys.waited_note()
        )
        record = UnarchiveRecord(
            format_time(datetime.now(UTC)),
            args.start,
            args.end,
            args.into,
            result.objects,
            result.rows_inserted,
            message,
        )
        RunStatus.of(ctx, UNARCHIVE_RUNS).succeeded(Reason.UNARCHIVED, message, record)
        return message

    def record_failure(self, ctx: RunContext, error: CellarError) -> None:
        RunStatus.of(ctx, UNARCHIVE_RUNS).failed(error)
