"""The archive's commits through iceberg.py's transaction: the same snapshots PyIceberg's own Transaction makes, for a
fraction of the work, in a local catalog (SQLite and a directory: PyIceberg's own, no server)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from jobs.archive.iceberg import transaction_of
from jobs.archive.iceberg_writes import DataFileWriter
from tests.unit.test_iceberg_writes import _rows, _table

BATCHES = 12
VARYING = {"added-files-size", "total-files-size"}  # file sizes may differ by a few bytes (the writer's version)


def _fresh_table(where: Path) -> Any:
    where.mkdir()
    return _table(where, "day")


def _append_batches(table: Any, begin: Callable[[Any], Any]) -> list[dict[str, str]]:
    """BATCHES fast appends, each of a day of rows; the summaries of the snapshots, oldest first."""
    writer = DataFileWriter(table.metadata)
    for batch in range(BATCHES):
        day = _rows(240, timedelta(minutes=6))
        rows = day.set_column(0, "id", pa.array(range(batch * 1000, batch * 1000 + 240), pa.int64()))
        files = writer.write(table.io, rows)
        properties = {"cellar.batch-id": f"batch-{batch}"}
        with (
            begin(table) as transaction,
            transaction.update_snapshot(snapshot_properties=properties).fast_append() as a,
        ):
            for data_file in files:
                a.append_data_file(data_file)
    return [
        {k: v for k, v in s.summary.additional_properties.items() if k not in VARYING}
        | {"operation": str(s.summary.operation)}
        for s in table.metadata.snapshots
    ]


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
    """Each working out deep-copies every snapshot the table keeps: PyIceberg's Transaction does it at every read
    (about 14 times an append), ours once per change."""
    import pyiceberg.table
    import pyiceberg.table.update

    calls = {"ours": 0, "theirs": 0}

    def counting(who: str, inner: Callable[..., Any]) -> Callable[..., Any]:
        def count(*args: Any, **kwargs: Any) -> Any:
            calls[who] += 1
            return inner(*args, **kwargs)

        return count

    # Ours looks it up in pyiceberg.table.update; PyIceberg's Transaction in pyiceberg.table's own namespace.
    monkeypatch.setattr(
        pyiceberg.table.update, "update_table_metadata", counting("ours", pyiceberg.table.update.update_table_metadata)
    )
    monkeypatch.setattr(
        pyiceberg.table, "update_table_metadata", counting("theirs", pyiceberg.table.update_table_metadata)
    )
    _append_batches(_fresh_table(tmp_path / "ours"), transaction_of)
    _append_batches(_fresh_table(tmp_path / "theirs"), lambda t: t.transaction())
    assert BATCHES <= calls["ours"] <= 3 * BATCHES, calls
    assert calls["theirs"] >= 4 * calls["ours"], calls


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
