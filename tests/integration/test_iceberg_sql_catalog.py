"""Cellar's SQL catalog (iceberg_sql_catalog.py) in a real PostgreSQL, with the table's files in a local directory:
the tables it keeps are the ones PyIceberg's SqlCatalog reads and writes, each seeing the other's commits; its
commits neither copy the metadata nor read it back; a commit made on a table another writer changed loses the swap;
its namespace and table operations answer as PyIceberg's do; and a lost connection is opened again."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest

from jobs.archive.iceberg_commits import transaction_of
from jobs.archive.iceberg_sql_catalog import PostgresCatalog
from jobs.archive.iceberg_writes import DataFileWriter
from tests.integration.archive_helpers import dsn
from tests.unit.test_iceberg_commits import _counting
from tests.unit.test_iceberg_writes import _rows

pytestmark = pytest.mark.integration

SCHEMA = "cellar_iceberg"
BATCHES = 12


def _ours(database: dict[str, Any], warehouse: Path) -> PostgresCatalog:
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"')
    return PostgresCatalog(
        "cellar", lambda: psycopg.connect(dsn(database), autocommit=True), SCHEMA, warehouse=f"file://{warehouse}"
    )


def _pyicebergs(database: dict[str, Any], warehouse: Path) -> Any:
    from pyiceberg.catalog.sql import SqlCatalog

    d = database
    return SqlCatalog(
        "cellar",
        uri=f"postgresql+psycopg://{d['username']}:{d['password']}@{d['host']}:{d['port']}/{d['dbname']}"
        f"?options=-csearch_path%3D{SCHEMA}",
        warehouse=f"file://{warehouse}",
    )


def _new_table(catalog: Any) -> Any:
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.transforms import DayTransform
    from pyiceberg.types import LongType, NestedField, TimestamptzType

    catalog.create_namespace_if_not_exists("archive")
    schema = Schema(
        NestedField(1, "id", LongType(), required=False),
        NestedField(2, "created_at", TimestamptzType(), required=False),
    )
    spec = PartitionSpec(PartitionField(2, 1000, DayTransform(), "created_at_day"))
    return catalog.create_table("archive.orders", schema, partition_spec=spec)


def _append(table: Any, batch: int, begin: Callable[[Any], Any] = transaction_of) -> None:
    day = _rows(240, timedelta(minutes=6))
    rows = day.set_column(0, "id", pa.array(range(batch * 1000, batch * 1000 + 240), pa.int64()))
    files = DataFileWriter(table.metadata).write(table.io, rows)
    with (
        begin(table) as transaction,
        transaction.update_snapshot(snapshot_properties={"cellar.batch-id": f"batch-{batch}"}).fast_append() as a,
    ):
        for data_file in files:
            a.append_data_file(data_file)


def _batches(table: Any) -> list[str]:
    return [s.summary["cellar.batch-id"] for s in table.metadata.snapshots]


def test_pyicebergs_sql_catalog_and_ours_see_each_others_commits(database: dict[str, Any], tmp_path: Path) -> None:
    ours = _ours(database, tmp_path)
    table = _new_table(ours)
    for batch in range(BATCHES):
        _append(table, batch)
    theirs = _pyicebergs(database, tmp_path).load_table("archive.orders")
    assert theirs.metadata_location == table.metadata_location
    assert theirs.metadata == table.metadata
    assert _batches(theirs) == [f"batch-{n}" for n in range(BATCHES)]
    logged = [entry.metadata_file for entry in theirs.metadata.metadata_log]
    assert len(set(logged)) == BATCHES  # each commit logged the file it replaced
    assert theirs.metadata_location not in logged
    assert theirs.scan().to_arrow().num_rows == BATCHES * 240
    _append(theirs, 100, lambda t: t.transaction())  # PyIceberg's own commit, then ours on top of it
    table = ours.load_table("archive.orders")
    _append(table, 101)
    again = _pyicebergs(database, tmp_path).load_table("archive.orders")
    assert _batches(again)[-2:] == ["batch-100", "batch-101"]
    assert again.metadata.snapshots[-1].parent_snapshot_id == again.metadata.snapshots[-2].snapshot_id
    assert again.scan().to_arrow().num_rows == (BATCHES + 2) * 240


def test_a_commit_neither_copies_the_metadata_nor_reads_it_back(
    database: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The work that grew with the snapshots: a deep copy of the whole metadata, and the catalog reading the table's
    current metadata file back from the store and parsing it, at every commit. PyIceberg's SqlCatalog, over the
    same tables, shows what the counts would be."""
    from pyiceberg.serializers import FromInputFile
    from pyiceberg.table.metadata import TableMetadataV2

    ours = _new_table(_ours(database, tmp_path / "ours"))
    theirs = _pyicebergs(database, tmp_path / "theirs")
    theirs.create_namespace_if_not_exists("other")
    theirs_table = theirs.create_table("other.orders", ours.schema(), partition_spec=ours.spec())
    for table, begin, low in ((ours, transaction_of, False), (theirs_table, lambda t: t.transaction(), True)):
        with (
            _counting(monkeypatch, TableMetadataV2, "__deepcopy__") as copies,
            _counting(monkeypatch, FromInputFile, "table_metadata") as reads,
        ):
            for batch in range(BATCHES):
                _append(table, batch, begin)
        if low:
            assert copies[0] >= BATCHES, copies
            assert reads[0] >= BATCHES, reads
        else:
            assert (copies[0], reads[0]) == (0, 0)


def test_a_commit_on_a_table_another_writer_changed_is_made_again_on_theirs(
    database: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two handles on the table: the one whose base another writer's commit replaced loses the swap (PyIceberg then
    loads the table again and commits on it), and the table keeps both snapshots, the later on the earlier."""
    catalog = _ours(database, tmp_path)
    first = _new_table(catalog)
    second = catalog.load_table("archive.orders")
    _append(first, 1)
    _append(second, 2)
    assert "concurrent update" in caplog.text  # the stale base's swap failed, and PyIceberg tried again
    table = catalog.load_table("archive.orders")
    one, two = table.metadata.snapshots
    assert _batches(table) == ["batch-1", "batch-2"]
    assert two.parent_snapshot_id == one.snapshot_id
    assert table.scan().to_arrow().num_rows == 480


def test_the_swap_moves_the_row_only_from_the_metadata_file_it_was_made_on(
    database: dict[str, Any], tmp_path: Path
) -> None:
    """The compare and swap that closes every commit: where another writer moved the table's row between the
    commit's read and its UPDATE, the UPDATE finds no row and the commit fails, the row left as the other made it."""
    from pyiceberg.exceptions import CommitFailedException

    catalog = _ours(database, tmp_path)
    stale = _new_table(catalog)
    _append(catalog.load_table("archive.orders"), 1)
    current = catalog.load_table("archive.orders").metadata_location
    with psycopg.connect(dsn(database)) as conn, conn.cursor() as cursor:
        with pytest.raises(CommitFailedException):
            catalog._swap(cursor, ("archive", "orders"), stale.metadata_location, "elsewhere")
        conn.rollback()
        catalog._swap(cursor, ("archive", "orders"), current, current)  # from the current file: it moves
    assert _batches(catalog.load_table("archive.orders")) == ["batch-1"]


def test_namespaces_and_tables_answer_as_pyicebergs_catalog_does(database: dict[str, Any], tmp_path: Path) -> None:
    from pyiceberg.exceptions import (
        NamespaceAlreadyExistsError,
        NamespaceNotEmptyError,
        NoSuchNamespaceError,
        NoSuchTableError,
        TableAlreadyExistsError,
    )

    ours = _ours(database, tmp_path)
    table = _new_table(ours)
    with pytest.raises(NamespaceAlreadyExistsError):
        ours.create_namespace("archive")
    with pytest.raises(TableAlreadyExistsError):
        ours.create_table("archive.orders", table.schema())
    with pytest.raises(NoSuchNamespaceError):
        ours.create_table("missing.orders", table.schema())
    ours.create_namespace("archive.nested_1", {"owner": "data"})
    ours.create_namespace("archivex")
    assert sorted(ours.list_namespaces()) == [("archive",), ("archivex",)]
    assert ours.list_namespaces("archive") == [("archive", "nested_1")]
    assert ours.load_namespace_properties("archive.nested_1") == {"owner": "data"}
    ours.update_namespace_properties("archive.nested_1", removals={"owner"}, updates={"team": "a"})
    assert ours.load_namespace_properties("archive.nested_1") == {"team": "a"}
    renamed = ours.rename_table("archive.orders", "archive.nested_1.orders")
    assert renamed.metadata_location == table.metadata_location
    assert ours.list_tables("archive.nested_1") == [("archive", "nested_1", "orders")]
    assert ours.list_tables("archive") == []
    theirs = _pyicebergs(database, tmp_path)
    assert theirs.list_tables("archive.nested_1") == [("archive", "nested_1", "orders")]
    assert sorted(theirs.list_namespaces()) == [("archive",), ("archivex",)]
    assert theirs.load_namespace_properties("archive.nested_1") == {"team": "a"}
    with pytest.raises(NamespaceNotEmptyError):
        ours.drop_namespace("archive.nested_1")
    ours.drop_table("archive.nested_1.orders")
    with pytest.raises(NoSuchTableError):
        ours.load_table("archive.nested_1.orders")
    with pytest.raises(NoSuchTableError):
        ours.drop_table("archive.nested_1.orders")
    ours.drop_namespace("archive.nested_1")
    assert not ours.namespace_exists("archive.nested_1")
    assert ours.namespace_exists("archive")
    registered = ours.register_table("archivex.orders", table.metadata_location)
    assert theirs.load_table("archivex.orders").metadata == registered.metadata


def test_a_lost_connection_is_opened_again(database: dict[str, Any], tmp_path: Path) -> None:
    ours = _ours(database, tmp_path)
    table = _new_table(ours)
    with psycopg.connect(dsn(database), autocommit=True) as admin:
        others = "SELECT pid FROM pg_stat_activity WHERE usename = current_user AND pid <> pg_backend_pid()"
        pids = [row[0] for row in admin.execute(others).fetchall()]
        assert len(pids) == 1, pids  # the catalog's one connection
        admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pids[0],))  # returns once it has gone
    with pytest.raises(psycopg.OperationalError):  # the statement on the lost connection fails, as SQLAlchemy's would
        ours.load_table("archive.orders")
    assert ours.load_table("archive.orders").metadata_location == table.metadata_location
