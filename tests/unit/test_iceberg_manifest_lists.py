"""The manifest lists and metadata files of cellar's commits (iceberg_manifest_lists.py, iceberg_commits.py's
metadata_file_bytes) hold what PyIceberg's own code writes, read back with PyIceberg's own readers, in a local
catalog (SQLite and a directory: PyIceberg's own, no server)."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import pytest

from jobs.archive import iceberg_manifest_lists
from jobs.archive.iceberg_commits import metadata_file_bytes, transaction_of
from tests.unit.test_iceberg_commits import BATCHES, _append, _fresh_table

VARYING = {0, 1, 6}  # manifest_path, manifest_length, added_snapshot_id: each table's own


def _decoded_lists(table: Any) -> list[list[Any]]:
    """Every snapshot's manifest list as PyIceberg decodes it from the file, oldest snapshot first."""
    from pyiceberg.manifest import read_manifest_list

    return [list(read_manifest_list(table.io.new_input(s.manifest_list))) for s in table.metadata.snapshots]


def _comparable(table: Any) -> list[list[tuple[Any, ...]]]:
    """The lists' entries, each as its values, the ones that differ between tables (paths, lengths, snapshot ids)
    replaced by the position of the snapshot that added the manifest."""
    order = {s.snapshot_id: n for n, s in enumerate(table.metadata.snapshots)}
    return [
        [
            (order[entry.added_snapshot_id], *(value for n, value in enumerate(entry._data) if n not in VARYING))
            for entry in entries
        ]
        for entries in _decoded_lists(table)
    ]


def _pyicebergs_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undo iceberg_manifest_lists.install() for the rest of the test."""
    import pyiceberg.manifest
    from pyiceberg.manifest import ManifestListWriter, ManifestListWriterV2
    from pyiceberg.table import snapshots

    iceberg_manifest_lists.install()
    monkeypatch.setattr(ManifestListWriterV2, "add_manifests", ManifestListWriter.add_manifests)
    monkeypatch.setattr(snapshots, "_manifests", pyiceberg.manifest._manifests)


def test_the_manifest_lists_are_the_ones_pyiceberg_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours = _fresh_table(tmp_path / "ours")
    for batch in range(BATCHES):
        _append(ours, batch, transaction_of)
    _pyicebergs_lists(monkeypatch)
    theirs = _fresh_table(tmp_path / "theirs")
    for batch in range(BATCHES):
        _append(theirs, batch, lambda t: t.transaction())
    found = _comparable(ours)
    assert found == _comparable(theirs)
    assert [len(entries) for entries in found] == list(range(1, BATCHES + 1))  # a fast append adds one manifest
    assert ours.scan().to_arrow().num_rows == BATCHES * 240


def test_an_entry_kept_encoded_is_the_encoding_of_its_values(tmp_path: Path) -> None:
    """Each kept entry's bytes are what PyIceberg's writer makes of the entry as decoded from the file."""
    from pyiceberg.avro.encoder import BinaryEncoder
    from pyiceberg.avro.resolver import resolve_writer
    from pyiceberg.manifest import DEFAULT_READ_VERSION, MANIFEST_LIST_FILE_SCHEMAS

    table = _fresh_table(tmp_path / "ours")
    for batch in range(4):
        _append(table, batch, transaction_of)
    writer = resolve_writer(
        record_schema=MANIFEST_LIST_FILE_SCHEMAS[DEFAULT_READ_VERSION], file_schema=MANIFEST_LIST_FILE_SCHEMAS[2]
    )
    checked = 0
    for entry in _decoded_lists(table)[-1]:
        buffer = io.BytesIO()
        writer.write(BinaryEncoder(buffer), entry)
        assert iceberg_manifest_lists._written.encoded[iceberg_manifest_lists._entry_key(entry)] == buffer.getvalue()
        checked += 1
    assert checked == 4
    assert len(iceberg_manifest_lists._written.encoded) == 4  # the last list's entries, no more


def test_the_parents_list_is_served_as_pyiceberg_decodes_it(tmp_path: Path) -> None:
    from pyiceberg.table import snapshots

    table = _fresh_table(tmp_path / "ours")
    for batch in range(3):
        _append(table, batch, transaction_of)
    current = table.metadata.current_snapshot()
    served = snapshots._manifests(table.io, current.manifest_list)
    assert served is iceberg_manifest_lists._written.lists[current.manifest_list]  # not read from the file
    assert [tuple(m._data) for m in served] == [tuple(m._data) for m in _decoded_lists(table)[-1]]


def test_the_metadata_file_is_the_one_pyiceberg_writes(tmp_path: Path) -> None:
    """metadata_file_bytes against PyIceberg's ToOutputFile, plain and gzip, after each of several commits (the
    snapshots' JSON kept from one file to the next); PyIceberg parses it into the same metadata."""
    from pyiceberg.serializers import FromInputFile, ToOutputFile

    table = _fresh_table(tmp_path / "ours")
    for batch in range(5):
        _append(table, batch, transaction_of)
        for name in ("v.metadata.json", "v.gz.metadata.json"):
            theirs = tmp_path / f"theirs-{batch}-{name}"
            ToOutputFile.table_metadata(table.metadata, table.io.new_output(f"file://{theirs}"))
            ours = tmp_path / f"ours-{batch}-{name}"
            ours.write_bytes(metadata_file_bytes(table.metadata, str(ours)))
            unpack = gzip.decompress if name.startswith("v.gz") else bytes
            assert json.loads(unpack(ours.read_bytes())) == json.loads(unpack(theirs.read_bytes()))
            assert FromInputFile.table_metadata(table.io.new_input(f"file://{ours}")) == table.metadata
    assert len(json.loads((tmp_path / "ours-4-v.metadata.json").read_bytes())["snapshots"]) == 5
