"""Compaction of an archive's Iceberg table: in each partition that holds two or more small data files (below
three quarters of the target file size), those files are read and written again as files of about the target
size, and one snapshot deletes exactly the old files and adds the new ones (a round of partitions shares a
snapshot: a commit costs the same for one partition as for many).

The rows are the same before and after (readers see either the old files or the new ones, never both: the
catalog's commit swaps them). Peak memory is one bin of files, at most about the target file size of Parquet,
not the partition. A run killed before the commit leaves new files no snapshot references: orphans, which
iceberg_cleanup deletes after the grace period. The old files stay referenced by the older snapshots until those
expire, so the exactly-once resolution (iceberg_batches.resolve_unrecorded) can still read a batch's own files.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from common.failpoints import failpoint
from jobs.archive.iceberg import IcebergTable
from jobs.archive.iceberg_writes import DataFileWriter

log = logging.getLogger(__name__)

SMALL_FRACTION = 0.75  # of the target file size: a file below it is small
MAINTENANCE_PROPERTY = "cellar.maintenance-run"  # in a compaction snapshot's summary: the run that made it
COMMIT_ATTEMPTS = 5
FILES_PER_COMMIT = 2000  # small files one compaction snapshot replaces at most
BEFORE_COMMIT = "archive.iceberg-compaction-before-commit"


@dataclass(frozen=True)
class SmallFiles:
    """The small data files of one partition of the table's current partition spec (PyIceberg FileScanTasks)."""

    partition: Any  # pyiceberg Record: the partition's values
    tasks: list[Any]

    @property
    def bytes(self) -> int:
        return sum(t.file.file_size_in_bytes for t in self.tasks)


@dataclass
class Compacted:
    """What a compaction did: partitions rewritten, files read and written, rows moved (unchanged in number)."""

    partitions: int = 0
    files_rewritten: int = 0
    files_written: int = 0
    rows: int = 0
    skipped: list[str] = field(default_factory=list)  # partitions another writer changed meanwhile


def small_files(table: Any, target_bytes: int) -> list[SmallFiles]:
    """The partitions of the current snapshot with two or more small files, their files in path order."""
    spec_id = table.spec().spec_id
    grouped: dict[Any, list[Any]] = defaultdict(list)
    for task in table.scan().plan_files():
        data_file = task.file
        if data_file.spec_id != spec_id or task.delete_files:
            continue  # an older spec's layout, or rows deleted by position: left as they are
        if data_file.file_size_in_bytes < SMALL_FRACTION * target_bytes:
            grouped[data_file.partition].append(task)
    return [
        SmallFiles(partition, sorted(tasks, key=lambda t: str(t.file.file_path)))
        for partition, tasks in grouped.items()
        if len(tasks) >= 2
    ]


def bins(tasks: list[Any], target_bytes: int) -> list[list[Any]]:
    """The files in groups of at most about `target_bytes` each (one new file each); a last group of one file
    joins the one before it, so no file is rewritten alone."""
    groups: list[list[Any]] = []
    size = 0
    for task in tasks:
        if not groups or size + task.file.file_size_in_bytes > target_bytes:
            groups.append([])
            size = 0
        groups[-1].append(task)
        size += task.file.file_size_in_bytes
    if len(groups) > 1 and len(groups[-1]) == 1:
        last = groups.pop()
        groups[-1] += last
    return groups


def partition_span(transform: str, value: Any) -> tuple[datetime, datetime] | None:
    """The [start, end) of a day, month or year partition value (days, months or years since 1970)."""
    if isinstance(value, date):
        value = (value - date(1970, 1, 1)).days
    if not isinstance(value, int):
        return None
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    if transform == "day":
        start = epoch + timedelta(days=value)
        return start, start + timedelta(days=1)
    if transform == "month":
        year, month = divmod(value, 12)
        start = datetime(1970 + year, month + 1, 1, tzinfo=UTC)
        after = datetime(1970 + (value + 1) // 12, (value + 1) % 12 + 1, 1, tzinfo=UTC)
        return start, after
    if transform == "year":
        return datetime(1970 + value, 1, 1, tzinfo=UTC), datetime(1971 + value, 1, 1, tzinfo=UTC)
    return None


def partition_filter(table: Any, partition: Any) -> Any:
    """A row filter that holds the partition's rows: the commit reads (and rewrites) only the manifests whose
    partitions it overlaps. AlwaysTrue (every manifest read) where the spec is not one timestamp transform."""
    from pyiceberg.expressions import AlwaysTrue, And, GreaterThanOrEqual, LessThan
    from pyiceberg.types import TimestampType, TimestamptzType

    fields = table.spec().fields
    if len(fields) != 1:
        return AlwaysTrue()
    source = table.schema().find_field(fields[0].source_id)
    span = partition_span(str(fields[0].transform), partition[0])
    if span is None or not isinstance(source.field_type, (TimestampType, TimestamptzType)):
        return AlwaysTrue()
    low, high = span
    if isinstance(source.field_type, TimestampType):  # without time zone: compares with wall time
        low, high = low.replace(tzinfo=None), high.replace(tzinfo=None)
    return And(
        GreaterThanOrEqual(source.name, low.isoformat()),  # type: ignore[call-arg, arg-type]
        LessThan(source.name, high.isoformat()),  # type: ignore[call-arg, arg-type]
    )


def write_bin(table: Any, tasks: list[Any], writer: DataFileWriter) -> tuple[list[Any], int]:
    """Read one bin's files (their rows as the table's current schema, each file whole in one GET) and write them
    again with the archive's own data-file writer (a bin holds one partition: one file, more where it exceeds the
    target size); the new DataFiles and the number of rows."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan

    from jobs.archive.iceberg_io import whole_file_reads

    rows = ArrowScan(table.metadata, whole_file_reads(table.io), table.schema(), AlwaysTrue()).to_table(tasks)
    return writer.write(table.io, rows), rows.num_rows


def _commit_rewrite(table: Any, rewritten: list[Rewritten], run_id: str) -> None:
    """One snapshot that deletes exactly the partitions' old files and adds their new ones. The predicates only
    narrow the manifests the commit reads (and rewrites); what it removes is the list of files."""
    with table.transaction() as transaction:
        snapshot = transaction.update_snapshot(snapshot_properties={MAINTENANCE_PROPERTY: run_id})
        with snapshot.overwrite() as rewrite:
            for done in rewritten:
                rewrite.delete_by_predicate(partition_filter(table, done.part.partition))
                for task in done.part.tasks:
                    rewrite.delete_data_file(task.file)
                for data_file in done.written:
                    rewrite.append_data_file(data_file)


def _still_there(table: Any, part: SmallFiles) -> bool:
    """Whether every old file of the partition is still in the table's current snapshot (another writer's
    compaction may have replaced them since)."""
    scan = table.scan(row_filter=partition_filter(table, part.partition))
    current = {str(t.file.file_path) for t in scan.plan_files()}
    return all(str(t.file.file_path) in current for t in part.tasks)


@dataclass(frozen=True)
class Rewritten:
    """A partition's small files and the files written in their place, not committed yet."""

    part: SmallFiles
    written: list[Any]
    rows: int


def rewrite_partition(table: Any, part: SmallFiles, target_bytes: int, writer: DataFileWriter) -> Rewritten:
    """The partition's small files read and written again, bin by bin (one bin in memory at a time)."""
    written: list[Any] = []
    rows = 0
    for group in bins(part.tasks, target_bytes):
        files, count = write_bin(table, group, writer)
        written += files
        rows += count
    log.info(
        "partition rewritten",
        extra={"partition": str(part.partition), "files_read": len(part.tasks), "files_written": len(written)},
    )
    return Rewritten(part, written, rows)


def commit_round(iceberg: IcebergTable, rewritten: list[Rewritten], run_id: str, done: Compacted) -> None:
    """Commit the round's partitions in one snapshot. A commit that loses the race to another writer is tried
    again on the table as it is then, with the partitions whose old files are all still there; the others are
    left for the next run (their new files are orphans the cleanup deletes)."""
    from pyiceberg.exceptions import CommitFailedException

    table = iceberg.load()
    for attempt in range(COMMIT_ATTEMPTS):
        if not rewritten:
            return
        try:
            _commit_rewrite(table, rewritten, run_id)
        except CommitFailedException as exc:
            log.info("Iceberg commit conflict in compaction", extra={"attempt": attempt + 1, "error": str(exc)})
            table = iceberg.load()
            kept = [r for r in rewritten if _still_there(table, r.part)]
            done.skipped += [str(r.part.partition) for r in rewritten if r not in kept]
            rewritten = kept
            continue
        done.partitions += len(rewritten)
        done.files_rewritten += sum(len(r.part.tasks) for r in rewritten)
        done.files_written += sum(len(r.written) for r in rewritten)
        done.rows += sum(r.rows for r in rewritten)
        log.info("compaction committed", extra={"partitions": len(rewritten), "files_read": done.files_rewritten})
        return
    done.skipped += [str(r.part.partition) for r in rewritten]


def rounds(parts: list[SmallFiles], files_per_commit: int) -> list[list[SmallFiles]]:
    """The partitions in rounds of about `files_per_commit` old files, one commit each: a commit's cost grows with
    the table's metadata, not with the files it swaps, so many partitions share one."""
    grouped: list[list[SmallFiles]] = [[]]
    count = 0
    for part in parts:
        if grouped[-1] and count + len(part.tasks) > files_per_commit:
            grouped.append([])
            count = 0
        grouped[-1].append(part)
        count += len(part.tasks)
    return [g for g in grouped if g]


def compact(iceberg: IcebergTable, run_id: str, files_per_commit: int = FILES_PER_COMMIT) -> Compacted:
    """Every partition of the current spec with two or more small files, rewritten; each round in one snapshot."""
    done = Compacted()
    target = iceberg.iceberg.target_file_size_bytes
    for parts in rounds(small_files(iceberg.load(), target), files_per_commit):
        table = iceberg.load()
        writer = DataFileWriter(table.metadata)  # the table's current schema, spec and properties
        rewritten = [rewrite_partition(table, part, target, writer) for part in parts]
        failpoint(BEFORE_COMMIT)
        commit_round(iceberg, rewritten, run_id, done)
    return done
