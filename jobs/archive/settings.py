"""The archive job's settings, parsed and validated from a TableArchive spec."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, cast

from common.encryption import EncryptionSpec, parse_encryption_spec
from common.errors import InvalidSpec
from common.schema import (
    ARCHIVE_FORMATS,
    ARCHIVE_MODES,
    PARTITIONINGS,
    ArchiveFormat,
    ArchiveMode,
    Partitioning,
)
from common.spec import DatabaseSpec, SpecReader
from common.storage_spec import StorageSpec
from jobs.archive.iceberg_settings import IcebergSettings, parse_iceberg_spec

# Rows per batch. Each batch repeats some work (planning, COMMIT, a manifest, a partition split at its
# edges), so bigger batches move rows faster, and transactions get longer. This keeps them well under
# a second on the benchmark's table (`benchmarks/archive_bench.py --batch-rows N` compares sizes).
DEFAULT_BATCH_ROWS = 25_000
# Into an Iceberg table a batch is a snapshot, whose manifest, manifest list, metadata file and catalog commit cost
# the same whatever its rows: larger batches make fewer, larger snapshots. Their rows are deleted and written in
# pieces of DEFAULT_BATCH_ROWS (iceberg_pieces.py), so they hold about as much memory as Parquet mode's batches.
ICEBERG_BATCH_ROWS = 100_000


@dataclass(frozen=True)
class ArchiveSettings:
    database: DatabaseSpec
    storage: StorageSpec
    schema: str
    table: str
    primary_key: tuple[str, ...]
    timestamp_column: str
    older_than: timedelta
    filter_sql: str | None
    batch_rows: int
    batch_max_bytes: int
    pause: timedelta
    max_replication_lag: timedelta | None
    parallelism: int
    max_run_time: timedelta
    lock_timeout: timedelta
    statement_timeout: timedelta
    format: ArchiveFormat
    partitioning: Partitioning
    mode: ArchiveMode
    dry_run: bool
    allow_cascade: bool
    encryption: EncryptionSpec | None = None
    whole_partitions: bool = True  # spec.partitions.archiveWhole
    keep_detached: bool = False  # spec.partitions.keepDetached
    iceberg: IcebergSettings | None = None  # spec.iceberg, with format: Iceberg

    @property
    def relation(self) -> str:
        """`schema.table` as written in the spec, used as the ledger's and the keys' name for it."""
        return f"{self.schema}.{self.table}"


def _identifier(reader: SpecReader, key: str, default: str | None = None, *, required: bool = False) -> str:
    value = reader.string(key, default, required=required)
    if not value or len(value) > 63 or "\x00" in value:
        raise InvalidSpec(f"{reader.path}.{key}: must be 1 to 63 characters without NUL")
    return value


def parse_archive_spec(spec: Mapping[str, Any]) -> ArchiveSettings:
    reader = SpecReader(spec, "spec")
    table = reader.child("table", required=True)
    batch = reader.child("batch")
    primary_key = reader.string_list("primaryKey")
    for column in primary_key:
        if len(column) > 63 or "\x00" in column:
            raise InvalidSpec(f"spec.primaryKey: {column!r} is not a column name")
    older_than = reader.duration("olderThan")
    if older_than is None:
        raise InvalidSpec("spec.olderThan: required (for example 400d)")
    filter_sql = reader.optional_string("filter")
    if filter_sql is not None and (";" in filter_sql or "--" in filter_sql or "/*" in filter_sql):
        # Trusted, but one expression: a statement separator or a comment here is always a mistake.
        raise InvalidSpec("spec.filter: must be one boolean expression, without ';' or comments")
    schema, table_name = _identifier(table, "schema", "public"), _identifier(table, "name", required=True)
    archive_format = cast(ArchiveFormat, reader.string("format", "Parquet", choices=ARCHIVE_FORMATS))
    storage = StorageSpec.parse(reader.child("storage", required=True))
    mode = cast(ArchiveMode, reader.string("mode", "Move", choices=ARCHIVE_MODES))
    encryption = parse_encryption_spec(reader.child("encryption"))
    iceberg = None
    if archive_format == "Iceberg":
        _check_iceberg_compatible(storage, mode, encryption)
        iceberg = parse_iceberg_spec(reader.child("iceberg"), schema, table_name)
    elif reader.has("iceberg"):
        raise InvalidSpec("spec.iceberg: only with format: Iceberg")
    return ArchiveSettings(
        database=DatabaseSpec.parse(reader.child("database", required=True)),
        storage=storage,
        schema=schema,
        table=table_name,
        primary_key=primary_key,
        timestamp_column=_identifier(reader, "timestampColumn", required=True),
        older_than=older_than,
        filter_sql=filter_sql,
        batch_rows=batch.integer(
            "rows",
            ICEBERG_BATCH_ROWS if archive_format == "Iceberg" else DEFAULT_BATCH_ROWS,
            minimum=1,
            maximum=1_000_000,
        ),
        batch_max_bytes=(batch.integer("maxBytesMiB", 128, minimum=1, maximum=4096)) * 1024 * 1024,
        pause=batch.duration("pause", "0s"),
        max_replication_lag=batch.duration("maxReplicationLag"),
        parallelism=batch.integer("parallelism", 2, minimum=1, maximum=8),
        max_run_time=reader.duration("maxRunTime", "1h", positive=True),
        lock_timeout=reader.duration("lockTimeout", "5s"),  # 0s: no limit, as in PostgreSQL
        statement_timeout=reader.duration("statementTimeout", "60s"),
        format=archive_format,
        partitioning=cast(Partitioning, reader.string("partitioning", "Auto", choices=PARTITIONINGS)),
        mode=mode,
        dry_run=reader.boolean("dryRun"),
        allow_cascade=reader.boolean("allowCascade"),
        encryption=encryption,
        whole_partitions=reader.child("partitions").boolean("archiveWhole", True),
        keep_detached=reader.child("partitions").boolean("keepDetached"),
        iceberg=iceberg,
    )


def _check_iceberg_compatible(storage: StorageSpec, mode: ArchiveMode, encryption: EncryptionSpec | None) -> None:
    """What an Iceberg archive cannot do yet, refused before anything is touched."""
    if storage.azure_blob is not None and storage.azure_blob.workload_identity:
        # PyIceberg's Azure FileIO (adlfs) would sign in through azure-identity's async DefaultAzureCredential:
        # not the SDK path the Parquet archive takes, and not one Azurite can prove.
        raise InvalidSpec(
            "spec.storage.azureBlob.credentials.workloadIdentity: format: Iceberg writes to Azure Blob Storage with "
            "an accountKey or a sasToken only in this version (its FileIO signing in with a workload identity is "
            "not proven); use one of those, or format: Parquet"
        )
    if storage.insecure_skip_tls_verify:
        # PyArrow's S3 filesystem, which reads the table's files, takes a CA file but no way to skip verification
        # (iceberg_io.py).
        raise InvalidSpec(
            "spec.storage.insecureSkipTLSVerify: format: Iceberg cannot skip TLS verification (the table's files "
            "are read by PyArrow's S3 filesystem, which always verifies the endpoint); name the CA that signed "
            "the endpoint's certificate in spec.storage.endpointCA instead"
        )
    if mode != "Move":
        raise InvalidSpec("spec.mode: format: Iceberg archives in Move mode only in this version")
    if encryption is not None:
        raise InvalidSpec(
            "spec.encryption: age encryption is for Parquet and CSV files; an Iceberg table's files must stay "
            "readable by query engines (use the store's server-side encryption instead)"
        )


# What a run takes from a spec changed while it runs (`kubectl patch` / `edit`): how fast it goes and for
# how long, never what it moves or where to (those take effect at the next run).
LIVE_FIELDS = {
    "batch_rows": "batch.rows",
    "batch_max_bytes": "batch.maxBytesMiB",
    "pause": "batch.pause",
    "max_replication_lag": "batch.maxReplicationLag",
    "max_run_time": "maxRunTime",
    "lock_timeout": "lockTimeout",
    "statement_timeout": "statementTimeout",
}


_SPEC_NAMES = {
    "schema": "table.schema",
    "table": "table.name",
    "filter_sql": "filter",
    "parallelism": "batch.parallelism",
}


def _shown(value: object) -> str:
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    return "unset" if value is None else str(value)


def live_changes(
    current: ArchiveSettings, changed: ArchiveSettings
) -> tuple[ArchiveSettings, dict[str, str], list[str]]:
    """`current` with the live fields of `changed` applied; which live fields changed (spec path -> new
    value), and which other fields changed (spec names; they wait for the next run)."""
    if changed.partitioning == "Auto":  # resolved by the run (layout.py): Auto still means what the run chose
        changed = replace(changed, partitioning=current.partitioning)
    applied = {
        path: _shown(getattr(changed, name))
        for name, path in LIVE_FIELDS.items()
        if getattr(changed, name) != getattr(current, name)
    }
    later = [
        _SPEC_NAMES.get(name, name.split("_")[0] + "".join(word.title() for word in name.split("_")[1:]))
        for name in ArchiveSettings.__dataclass_fields__
        if name not in LIVE_FIELDS and getattr(changed, name) != getattr(current, name)
    ]
    updated = replace(current, **{name: getattr(changed, name) for name in LIVE_FIELDS})
    return updated, applied, later


class LiveSettings:
    """A run's settings as they are now, and the batch size it adapts to its rows, behind one lock: a spec read
    again replaces the settings between batches while lanes run, and a lane takes both as one snapshot for a
    batch (never the new settings with the old size)."""

    def __init__(self, settings: ArchiveSettings) -> None:
        self._lock = threading.Lock()
        self._settings = settings
        self._batch_rows = settings.batch_rows

    def snapshot(self) -> tuple[ArchiveSettings, int]:
        with self._lock:
            return self._settings, self._batch_rows

    @property
    def settings(self) -> ArchiveSettings:
        with self._lock:
            return self._settings

    @property
    def batch_rows(self) -> int:
        with self._lock:
            return self._batch_rows

    def shrink_for(self, raw_bytes: int) -> None:
        """Keep a batch's raw rows near the byte limit: a table of wide rows gets fewer rows per batch."""
        with self._lock:
            limit = self._settings.batch_max_bytes
            if raw_bytes > limit and self._batch_rows > 1:
                self._batch_rows = max(1, int(self._batch_rows * limit / raw_bytes))

    def apply(self, updated: ArchiveSettings) -> None:
        """The live fields of a spec read again (settings.live_changes); a new batch size or byte limit starts
        the adapted size over from the spec's."""
        with self._lock:
            if (updated.batch_rows, updated.batch_max_bytes) != (
                self._settings.batch_rows,
                self._settings.batch_max_bytes,
            ):
                self._batch_rows = updated.batch_rows
            self._settings = updated


@dataclass(frozen=True)
class Tuning:
    """How a run paces and bounds itself, beside what the spec says: the job passes these to each part
    of the run, and tests pass their own. docs/design.md says why each default is what it is."""

    upload_concurrency: int = 16  # a batch's objects uploading at once, while its transaction is open
    max_partitions_per_batch: int = 64  # a batch takes rows of at most this many days (or months)
    settings_reread_seconds: float = 10.0  # how often a run reads its TableArchive again, between batches
    standby_status_interval: float = 30.0  # how often a wait for a standby is written to status
    lock_wait_attempts: int = 6  # batches in a row that may wait past spec.lockTimeout before the run gives up
    estimate_from_rows: int = 1_000_000  # from this many rows due, the progress total is the planner's estimate
    unindexed_table_warning_bytes: int = 64 * 1024 * 1024  # warn of a missing timestamp index above this
    # Off in tests and benchmarks to compare; production falls back to COPY CSV only where ADBC cannot connect.
    arrow_reads: bool = True  # whole partitions read in binary through ADBC (arrow_reads.py), not as COPY CSV
    progress_log_seconds: float = 10.0  # unarchive: at most one progress line this often, not one per object
    # An Iceberg batch is deleted and written in pieces of this many rows (iceberg_pieces.py); a piece whose raw
    # rows exceed iceberg_piece_bytes makes the batch's next pieces smaller in proportion.
    iceberg_piece_rows: int = DEFAULT_BATCH_ROWS
    iceberg_piece_bytes: int = 32 * 1024 * 1024


DEFAULT_TUNING = Tuning()
