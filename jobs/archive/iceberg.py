"""An archive's Iceberg table through PyIceberg: the table made or checked in its catalog (iceberg_catalog.py),
batches appended as snapshots that carry cellar's batch id, and what a snapshot added read back."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from common.errors import PermanentError, RetryableError
from common.failpoints import failpoint
from common.reasons import Reason
from common.schema import Partitioning
from jobs.archive.arrow_types import schema_for
from jobs.archive.iceberg_catalog import CatalogAccess, catalog_failures, open_catalog, table_location
from jobs.archive.iceberg_commits import fast_append
from jobs.archive.iceberg_schema import evolve, plan_changes, refusal
from jobs.archive.iceberg_settings import IcebergSettings
from jobs.archive.iceberg_writes import DataFileWriter, PieceFiles
from jobs.archive.layout import TRANSFORMS, LayoutChoice
from jobs.archive.settings import ArchiveSettings
from jobs.archive.table import TableInfo

log = logging.getLogger(__name__)
# PyIceberg says at INFO which FileIO it loaded, on every load of the table.
logging.getLogger("pyiceberg.io").setLevel(logging.WARNING)

BATCH_PROPERTY = "cellar.batch-id"  # in each snapshot's summary: the ledger's batch id
RUN_PROPERTY = "cellar.run-id"
# The source table (schema.table) whose rows a snapshot holds: a run resolves only its own table's snapshots, even
# where two archives append to one Iceberg table.
RELATION_PROPERTY = "cellar.relation"
COMMIT_ATTEMPTS = 12  # appends that lose the race for the catalog's commit before the run gives up
PARTITIONINGS_OF: dict[str, Partitioning] = {transform: partitioning for partitioning, transform in TRANSFORMS.items()}
# partitionBy: Auto: what measures the rows due and chooses, or None when none are due.
Chooser = Callable[[], LayoutChoice | None]


class NothingDue(Exception):
    """partitionBy: Auto, no table yet, and no rows due to choose its partitioning from."""


@dataclass(frozen=True)
class AppendedSnapshot:
    snapshot_id: int
    metadata_location: str
    data_files: int
    bytes: int


def iceberg_schema(info: TableInfo) -> Any:
    """The Iceberg schema of the archived table's columns: the Arrow types of the Parquet archive (arrow_types.py),
    converted by PyIceberg (int2 widens to int; docs/design.md lists every type)."""
    from pyiceberg.catalog import Catalog
    from pyiceberg.schema import assign_fresh_schema_ids

    # Converted without field ids, then numbered as create_table numbers them: the partition spec names its
    # source column by id.
    return assign_fresh_schema_ids(Catalog._convert_schema_if_needed(schema_for(info.columns)))


def _partition_spec(schema: Any, column: str, transform_name: str) -> Any:
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.transforms import DayTransform, MonthTransform, YearTransform

    transform: Any = {"day": DayTransform(), "month": MonthTransform(), "year": YearTransform()}[transform_name]
    source = schema.find_field(column)
    return PartitionSpec(
        PartitionField(source_id=source.field_id, field_id=1000, transform=transform, name=f"{column}_{transform_name}")
    )


class IcebergTable:
    """One archive's Iceberg table in its catalog. The run's lanes write their data files side by side and commit
    one at a time: committing side by side, every commit but one would lose the race. A commit that loses to
    another writer (CommitFailedException) is tried again with the same files."""

    def __init__(self, catalog: Any, iceberg: IcebergSettings, info: TableInfo, relation: str) -> None:
        self.catalog = catalog
        self.relation = relation
        self.iceberg = iceberg
        self.info = info
        self.identifier = (iceberg.namespace, iceberg.table)
        self.commit_retries = 0
        self.layout: LayoutChoice | None = None  # partitionBy: Auto, resolved by open()
        self.schema_changes: dict[str, list[str]] = {}  # what open() changed in the table's schema, for the summary
        self._appending = threading.Lock()
        self._base: Any = None  # the table as this run's last commit left it (commits only, under _appending)
        self._writing = threading.local()  # each lane's table for writing data files

    @classmethod
    def open(
        cls,
        settings: ArchiveSettings,
        info: TableInfo,
        access: CatalogAccess,
        *,
        create: bool = True,
        choose: Chooser | None = None,
    ) -> IcebergTable:
        """Open the catalog, make the namespace and the table when missing (`create`; else a missing table is
        refused), and check an existing table's schema and partitioning against the archived table's. Nothing is
        deleted from PostgreSQL before this passes."""
        iceberg = settings.iceberg
        assert iceberg is not None
        table = cls(open_catalog(settings, access), iceberg, info, settings.relation)
        with catalog_failures(iceberg, "failed a request"):
            table._make_or_check(table_location(settings, access.prefix_key), create, choose)
        return table

    def _make_or_check(self, location: str, create: bool, choose: Chooser | None = None) -> None:
        from pyiceberg.exceptions import NoSuchTableError, TableAlreadyExistsError

        expected = iceberg_schema(self.info)
        self.catalog.create_namespace_if_not_exists(self.iceberg.namespace)
        try:
            table = self.catalog.load_table(self.identifier)
        except NoSuchTableError:
            if not create:
                raise PermanentError(
                    f"spec.iceberg.table: the catalog holds no Iceberg table {self.iceberg.identifier}",
                    reason=Reason.NOT_FOUND,
                ) from None
            as_specified = self.iceberg
            self._choose_partitioning(choose)
            partition_spec = _partition_spec(expected, self.info.timestamp_column.name, self.iceberg.partition_by)
            try:
                self.catalog.create_table(
                    self.identifier,
                    schema=expected,
                    location=location,
                    partition_spec=partition_spec,
                    properties={**self.iceberg.table_properties(), RELATION_PROPERTY: self.relation},
                )
                log.info("Iceberg table created", extra={"table": self.iceberg.identifier, "location": location})
                return
            except TableAlreadyExistsError:  # another run created it first: its partitioning is the table's
                self.iceberg, self.layout = as_specified, None
                table = self.catalog.load_table(self.identifier)
        if create:  # an archive run appends as the table is now; unarchive reads what the table holds
            self._check(table, expected)

    def _choose_partitioning(self, choose: Chooser | None) -> None:
        """partitionBy: Auto, for a table about to be created: the transform chosen from the rows due (NothingDue
        when none are: the table is created by the first run that has rows to measure)."""
        if self.iceberg.partition_by != "Auto":
            return
        choice = choose() if choose is not None else None
        if choice is None:
            raise NothingDue(self.iceberg.identifier)
        self.iceberg = replace(self.iceberg, partition_by=choice.transform)
        self.layout = choice

    def _adopt_partitioning(self, table: Any) -> None:
        """partitionBy: Auto, for a table that exists: its partition spec says the transform, kept as it is."""
        if self.iceberg.partition_by != "Auto":
            return
        schema, column = table.schema(), self.info.timestamp_column.name
        found = [str(f.transform) for f in table.spec().fields if schema.find_column_name(f.source_id) == column]
        if len(table.spec().fields) == 1 and found and found[0] in PARTITIONINGS_OF:
            self.iceberg = replace(self.iceberg, partition_by=found[0])
            self.layout = LayoutChoice(PARTITIONINGS_OF[found[0]], "kept: the Iceberg table's partition spec")

    def _is_ours(self, table: Any) -> bool:
        """Whether cellar made the table for this source, or appended its rows to it: its schema then follows the
        source's changes (iceberg_schema.py); any other table must match as it is."""
        if table.properties.get(RELATION_PROPERTY) == self.relation:
            return True
        return any(True for _ in self.batch_snapshots())

    def _follow_source(self, table: Any, expected: Any) -> None:
        """The source's columns changed since the table was made: the changes Iceberg allows applied in one schema
        update, any other refused (SchemaMismatch), before any row moves."""
        changes = plan_changes(table.schema(), expected)
        if changes.refused:
            raise refusal(self.iceberg.identifier, self.relation, changes.refused)
        if changes.any:
            evolve(table, changes)
            self.schema_changes = changes.describe()

    def _check(self, table: Any, expected: Any) -> None:
        self._adopt_partitioning(table)
        found = table.schema().as_arrow()
        wanted = expected.as_arrow()
        if not found.equals(wanted, check_metadata=False) and self._is_ours(table):
            self._follow_source(table, expected)
        elif not found.equals(wanted, check_metadata=False):
            differs = [
                f"{f.name} ({f.type})"
                for f in wanted
                if f.name not in found.names or found.field(f.name).type != f.type
            ] + [f"{name} (not in the source)" for name in found.names if name not in wanted.names]
            raise PermanentError(
                f"spec.iceberg.table: the Iceberg table {self.iceberg.identifier} exists with another schema than the "
                f"archived table's columns give; these differ: {', '.join(differs) or 'the order of the columns'}. "
                "Name another table (spec.iceberg.table), or drop that one",
                reason=Reason.ICEBERG_TABLE_MISMATCH,
            )
        fields = table.spec().fields
        column = self.info.timestamp_column.name
        source = table.schema().find_field(column).field_id
        transforms = [str(f.transform) for f in fields if f.source_id == source]
        if len(fields) != 1 or transforms != [self.iceberg.partition_by]:
            found_spec = ", ".join(f"{f.transform}({table.schema().find_column_name(f.source_id)})" for f in fields)
            raise PermanentError(
                f"spec.iceberg.partitionBy: the Iceberg table {self.iceberg.identifier} is partitioned by "
                f"{found_spec or 'nothing'}, not by {self.iceberg.partition_by}({column}); set partitionBy to match, "
                "or name another table",
                reason=Reason.ICEBERG_TABLE_MISMATCH,
            )

    def load(self) -> Any:
        with catalog_failures(self.iceberg, f"failed to load the table {self.iceberg.identifier}"):
            return self.catalog.load_table(self.identifier)

    def state(self) -> tuple[int, int, int, str]:
        """(snapshots kept, data files, their bytes, the current snapshot's id) of the table now, from the current
        snapshot's summary totals; zeros before the first snapshot."""
        metadata = self.load().metadata
        current = metadata.current_snapshot()
        summary = current.summary if current is not None and current.summary is not None else {}
        return (
            len(metadata.snapshots),
            int(summary.get("total-data-files", "0")),
            int(summary.get("total-files-size", "0")),
            str(current.snapshot_id) if current is not None else "",
        )

    def append(self, rows: pa.Table, batch_id: str, run_id: str) -> AppendedSnapshot:
        """Write `rows` as data files, then commit them as one snapshot whose summary names the batch. Lanes write
        their files side by side and take turns only for the commit; a commit that another writer beat is tried
        again, with the same files, on the table as it is then."""
        return self.commit_files(self.write_data_files(rows, batch_id), batch_id, run_id)

    def write_data_files(self, rows: pa.Table, batch_id: str) -> list[Any]:
        """`rows` written as data files of the table, in no snapshot yet (commit_files adds them to one). Written
        once; each commit attempt commits the same list (the two-stage write PyIceberg's Transaction.append
        documents for retried commits)."""
        with catalog_failures(self.iceberg, f"failed to write batch {batch_id}'s data files"):
            table = self._writing_table()
            writer: DataFileWriter = self._writing.writer
            return writer.write(table.io, rows)

    def piece_files(self, batch_id: str) -> PieceFiles:
        """The data files of a batch whose rows come a piece at a time (write_piece, finish_pieces)."""
        with catalog_failures(self.iceberg, f"failed to write batch {batch_id}'s data files"):
            table = self._writing_table()
            return PieceFiles(self._writing.writer, table.io)

    def write_piece(self, files: PieceFiles, rows: pa.Table, batch_id: str) -> list[Any]:
        """A piece of a batch's rows added to its data files; the files the piece finished, in no snapshot yet."""
        with catalog_failures(self.iceberg, f"failed to write batch {batch_id}'s data files"):
            return files.write(rows)

    def finish_pieces(self, files: PieceFiles, batch_id: str) -> list[Any]:
        """The batch's last data file, finished after its last piece."""
        with catalog_failures(self.iceberg, f"failed to write batch {batch_id}'s data files"):
            return files.close()

    def commit_files(self, data_files: list[Any], batch_id: str, run_id: str) -> AppendedSnapshot:
        """Commit `data_files` as one snapshot whose summary names the batch and the run."""
        properties = {BATCH_PROPERTY: batch_id, RUN_PROPERTY: run_id, RELATION_PROPERTY: self.relation}
        # The catalog's commit may have happened before its connection failed (or a REST catalog's answer was
        # lost): the run stops, and the next one finds the snapshot, if there is one, by its batch id.
        with self._appending, catalog_failures(self.iceberg, f"failed the commit of batch {batch_id}"):
            return self._commit(data_files, batch_id, properties)

    def _writing_table(self) -> Any:
        """The table as this thread's writes see it. Data files are written under the table's location
        (iceberg_writes.py), in no snapshot until a commit: files of a batch whose commit never happens are
        orphans, which maintenance removes. Only the table's schema, partition spec, location and properties
        matter to them, so each thread writes with the table as it first loaded it. Its own copy: PyIceberg caches
        in the metadata object as it reads it, and a commit copies the committing table's metadata, which must not
        change meanwhile."""
        table = getattr(self._writing, "table", None)
        if table is None:
            table = self._writing.table = self.load()
            self._writing.writer = DataFileWriter(table.metadata)
        return table

    def _commit(self, data_files: list[Any], batch_id: str, properties: dict[str, str]) -> AppendedSnapshot:
        from pyiceberg.exceptions import CommitFailedException

        for attempt in range(COMMIT_ATTEMPTS):
            # The table as this run's last commit left it: when another writer has committed since, the commit
            # fails and the next attempt loads the table anew.
            table = self._base or self.load()
            failpoint("archive.iceberg-append")  # a test holds a run here while another writer commits
            try:
                fast_append(table, data_files, properties)
            except CommitFailedException as exc:
                self._base = None
                self.commit_retries += 1
                log.info("Iceberg commit conflict; trying again", extra={"attempt": attempt + 1, "error": str(exc)})
                time.sleep(random.uniform(0.02, 0.1 * 2 ** min(attempt, 5)))  # noqa: S311 (jitter, not secrecy)
                continue
            self._base = table
            return self._appended(table, batch_id)
        raise RetryableError(
            f"the Iceberg table {self.iceberg.identifier} changed under each of {COMMIT_ATTEMPTS} commits of batch "
            f"{batch_id} (other writers); nothing of it was recorded, and the next run tries again",
            reason=Reason.CATALOG_CONFLICT,
        )

    def _appended(self, table: Any, batch_id: str) -> AppendedSnapshot:
        snapshot = table.current_snapshot()
        if snapshot is None or snapshot.summary is None or snapshot.summary.get(BATCH_PROPERTY) != batch_id:
            self._base = None
            raise RetryableError(
                f"the Iceberg table {self.iceberg.identifier}'s current snapshot after batch {batch_id}'s append "
                "is not that batch's",
                reason=Reason.CATALOG_CONFLICT,
            )
        summary = snapshot.summary
        return AppendedSnapshot(
            snapshot.snapshot_id,
            str(table.metadata_location),
            int(summary.get("added-data-files", "0")),
            int(summary.get("added-files-size", "0")),
        )

    def batch_snapshots(self) -> Iterator[tuple[str, Any]]:
        """(batch id, snapshot) of every snapshot cellar committed of this source table that the table still keeps."""
        for snapshot in self.load().metadata.snapshots:
            summary = snapshot.summary
            if summary is None or summary.get(RELATION_PROPERTY) != self.relation:
                continue
            batch = summary.get(BATCH_PROPERTY)
            if batch:
                yield batch, snapshot

    def rows_added_by(self, snapshot: Any, columns: list[str]) -> pa.Table:
        """The `columns` of the rows `snapshot` added: its own data files, read from its manifests (each whole)."""
        from pyiceberg.manifest import ManifestEntryStatus

        from jobs.archive.iceberg_io import whole_file_reads

        table = self.load()
        io, reads = table.io, whole_file_reads(table.io)
        pieces = []
        for manifest in snapshot.manifests(io):
            if manifest.added_snapshot_id != snapshot.snapshot_id:
                continue
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=True):
                if entry.status == ManifestEntryStatus.ADDED and entry.snapshot_id == snapshot.snapshot_id:
                    with reads.new_input(entry.data_file.file_path).open() as stream:
                        pieces.append(pq.read_table(stream, columns=columns))
        if not pieces:
            return pa.table({name: pa.array([], pa.string()) for name in columns})
        return pa.concat_tables(pieces, promote_options="permissive")

    def scan(self, start: datetime, end: datetime, snapshot_id: int | None = None) -> Any:
        """The rows with start <= timestamp < end, the filter pushed down (partitions and files pruned)."""
        from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

        column = self.info.timestamp_column
        if column.arrow_kind == "timestamptz":
            low, high = start.isoformat(), end.isoformat()
        else:  # a timestamp without time zone compares with wall time
            low, high = start.replace(tzinfo=None).isoformat(), end.replace(tzinfo=None).isoformat()
        # PyIceberg's predicates take (term, literal) positionally at run time; their pydantic fields read otherwise.
        row_filter = And(
            GreaterThanOrEqual(column.name, low),  # type: ignore[call-arg, arg-type]
            LessThan(column.name, high),  # type: ignore[call-arg, arg-type]
        )
        return self.load().scan(row_filter=row_filter, snapshot_id=snapshot_id)

    def read_task(self, scan: Any, task: Any) -> pa.Table:
        """The rows of one planned file of `scan` that pass its filter."""
        from pyiceberg.io.pyarrow import ArrowScan

        table = scan.table_metadata
        return ArrowScan(table, scan.io, scan.projection(), scan.row_filter, scan.case_sensitive).to_table([task])
