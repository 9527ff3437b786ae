"""The archive's commits through iceberg_commits.py's transaction: the same snapshots PyIceberg's own Transaction
makes, for a fraction of the work, in a local catalog (SQLite and a directory: PyIceberg's own, no server).
test_iceberg_sql_catalog.py tests the catalog's side, in PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from jobs.archive import iceberg_commits
from jobs.archive.iceberg_commits import transaction_of
from jobs.archive.iceberg_writes import DataFileWriter
from tests.unit.test_iceberg_writes import _rows, _table

BATCHES = 12
VARYING = {"added-files-size", "total-files-size"}  # file sizes may differ by a few bytes (the writer's version)


def _fresh_table(where: Path) -> Any:
    where.mkdir()
    return _table(where, "day")


def _append(table: Any, batch: int, begin: Callable[[Any], Any]) -> None:
    """One fast append of a day of rows, ids from batch * 1000."""
    day = _rows(240, timedelta(minutes=6))
    rows = day.set_column(0, "id", pa.array(range(batch * 1000, batch * 1000 + 240), pa.int64()))
    files = DataFileWriter(table.metadata).write(table.io, rows)
    properties = {"cellar.batch-id": f"batch-{batch}"}
    with (
        begin(table) as transaction,
        transaction.update_snapshot(snapshot_properties=properties).fast_append() as a,
    ):
        for data_file in files:
            a.append_data_file(data_file)


def _append_batches(table: Any, begin: Callable[[Any], Any]) -> list[dict[str, str]]:
    """BATCHES fast appends, each of a day of rows; the summaries of the snapshots, oldest first."""
    for batch in range(BATCHES):
        _append(table, batch, begin)
    return [
        {k: v for k, v in s.summary.additional_properties.items() if k not in VARYING}
        | {"operation": str(s.summary.operation)}
        for s in table.metadata.snapshots
    ]


@contextmanager
def _counting(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> Iterator[list[int]]:
    """How many times `owner.name` is called within."""
    inner = getattr(owner, name)
    calls = [0]

    def count(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return inner(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(owner, name, count)
        yield calls


def test_commits_make_the_snapshots_pyiceberg_makes(tmp_path: Path) -> None:
    ours = _fresh_table(tmp_path / "ours")
    theirs = _fresh_table(tmp_path / "theirs")
    assert _append_batches(ours, transaction_of) == _append_batches(theirs, lambda t: t.transaction())
    snapshots = ours.metadata.snapshots
    assert len(snapshots) == BATCHES
    assert [s.parent_snapshot_id for s in snapshots[1:]] == [s.snapshot_id for s in snapshots[:-1]]
    assert ours.metadata.current_snapshot_id == snapshots[-1].snapshot_id
    assert ours.scan().to_arrow().num_rows == theirs.scan().to_arrow().num_rows == BATCHES * 240
    assert sorted(ours.scan().to_arrow().column("id").to_pylist()) == sorted(
        theirs.scan().to_arrow().column("id").to_pylist()
    )


def test_a_commit_works_out_the_staged_metadata_a_few_times_not_at_every_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyIceberg's Transaction works out the staged metadata at every read (about 14 times an append), ours once per
    change."""
    import pyiceberg.table

    with _counting(monkeypatch, iceberg_commits, "staged_metadata") as ours:
        _append_batches(_fresh_table(tmp_path / "ours"), transaction_of)
    with _counting(monkeypatch, pyiceberg.table, "update_table_metadata") as theirs:
        _append_batches(_fresh_table(tmp_path / "theirs"), lambda t: t.transaction())
    assert BATCHES <= ours[0] <= 3 * BATCHES, ours
    assert theirs[0] >= 4 * BATCHES, theirs


def test_a_change_staged_in_a_transaction_is_seen_by_the_next(tmp_path: Path) -> None:
    """Two appends in one transaction: the second's parent is the first's snapshot, as with PyIceberg's own."""
    table = _fresh_table(tmp_path / "ours")
    writer = DataFileWriter(table.metadata)
    with transaction_of(table) as transaction:
        for batch in range(2):
            files = writer.write(table.io, _rows(48, timedelta(hours=1)))
            with transaction.update_snapshot(snapshot_properties={"cellar.batch-id": str(batch)}).fast_append() as a:
                for data_file in files:
                    a.append_data_file(data_file)
    first, second = table.metadata.snapshots
    assert second.parent_snapshot_id == first.snapshot_id
    assert (first.summary["cellar.batch-id"], second.summary["cellar.batch-id"]) == ("0", "1")
    assert table.scan().to_arrow().num_rows == 96


def test_the_staged_metadata_is_pyicebergs_without_the_copy(tmp_path: Path) -> None:
    """staged_metadata gives what PyIceberg's update_table_metadata gives for the same updates, with and without the
    metadata log entry, and shares the snapshots it did not change with the base instead of copying them."""
    from pyiceberg.table.update import update_table_metadata

    table = _fresh_table(tmp_path / "ours")
    for batch in range(3):
        _append(table, batch, transaction_of)
    transaction = transaction_of(table)
    files = DataFileWriter(table.metadata).write(table.io, _rows(48, timedelta(hours=1)))
    with transaction.update_snapshot(snapshot_properties={"cellar.batch-id": "next"}).fast_append() as a:
        for data_file in files:
            a.append_data_file(data_file)
    base, updates = table.metadata, transaction._updates
    for location in (None, table.metadata_location):
        ours = iceberg_commits.staged_metadata(base, updates, location)
        assert ours == update_table_metadata(base, updates, metadata_location=location)
        assert len(ours.snapshots) == 4
        assert all(mine is theirs for mine, theirs in zip(ours.snapshots[:3], base.snapshots, strict=True))
    assert iceberg_commits.staged_metadata(base, updates, table.metadata_location).metadata_log[-1].metadata_file == (
        table.metadata_location
    )
