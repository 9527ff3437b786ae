"""One batch: capture its rows in an open transaction, publish them as verified objects, COMMIT.

One batch is one transaction. One statement selects the batch's rows (FOR UPDATE SKIP LOCKED),
deletes exactly those and returns them; the returned rows are encoded, uploaded with a checksum and
verified, recorded in the ledger, and committed. A crash before COMMIT rolls the rows back and leaves
an object without a ledger row, which the next run removes once it has checked that its rows are all
still in the table (cleanup.py). docs/design.md has the whole argument.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import psycopg
import pyarrow as pa
from psycopg import sql

from common.encryption import encrypt_bytes
from common.errors import CommitInDoubt
from common.failpoints import failpoint
from common.storage import ObjectStore
from jobs.archive import ledger
from jobs.archive.batch_records import BatchResult, CapturedBatch, rollback_quietly
from jobs.archive.copy_reads import read_copy
from jobs.archive.encoding import csv_to_table, encode, key_range, repeating_columns
from jobs.archive.iceberg import IcebergTable
from jobs.archive.iceberg_pieces import PieceLimits, PieceWriter
from jobs.archive.lanes import Lane, aligned_batch_end, jsonable
from jobs.archive.manifest import ArchivedObject, BatchManifest
from jobs.archive.objects import (
    ObjectLayout,
    column_description,
    encryption_record,
    object_name,
    partitions,
    sort_batch,
    split_by_size,
    upload_verified,
)
from jobs.archive.settings import ArchiveSettings, LiveSettings, Tuning
from jobs.archive.statements import BatchPlan, batch_query, copy_out, sql_settings
from jobs.archive.table import Connection, TableInfo

log = logging.getLogger(__name__)


def _timestamp(text: str | None) -> datetime | None:
    if text is None:
        return None
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class RunScope:
    """What every part of one archive run works on: the run's own connection, the store, the table as it was
    described at the start, the cutoff and the run id. The settings are not here: a spec read again changes
    their live fields mid-run (LiveSettings)."""

    conn: Connection
    store: ObjectStore
    info: TableInfo
    cutoff: datetime
    run_id: str


@dataclass(frozen=True)
class Destination:
    """Where a run's batches go: objects of their own, encrypted to `recipients` (spec.encryption; none: not
    encrypted), or rows appended to the `iceberg` table (format: Iceberg)."""

    recipients: Sequence[str] = ()
    iceberg: IcebergTable | None = None


class BatchWorker:
    """Captures and publishes the batches of one run; shared by its lanes (each batch has its own
    connection). `settings` and `batch_rows` may change between batches (a spec read again)."""

    def __init__(
        self,
        scope: RunScope,
        settings: ArchiveSettings,
        tuning: Tuning,
        destination: Destination = Destination(),
    ) -> None:
        recipients, iceberg = destination.recipients, destination.iceberg
        conn, store, info, cutoff, run_id = scope.conn, scope.store, scope.info, scope.cutoff, scope.run_id
        self.store = store
        self.recipients = list(recipients)
        self.iceberg = iceberg
        self.live = LiveSettings(settings)
        self.info = info
        self.cutoff = cutoff
        self.run_id = run_id
        self.tuning = tuning
        self.layout = ObjectLayout(store, settings)
        self.watermark = ledger.copy_watermark(conn, settings.relation) if settings.mode == "Copy" else None
        conn.rollback()
        # A batch's objects (one per partition) upload side by side while its transaction is open.
        self._uploads = ThreadPoolExecutor(max_workers=tuning.upload_concurrency, thread_name_prefix="archive-upload")
        self._pieces_written = PieceWriter(iceberg, settings.parallelism) if iceberg is not None else None

    @property
    def settings(self) -> ArchiveSettings:
        """The run's settings as they are now (a spec read again may change them between batches)."""
        return self.live.settings

    @property
    def batch_rows(self) -> int:
        return self.live.batch_rows

    def close(self) -> None:
        self._uploads.shutdown(wait=True)
        if self._pieces_written is not None:
            self._pieces_written.close()

    def capture(self, conn: Connection, lane: Lane) -> CapturedBatch | None:
        """Open a transaction and delete (Copy mode: read) the lane's next batch; None when none are due.

        When nothing is due after the lane's `resume_from`, one more statement looks from the lane's
        start: it takes the rows that applications held locked when the lane passed them.
        """
        while True:
            captured = self._capture_once(conn, lane)
            if captured is not None:
                return captured
            if lane.until is not None:  # nothing due before the partition boundary (a gap): look past it
                lane.until = None
                continue
            if lane.resume_from is None:
                return None
            lane.resume_from = None

    def _capture_once(self, conn: Connection, lane: Lane) -> CapturedBatch | None:
        settings, batch_rows = self.live.snapshot()  # one batch, one version of the settings
        plan = BatchPlan(settings, self.info, self.cutoff, self.tuning)
        began, batch_id = time.monotonic(), str(uuid.uuid4())
        try:
            sql_settings(conn, settings, self.info)
            if self._pieces_written is None:
                with (
                    conn.cursor() as cursor,
                    cursor.copy(copy_out(batch_query(plan, batch_rows, self.watermark, lane))) as copy,
                ):
                    data = read_copy(conn, copy)
                table = sort_batch(csv_to_table(data, self.info.columns), self.info)
                stamps = table.column(self.info.timestamp_column.name)
                captured = CapturedBatch(conn, batch_id, began, table)
                rows, raw_bytes = table.num_rows, len(data)
                first, last = (stamps[0].as_py(), stamps[-1].as_py()) if rows else (None, None)
            else:  # an Iceberg batch: deleted and written as data files piece by piece (iceberg_pieces.py)

                def piece(resume_from: object, rows: int) -> sql.Composed:
                    from_there = replace(lane, resume_from=resume_from) if resume_from is not None else lane
                    return copy_out(batch_query(plan, rows, self.watermark, from_there))

                limits = PieceLimits(self.tuning.iceberg_piece_rows, self.tuning.iceberg_piece_bytes)
                written, raw_bytes = self._pieces_written.capture(conn, piece, batch_rows, limits, batch_id)
                captured = CapturedBatch(conn, batch_id, began, None, written)
                rows, first, last = written.summary.rows, written.summary.min_ts, written.summary.max_ts
            if rows == 0:
                conn.rollback()
                return None
            self.live.shrink_for(raw_bytes)
            if settings.mode == "Move":
                lane.resume_from = last
                lane.until = aligned_batch_end(first, last, rows, batch_rows, settings.partitioning)
            return captured
        except BaseException:
            rollback_quietly(conn)
            raise

    def publish(self, captured: CapturedBatch) -> BatchResult:
        """Encode, upload and verify the batch's objects, record them in the ledger, COMMIT."""
        if self.iceberg is not None:
            from jobs.archive.iceberg_batches import publish_to_iceberg

            return publish_to_iceberg(self.iceberg, captured, self.settings, self.cutoff, self.run_id)
        conn, batch_id = captured.conn, captured.batch_id
        entries: list[ledger.LedgerEntry] = []
        try:
            rows = captured.rows
            result = BatchResult(rows=rows.num_rows)
            # Which columns repeat is judged once per batch, not once per object (a day of a Daily batch).
            dictionary = repeating_columns(rows) if self.settings.format == "Parquet" else []
            entries = self._publish_batch(batch_id, self._pieces(rows), dictionary)
            result.bytes = sum(e.bytes for e in entries)
            result.objects = len(entries)
            ledger.record(
                conn,
                entries,
                relation=self.settings.relation,
                cutoff=self.cutoff,
                mode=self.settings.mode,
                run_id=self.run_id,
            )
            failpoint("archive.before-commit")
        except BaseException as error:
            rollback_quietly(conn)
            if isinstance(error, psycopg.errors.LockNotAvailable):  # the run takes these rows again: no copies
                self._discard(batch_id, entries)
            raise
        try:
            conn.commit()
        except psycopg.OperationalError as exc:
            # The outcome of a COMMIT whose connection died is unknown here; the ledger knows.
            raise CommitInDoubt(batch_id, str(exc)) from exc
        result.transaction_seconds = time.monotonic() - captured.began
        if self.settings.mode == "Copy":
            self.watermark = json.loads(entries[-1].last_row or "null")
        log.info(
            "batch committed",
            extra={
                "batch_id": batch_id,
                "rows": result.rows,
                "bytes": result.bytes,
                "objects": result.objects,
                "transaction_seconds": round(result.transaction_seconds, 4),
            },
        )
        return result

    def _discard(self, batch_id: str, entries: list[ledger.LedgerEntry]) -> None:
        """The objects and manifest of a batch that rolled back before its COMMIT was sent (so no ledger row can
        name them); one that is left (the store failing too) is a leftover the next run's clean-up removes."""
        for key in [entry.object_key for entry in entries] + [self.layout.manifest_key(batch_id)]:
            try:
                self.store.delete_leftover(key)
            except Exception as exc:  # noqa: BLE001 (the rollback stands; clean_leftovers takes what is left)
                log.warning("could not delete a rolled-back batch's object", extra={"key": key, "error": str(exc)})

    def publish_rows(self, batch_id: str, table: pa.Table) -> tuple[list[ledger.LedgerEntry], int]:
        """Encode, upload and verify `table`'s objects and write their manifest, in the caller's transaction
        (a whole partition's day: partitions.py records them and commits): their ledger entries and how many data
        files hold the rows. (Whole partitions into an Iceberg table go through iceberg_partitions.py.)"""
        dictionary = repeating_columns(table) if self.settings.format == "Parquet" else []
        entries = self._publish_batch(batch_id, self._pieces(table), dictionary)
        return entries, len(entries)

    def _pieces(self, table: pa.Table) -> list[tuple[str | None, pa.Table]]:
        pieces: list[tuple[str | None, pa.Table]] = []
        for partition, part in partitions(table, self.settings, self.info):
            pieces.extend((partition, piece) for piece in split_by_size(part, self.settings.batch_max_bytes))
        return pieces

    def _publish_batch(
        self, batch_id: str, pieces: list[tuple[str | None, pa.Table]], dictionary: list[str]
    ) -> list[ledger.LedgerEntry]:
        """Encode and upload the pieces side by side (each verified), then write the batch's manifest."""
        manifest_key = self.layout.manifest_key(batch_id)
        # pyarrow and hashlib release the GIL, so encoding on the upload threads uses every core.
        published = [
            self._uploads.submit(self._encode_and_upload, batch_id, number, partition, part, manifest_key, dictionary)
            for number, (partition, part) in enumerate(pieces)
        ]
        objects = [future.result() for future in published]  # the first failure fails the batch (rollback)
        manifest = BatchManifest(
            batch_id=batch_id,
            schema=self.settings.schema,
            table=self.settings.table,
            format=self.settings.format,
            timestamp_column=self.info.timestamp_column.name,
            primary_key=list(self.info.primary_key),
            cutoff=self.cutoff.isoformat(),
            run_id=self.run_id,
            mode=self.settings.mode,
            columns=[column_description(c) for c in self.info.columns],
            server_version=self.info.server_version,
            objects=[description for _, description in objects],
            created_at=datetime.now(UTC).isoformat(),
            encryption=encryption_record(self.recipients) if self.recipients else None,
        )
        self.store.put_bytes(manifest_key, manifest.to_bytes())
        return [entry for entry, _ in objects]

    def _encode_and_upload(
        self,
        batch_id: str,
        number: int,
        partition: str | None,
        table: pa.Table,
        manifest_key: str,
        dictionary: list[str],
    ) -> tuple[ledger.LedgerEntry, ArchivedObject]:
        """One object: encode the rows (sorted by timestamp and key), upload and verify it."""
        key = self.layout.data_key(partition, object_name(batch_id, number))
        body = encode(table, self.settings.format, dictionary)
        if self.recipients:
            body = encrypt_bytes(body, self.recipients)
        digest = hashlib.sha256(body).hexdigest()  # of the stored bytes, checkable without the key
        failpoint("archive.upload")
        upload_verified(self.store, key, body, digest)
        ts_name = self.info.timestamp_column.name
        low, high = key_range(table, ts_name)
        min_key, max_key = key_range(table, self.info.primary_key[0])
        last = table.slice(table.num_rows - 1, 1).to_pylist()[0]
        last_row = json.dumps(
            {"ts": jsonable(last[ts_name]), "key": [jsonable(last[k]) for k in self.info.primary_key]}
        )
        description = ArchivedObject(key, partition, table.num_rows, len(body), digest, low, high, min_key, max_key)
        entry = ledger.LedgerEntry(
            object_key=key,
            batch_id=batch_id,
            manifest_key=manifest_key,
            rows=table.num_rows,
            bytes=len(body),
            sha256=digest,
            min_ts=_timestamp(low),
            max_ts=_timestamp(high),
            min_key=min_key,
            max_key=max_key,
            last_row=last_row,
        )
        return entry, description
