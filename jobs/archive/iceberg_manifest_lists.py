"""Manifest lists at a cost that grows slowly with the manifests a table has.

Each fast append writes a manifest list that names every manifest of the table: its own new one, then all those its
parent's list named. PyIceberg reads the parent's list back from the store and decodes every entry, copies each
entry, and encodes each again, all in Python: at 1,000 snapshots that was about 25 ms of CPU per commit, most of a
commit's cost, and it grows with every batch a run archives.

Here, for tables of format version 2 (the version cellar creates; others go through PyIceberg's own code):
- an entry whose sequence numbers are assigned is written as it is (PyIceberg's writer would write an unchanged
  copy of it) from its encoded bytes kept in `_encoded_entries`, so a commit encodes only its own new entry;
- the entries of the last lists this process wrote are kept (`_written_lists`), so the next commit's read of its
  parent's list is served from them, not decoded again.

An entry is kept by its path, sequence numbers and the snapshot that added it: a manifest file is never rewritten
(each has a fresh UUID in its name), and all its other values (length, counts, partition summaries) describe that
file. A unit test (test_iceberg_manifest_lists.py) reads the lists written here with PyIceberg's reader and finds
them equal to the lists PyIceberg writes, and finds the served entries equal to the ones it decodes.
"""

from __future__ import annotations

import collections
import functools
import io
import threading
from typing import Any

ENCODED_ENTRIES_KEPT = 50_000  # about 10 MB at most; a table of more manifests encodes each entry every time
LISTS_KEPT = 4  # a commit reads the list the run's previous commit wrote

_lock = threading.Lock()
_encoded_entries: dict[tuple[Any, ...], bytes] = {}
_written_lists: collections.OrderedDict[str, tuple[Any, ...]] = collections.OrderedDict()


def _entry_key(manifest: Any) -> tuple[Any, ...]:
    return (manifest.manifest_path, manifest.sequence_number, manifest.min_sequence_number, manifest.added_snapshot_id)


class _KeptEntries:
    """The Avro writer of a version 2 manifest list's entries, writing an entry encoded before as it was encoded."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def write(self, encoder: Any, manifest: Any) -> None:
        from pyiceberg.avro.encoder import BinaryEncoder

        key = _entry_key(manifest)
        encoded = _encoded_entries.get(key)
        if encoded is None:
            buffer = io.BytesIO()
            self.inner.write(BinaryEncoder(buffer), manifest)
            encoded = buffer.getvalue()
            with _lock:
                if len(_encoded_entries) >= ENCODED_ENTRIES_KEPT:
                    _encoded_entries.clear()
                _encoded_entries[key] = encoded
        encoder.write(encoded)


def _add_manifests(self: Any, manifest_files: list[Any]) -> Any:
    """ManifestListWriterV2.add_manifests: an entry that needs no sequence number is not copied, and the entries are
    written by _KeptEntries; the list's entries are kept for the read of the next commit."""
    from pyiceberg.manifest import UNASSIGNED_SEQ

    writer = self._writer
    if not isinstance(writer.writer, _KeptEntries):
        writer.writer = _KeptEntries(writer.writer)
    entries = tuple(
        manifest
        if UNASSIGNED_SEQ not in (manifest.sequence_number, manifest.min_sequence_number)
        else self.prepare_manifest(manifest)
        for manifest in manifest_files
    )
    writer.write_block(list(entries))
    with _lock:
        _written_lists[self._output_file.location] = entries
        while len(_written_lists) > LISTS_KEPT:
            _written_lists.popitem(last=False)
    return self


def _manifests_of(read: Any) -> Any:
    """PyIceberg's reading of a snapshot's manifest list, served from _written_lists where this process wrote it."""

    def manifests(file_io: Any, manifest_list: str) -> tuple[Any, ...]:
        with _lock:
            entries = _written_lists.get(manifest_list)
        return entries if entries is not None else read(file_io, manifest_list)

    return manifests


@functools.cache
def install() -> None:
    """Write and read this process's version 2 manifest lists as the module doc says (once per process)."""
    from pyiceberg.manifest import ManifestListWriterV2
    from pyiceberg.table import snapshots

    ManifestListWriterV2.add_manifests = _add_manifests  # type: ignore[method-assign]
    snapshots._manifests = _manifests_of(snapshots._manifests)  # type: ignore[attr-defined]
