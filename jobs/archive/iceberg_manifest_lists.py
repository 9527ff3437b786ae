"""Manifest lists at a cost that grows slowly with the manifests a table has.

Each fast append writes a manifest list that names every manifest of the table: its own new one, then all those its
parent's list named. PyIceberg reads the parent's list back from the store and decodes every entry, copies each
entry, and encodes each again, all in Python: at 1,000 snapshots that was about 25 ms of CPU per commit, most of a
commit's cost, and it grows with every batch a run archives.

Here, for tables of format version 2 (the version cellar creates; others go through PyIceberg's own code):
- an entry whose sequence numbers are assigned is written as it is (PyIceberg's writer would write an unchanged
  copy of it), from the bytes it was encoded to in the last list this process wrote, so a commit encodes only its
  own new entry (what is kept is one list's bytes, however many commits a run makes);
- the entries of the last lists this process wrote are kept, so the next commit's read of its parent's list is
  served from them, not decoded again.

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

LISTS_KEPT = 4  # a commit reads the list the run's previous commit wrote


class _Written:
    """What the last manifest lists this process wrote hold: the entries of each (by location), and the encoded
    bytes of the last one's entries (by _entry_key), which are all the next list needs but its own new entry. So
    what is kept is as large as one list, however many commits a run makes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lists: collections.OrderedDict[str, tuple[Any, ...]] = collections.OrderedDict()
        self.encoded: dict[tuple[Any, ...], bytes] = {}

    def wrote(self, location: str, entries: tuple[Any, ...], encoded: dict[tuple[Any, ...], bytes]) -> None:
        with self.lock:
            self.encoded = encoded
            self.lists[location] = entries
            while len(self.lists) > LISTS_KEPT:
                self.lists.popitem(last=False)


_written = _Written()


def _entry_key(manifest: Any) -> tuple[Any, ...]:
    return (manifest.manifest_path, manifest.sequence_number, manifest.min_sequence_number, manifest.added_snapshot_id)


class _KeptEntries:
    """The Avro writer of a version 2 manifest list's entries: an entry the last list held is written as it was
    encoded then; every entry's bytes are collected for the next list."""

    def __init__(self, inner: Any, known: dict[tuple[Any, ...], bytes]) -> None:
        self.inner = inner
        self.known = known
        self.encoded: dict[tuple[Any, ...], bytes] = {}

    def write(self, encoder: Any, manifest: Any) -> None:
        from pyiceberg.avro.encoder import BinaryEncoder

        key = _entry_key(manifest)
        encoded = self.known.get(key)
        if encoded is None:
            buffer = io.BytesIO()
            self.inner.write(BinaryEncoder(buffer), manifest)
            encoded = buffer.getvalue()
        self.encoded[key] = encoded
        encoder.write(encoded)


def _add_manifests(self: Any, manifest_files: list[Any]) -> Any:
    """ManifestListWriterV2.add_manifests: an entry that needs no sequence number is not copied, and the entries are
    written by _KeptEntries; the list's entries are kept for the read of the next commit."""
    from pyiceberg.manifest import UNASSIGNED_SEQ

    writer = self._writer
    inner = writer.writer.inner if isinstance(writer.writer, _KeptEntries) else writer.writer
    with _written.lock:
        known = _written.encoded
    writer.writer = entries_writer = _KeptEntries(inner, known)
    entries = tuple(
        manifest
        if UNASSIGNED_SEQ not in (manifest.sequence_number, manifest.min_sequence_number)
        else self.prepare_manifest(manifest)
        for manifest in manifest_files
    )
    writer.write_block(list(entries))
    _written.wrote(self._output_file.location, entries, entries_writer.encoded)
    return self


def _manifests_of(read: Any) -> Any:
    """PyIceberg's reading of a snapshot's manifest list, served from _written where this process wrote it."""

    def manifests(file_io: Any, manifest_list: str) -> tuple[Any, ...]:
        with _written.lock:
            entries = _written.lists.get(manifest_list)
        return entries if entries is not None else read(file_io, manifest_list)

    return manifests


@functools.cache
def install() -> None:
    """Write and read this process's version 2 manifest lists as the module doc says (once per process)."""
    from pyiceberg.manifest import ManifestListWriterV2
    from pyiceberg.table import snapshots

    ManifestListWriterV2.add_manifests = _add_manifests  # type: ignore[method-assign]
    snapshots._manifests = _manifests_of(snapshots._manifests)  # type: ignore[attr-defined]
