"""The batch loop, shaped by the guarantee in shared/reference/archiver.md.

One batch is one transaction: capture and delete the rows in one statement (by primary key,
FOR UPDATE SKIP LOCKED), encode exactly the returned rows, upload each object with a checksum and
verify it, record it in the ledger, COMMIT. A crash before COMMIT rolls the rows back and leaves an
object without a ledger row, which the next run deletes once it has checked that its rows are all
still in the table. Every row is always in the table, or in a verified object a committed ledger row
describes, or both; never in neither.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from botocore.exceptions import BotoCoreError, ClientError
from psycopg import sql

from common.errors import PermanentError, RetryableError
from common.failpoints import failpoint
from common.runtime import Interrupts
from common.storage import ObjectStore, translate_storage_error
from jobs.archive import ledger
from jobs.archive.encoding import arrow_type, csv_to_table, decode, encode, key_range, select_list
from jobs.archive.settings import ArchiveSettings
from jobs.archive.table import Column, TableInfo

log = logging.getLogger(__name__)
Connection = psycopg.Connection[tuple[object, ...]]
MANIFEST_FORMAT_VERSION = 1
UPLOAD_CONCURRENCY = 16
MAX_PARTITIONS_PER_BATCH = 64


def object_name(batch_id: str, number: int) -> str:
    return f"part-{batch_id}-{number:03d}"


def batch_of(object_key: str) -> str | None:
    """The batch id in an object's name (part-<batch id>-<n>.<ext>), or None for a foreign object."""
    name = object_key.rsplit("/", 1)[-1]
    if not name.startswith("part-"):
        return None
    stem = name.removeprefix("part-").split(".", 1)[0]
    return stem.rsplit("-", 1)[0] or None


class VerificationFailed(PermanentError):
    reason = "VerificationFailed"


class ObjectLayout:
    """Where a table's objects and manifests live: data under `<schema>.<table>/` (hive-style
    partitions), manifests under `_cellar_manifests/` so query engines never read them as data."""

    def __init__(self, store: ObjectStore, settings: ArchiveSettings) -> None:
        self.store = store
        self.settings = settings
        self.data_prefix = store.key(settings.relation) + "/"
        self.manifest_prefix = store.key("_cellar_manifests", settings.relation) + "/"
        self.extension = ".parquet" if settings.format == "Parquet" else ".csv.gz"

    def data_key(self, partition: str | None, name: str) -> str:
        parts = [self.settings.relation, f"dt={partition}" if partition else "", f"{name}{self.extension}"]
        return self.store.key(*[p for p in parts if p])

    def manifest_key(self, name: str) -> str:
        return self.store.key("_cellar_manifests", self.settings.relation, f"{name}.json")


def sql_settings(conn: Connection, settings: ArchiveSettings) -> None:
    """Per-transaction settings that make every value's text form predictable and the batch bounded."""
    conn.execute(
        sql.SQL("SET LOCAL lock_timeout = {}").format(
            sql.Literal(f"{int(settings.lock_timeout.total_seconds() * 1000)}ms")
        )
    )
    conn.execute(
        sql.SQL("SET LOCAL statement_timeout = {}").format(
            sql.Literal(f"{int(settings.statement_timeout.total_seconds() * 1000)}ms")
        )
    )
    conn.execute("SET LOCAL TimeZone = 'UTC'")
    conn.execute("SET LOCAL DateStyle = 'ISO, YMD'")
    conn.execute("SET LOCAL extra_float_digits = 3")
    conn.execute("SET LOCAL bytea_output = 'hex'")


def eligible_condition(
    settings: ArchiveSettings, info: TableInfo, cutoff: datetime, *, holds: bool = True
) -> sql.Composable:
    """`ts < cutoff`, the trusted filter, and not a row that unarchive brought back into the table."""
    ts = sql.Identifier(info.timestamp_column.name)
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in info.primary_key)
    parts: list[sql.Composable] = [sql.SQL("{} < {}").format(ts, sql.Literal(cutoff))]
    if settings.filter_sql:
        parts.append(sql.SQL("({})").format(sql.SQL(settings.filter_sql)))  # trusted by contract (CRD docs)
    if holds:
        parts.append(
            sql.SQL(
                "NOT EXISTS (SELECT 1 FROM cellar.archive_holds h WHERE h.relation = {} AND h.key = ROW({})::text)"
            ).format(sql.Literal(settings.relation), keys)
        )
    return sql.SQL(" AND ").join(parts)


def table_name(settings: ArchiveSettings) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(settings.schema), sql.Identifier(settings.table))


def batch_statement(
    settings: ArchiveSettings, info: TableInfo, cutoff: datetime, limit: int, watermark: dict[str, Any] | None
) -> sql.Composed:
    ts = sql.Identifier(info.timestamp_column.name)
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in info.primary_key)
    order = sql.SQL("{}, {}").format(ts, keys)
    condition = eligible_condition(settings, info, cutoff)
    if settings.mode == "Copy":  # noqa: SIM102 (the Copy branch continues below, after the window)
        if watermark is not None:
            key_types = [info.column(k).pg_type for k in info.primary_key]
            values = sql.SQL(", ").join(
                sql.SQL("{}::{}").format(sql.Literal(v), sql.SQL(t))
                for v, t in zip(watermark["key"], key_types, strict=True)
            )
            condition = sql.SQL("{} AND ROW({}, {}) > ROW({}::{}, {})").format(
                condition, ts, keys, sql.Literal(watermark["ts"]), sql.SQL(info.timestamp_column.pg_type), values
            )
    if settings.partitioning != "None":
        # A batch writes one object per partition it touches: on a sparse table 10,000 rows can span
        # years of days, and a thousand uploads would hold the transaction open for seconds. Taking only
        # rows within MAX_PARTITIONS_PER_BATCH periods of the oldest due row bounds that.
        unit = "days" if settings.partitioning == "Daily" else "months"
        span = sql.SQL(f"interval '{MAX_PARTITIONS_PER_BATCH} {unit}'")
        # Move: the window starts at the oldest row no application holds locked, so locked rows never stall it.
        start = (
            "(SELECT min({ts}) FROM {table} WHERE {condition})"
            if settings.mode == "Copy"
            else "(SELECT {ts} FROM {table} WHERE {condition} ORDER BY {ts} LIMIT 1 FOR UPDATE SKIP LOCKED)"
        )
        condition = sql.SQL("{condition} AND {ts} < " + start + " + {span}").format(
            condition=condition, ts=ts, table=table_name(settings), span=span
        )
    if settings.mode == "Copy":
        return sql.SQL("COPY (SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT {}) TO STDOUT (FORMAT csv)").format(
            select_list(info.columns), table_name(settings), condition, order, sql.Literal(limit)
        )
    return sql.SQL(
        "COPY (DELETE FROM {table} WHERE ({keys}) IN (SELECT {keys} FROM {table} WHERE {condition} ORDER BY {order} "
        "LIMIT {limit} FOR UPDATE SKIP LOCKED) RETURNING {columns}) TO STDOUT (FORMAT csv)"
    ).format(
        table=table_name(settings),
        keys=keys,
        condition=condition,
        order=order,
        limit=sql.Literal(limit),
        columns=select_list(info.columns),
    )


def partitions(table: pa.Table, settings: ArchiveSettings, info: TableInfo) -> list[tuple[str | None, pa.Table]]:
    """Split a batch by the hive partition of each row's timestamp (a file holds one partition)."""
    if settings.partitioning == "None" or table.num_rows == 0:
        return [(None, table)]
    column = table.column(info.timestamp_column.name)
    if pa.types.is_timestamp(column.type):
        column = pc.cast(column, pa.timestamp("us"))  # UTC wall time for timestamptz
    text = pc.strftime(column, format="%Y-%m-%d" if settings.partitioning == "Daily" else "%Y-%m")
    result = []
    for value in pc.unique(text).to_pylist():
        result.append((value, table.filter(pc.equal(text, value))))
    return sorted(result, key=lambda item: item[0] or "")


def split_by_size(table: pa.Table, max_bytes: int) -> list[pa.Table]:
    """Slices whose in-memory size stays under max_bytes (the encoded file is smaller still)."""
    size = max(1, table.nbytes)
    if size <= max_bytes or table.num_rows <= 1:
        return [table]
    pieces = -(-size // max_bytes)
    step = -(-table.num_rows // pieces)
    return [table.slice(offset, step) for offset in range(0, table.num_rows, step)]


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value if isinstance(value, (int, float, bool)) or value is None else str(value)


@dataclass
class BatchResult:
    rows: int = 0
    bytes: int = 0
    objects: int = 0
    transaction_seconds: float = 0.0


@dataclass
class RunTotals:
    rows: int = 0
    bytes: int = 0
    batches: int = 0
    longest_transaction_seconds: float = 0.0


class Archiver:
    def __init__(
        self,
        conn: Connection,
        store: ObjectStore,
        settings: ArchiveSettings,
        info: TableInfo,
        cutoff: datetime,
        run_id: str,
        interrupts: Interrupts,
        on_progress: Callable[[int], None] = lambda _: None,
    ) -> None:
        self.conn = conn
        self.store = store
        self.settings = settings
        self.info = info
        self.cutoff = cutoff
        self.run_id = run_id
        self.interrupts = interrupts
        self.on_progress = on_progress
        self.layout = ObjectLayout(store, settings)
        self.batch_rows = settings.batch_rows
        self.watermark = ledger.copy_watermark(conn, settings.relation) if settings.mode == "Copy" else None
        conn.rollback()
        # A batch's objects (one per partition) upload side by side while its transaction is open.
        self._uploads = ThreadPoolExecutor(max_workers=UPLOAD_CONCURRENCY, thread_name_prefix="archive-upload")

    def run(self) -> tuple[RunTotals, str]:
        """Batches until nothing is due, the run time is up, or SIGTERM; returns totals and why it stopped."""
        try:
            return self._run()
        finally:
            self._uploads.shutdown(wait=True)

    def _run(self) -> tuple[RunTotals, str]:
        totals = RunTotals()
        deadline = time.monotonic() + self.settings.max_run_time.total_seconds()
        while True:
            with self.interrupts.deferred():
                result = self.batch()
            totals.rows += result.rows
            totals.bytes += result.bytes
            totals.batches += 1 if result.rows else 0
            totals.longest_transaction_seconds = max(totals.longest_transaction_seconds, result.transaction_seconds)
            self.on_progress(totals.rows)
            self.interrupts.check()  # SIGTERM during the batch: it finished (or rolled back); stop here
            if result.rows == 0:
                return totals, "done"
            if time.monotonic() >= deadline:
                return totals, "maxRunTime"
            self._pause()

    def _pause(self) -> None:
        end = time.monotonic() + self.settings.pause.total_seconds()
        while time.monotonic() < end:
            self.interrupts.check()
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))

    def batch(self) -> BatchResult:
        batch_id = str(uuid.uuid4())
        statement = batch_statement(self.settings, self.info, self.cutoff, self.batch_rows, self.watermark)
        began = time.monotonic()
        try:
            sql_settings(self.conn, self.settings)
            with self.conn.cursor() as cursor, cursor.copy(statement) as copy:
                data = b"".join(bytes(chunk) for chunk in copy)
            table = csv_to_table(data, self.info.columns)
            if table.num_rows == 0:
                self.conn.rollback()
                return BatchResult()
            result = BatchResult(rows=table.num_rows)
            entries = self._publish_batch(batch_id, self._pieces(table))
            result.bytes = sum(e.bytes for e in entries)
            result.objects = len(entries)
            for entry in entries:
                ledger.record(
                    self.conn,
                    entry,
                    relation=self.settings.relation,
                    cutoff=self.cutoff,
                    mode=self.settings.mode,
                    run_id=self.run_id,
                )
            failpoint("archive.before-commit")
        except BaseException:
            self._rollback()
            raise
        self._commit(batch_id)
        result.transaction_seconds = time.monotonic() - began
        if self.settings.mode == "Copy":
            self.watermark = json.loads(entries[-1].last_row or "null")
        self._adapt_batch_size(len(data))
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

    def _pieces(self, table: pa.Table) -> list[tuple[str | None, pa.Table]]:
        pieces: list[tuple[str | None, pa.Table]] = []
        for partition, part in partitions(table, self.settings, self.info):
            pieces.extend((partition, piece) for piece in split_by_size(part, self.settings.batch_max_bytes))
        return pieces

    def _adapt_batch_size(self, raw_bytes: int) -> None:
        # Keep a batch's raw rows near the byte limit: a table of wide rows gets fewer rows per batch.
        if raw_bytes > self.settings.batch_max_bytes and self.batch_rows > 1:
            self.batch_rows = max(1, int(self.batch_rows * self.settings.batch_max_bytes / raw_bytes))

    def _publish_batch(self, batch_id: str, pieces: list[tuple[str | None, pa.Table]]) -> list[ledger.LedgerEntry]:
        """Encode each piece, upload them concurrently (each verified), then write the batch's manifest."""
        manifest_key = self.layout.manifest_key(batch_id)
        encoded = [
            self._encode(batch_id, number, partition, part, manifest_key)
            for number, (partition, part) in enumerate(pieces)
        ]
        uploads = [
            self._uploads.submit(upload_verified, self.store, entry.object_key, body, entry.sha256)
            for entry, body, _ in encoded
        ]
        for upload in uploads:
            upload.result()  # the first failure fails the batch; its transaction rolls back
        manifest = {
            "formatVersion": MANIFEST_FORMAT_VERSION,
            "batchId": batch_id,
            "relation": {"schema": self.settings.schema, "table": self.settings.table},
            "format": self.settings.format,
            "compression": "zstd" if self.settings.format == "Parquet" else "gzip",
            "timestampColumn": self.info.timestamp_column.name,
            "primaryKey": list(self.info.primary_key),
            "cutoff": self.cutoff.isoformat(),
            "runId": self.run_id,
            "mode": self.settings.mode,
            "rows": sum(entry.rows for entry, _, _ in encoded),
            "columns": [{"name": c.name, "type": c.pg_type, "storedAs": str(arrow_type(c))} for c in self.info.columns],
            "objects": [description for _, _, description in encoded],
            "createdAt": datetime.now(UTC).isoformat(),
        }
        self.store.put_bytes(manifest_key, json.dumps(manifest, indent=2).encode())
        return [entry for entry, _, _ in encoded]

    def _encode(
        self, batch_id: str, number: int, partition: str | None, table: pa.Table, manifest_key: str
    ) -> tuple[ledger.LedgerEntry, bytes, dict[str, Any]]:
        key = self.layout.data_key(partition, object_name(batch_id, number))
        body = encode(table, self.settings.format)
        digest = hashlib.sha256(body).hexdigest()
        ts_name = self.info.timestamp_column.name
        low, high = key_range(table, ts_name)
        min_key, max_key = key_range(table, self.info.primary_key[0])
        ordered = table.sort_by([(ts_name, "ascending"), *((k, "ascending") for k in self.info.primary_key)])
        last = ordered.slice(ordered.num_rows - 1, 1).to_pylist()[0]
        last_row = json.dumps(
            {"ts": _jsonable(last[ts_name]), "key": [_jsonable(last[k]) for k in self.info.primary_key]}
        )
        description = {
            "objectKey": key,
            "partition": partition,
            "rows": table.num_rows,
            "bytes": len(body),
            "sha256": digest,
            "minTimestamp": low,
            "maxTimestamp": high,
            "minKey": min_key,
            "maxKey": max_key,
        }
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
        return entry, body, description

    def _rollback(self) -> None:
        with contextlib.suppress(psycopg.Error):  # a dead connection: the server rolled back on its own
            self.conn.rollback()

    def _commit(self, batch_id: str) -> None:
        try:
            self.conn.commit()
        except psycopg.OperationalError as exc:
            # The outcome of a COMMIT whose connection died is unknown here; the ledger knows.
            raise CommitInDoubt(batch_id, str(exc)) from exc


class CommitInDoubt(RetryableError):
    reason = "ConnectionFailed"

    def __init__(self, batch_id: str, detail: str) -> None:
        super().__init__(
            f"the connection died during COMMIT of batch {batch_id} ({detail}); the next run reads the "
            "ledger to learn whether it committed and cleans up accordingly"
        )
        self.batch_id = batch_id


def _timestamp(text: str | None) -> datetime | None:
    if text is None:
        return None
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def upload_verified(store: ObjectStore, key: str, body: bytes, sha256_hex: str) -> None:
    """PUT with a SHA-256 checksum and verify what the store says it stored.

    A store that checks x-amz-checksum-sha256 rejects a corrupted body (BadDigest) and returns the
    checksum it computed: a match is its own statement of what it holds, so no HEAD is needed. A store
    that returns no checksum (requestChecksum: WhenRequired, or no support) is asked with HEAD for the
    size and the ETag, which for a single PUT is the MD5 of the body.
    """
    checksum = base64.b64encode(bytes.fromhex(sha256_hex)).decode()
    arguments: dict[str, Any] = {"Bucket": store.bucket, "Key": key, "Body": body, **store.write_arguments()}
    if not store.spec.checksum_when_required:
        arguments["ChecksumSHA256"] = checksum
    try:
        put = store.client.put_object(**arguments)
        if put.get("ChecksumSHA256") == checksum:
            return
        head = store.client.head_object(Bucket=store.bucket, Key=key, ChecksumMode="ENABLED")
    except (ClientError, BotoCoreError) as exc:
        raise translate_storage_error(exc, "cannot upload", store.bucket, key) from None
    stored_checksum = head.get("ChecksumSHA256")
    etag = str(head.get("ETag", "")).strip('"')
    md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
    if (
        head["ContentLength"] != len(body)
        or (stored_checksum and stored_checksum.split("-")[0] != checksum)
        or (not stored_checksum and "-" not in etag and etag != md5)
    ):
        raise VerificationFailed(
            f"s3://{store.bucket}/{key}: the stored object does not match what was uploaded "
            f"(size {head['ContentLength']} of {len(body)}, checksum {stored_checksum or etag})"
        )


def read_verified(
    store: ObjectStore, manifest: dict[str, Any], described: dict[str, Any], columns: list[Column]
) -> pa.Table:
    """Download one object of a batch, check its SHA-256 and row count against the manifest, decode it."""
    body = store.get_bytes(described["objectKey"])
    digest = hashlib.sha256(body).hexdigest()
    if digest != described["sha256"]:
        raise VerificationFailed(
            f"{described['objectKey']}: SHA-256 {digest} does not match the manifest's {described['sha256']}"
        )
    table = decode(body, manifest["format"], columns)
    if table.num_rows != described["rows"]:
        raise VerificationFailed(
            f"{described['objectKey']}: {table.num_rows} rows, the manifest says {described['rows']}"
        )
    return table
