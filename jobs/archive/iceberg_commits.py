"""The new metadata of a commit to an archive's Iceberg table, at a cost that does not grow with the snapshots the
table keeps.

PyIceberg works out a commit's new table metadata (`update_table_metadata`) and then deep-copies all of it, every
snapshot the table keeps included. Its Transaction does that at every read of the staged metadata (about 14 times a
fast append), and its SQL catalog once more for the commit, after reading the table's current metadata file back
from the store and parsing it. A run of 160 batches spent most of its commit time there: 25 ms of CPU for the first
commit, 145 ms for the 160th.

Here the metadata is worked out without the closing deep copy: PyIceberg's metadata models are frozen, and each
update replaces what it changes (a new list of snapshots, a new dict of refs) rather than changing the base's, so the
result may share the unchanged parts with the base. The transaction works it out once per change, not at every read;
the catalog's side is iceberg_sql_catalog.py's (and a REST catalog's server's).

The metadata file lists every snapshot, so encoding it grows with them too (8 ms of a commit's CPU at 1,000
snapshots). Snapshots never change once made, so each one's JSON is encoded once and kept (`metadata_file_bytes`).
"""

from __future__ import annotations

import functools
import threading
from datetime import datetime
from typing import Any


def staged_metadata(base: Any, updates: tuple[Any, ...], metadata_location: str | None = None) -> Any:
    """`base` with `updates` applied, as PyIceberg's update_table_metadata gives it for a table that exists, without
    the deep copy: the updates one by one, then (where any changed something) the base's file entered in the
    metadata log when `metadata_location` names it, and last-updated-ms moved to now where no update moved it."""
    from pyiceberg.table.update import _apply_table_update, _TableMetadataUpdateContext, _update_table_metadata_log
    from pyiceberg.utils.datetime import datetime_to_millis

    context = _TableMetadataUpdateContext()
    metadata = base
    for update in updates:
        metadata = _apply_table_update(update, metadata, context)
    if context.has_changes():
        if metadata_location:
            metadata = _update_table_metadata_log(metadata, metadata_location, base.last_updated_ms)
        if metadata.last_updated_ms == base.last_updated_ms:
            now = datetime_to_millis(datetime.now().astimezone())
            metadata = metadata.model_copy(update={"last_updated_ms": now})
    metadata.spec().check_compatible(metadata.schema())
    metadata.sort_order().check_compatible(metadata.schema())
    return metadata


@functools.cache
def _transaction_class() -> Any:
    """PyIceberg's Transaction, with the staged metadata worked out once per change (staged_metadata), not at every
    read. It is worked out anew when the table's metadata or the staged updates change: both are replaced, never
    changed in place."""
    from pyiceberg.table import Transaction

    class MetadataOnceTransaction(Transaction):
        _worked_out: tuple[Any, Any, Any] | None = None  # (the table's metadata, the staged updates, the result)

        @property
        def table_metadata(self) -> Any:
            worked_out = self._worked_out
            if not self._updates:  # nothing staged: the table's own metadata
                return self._table.metadata
            if worked_out is None or worked_out[0] is not self._table.metadata or worked_out[1] is not self._updates:
                result = staged_metadata(self._table.metadata, self._updates)
                worked_out = self._worked_out = (self._table.metadata, self._updates, result)
            return worked_out[2]

    return MetadataOnceTransaction


def transaction_of(table: Any) -> Any:
    """A transaction on `table` that reads its staged metadata cheaply (_transaction_class) and writes its manifest
    list at a cost that grows slowly with the table's manifests (iceberg_manifest_lists.py)."""
    from jobs.archive import iceberg_manifest_lists

    iceberg_manifest_lists.install()
    return _transaction_class()(table)


def fast_append(table: Any, data_files: list[Any], properties: dict[str, str]) -> None:
    """Commit `data_files` to `table` as one snapshot whose summary carries `properties` (transaction_of's fast
    append); raises CommitFailedException where another writer committed first."""
    with (
        transaction_of(table) as transaction,
        transaction.update_snapshot(snapshot_properties=properties).fast_append() as append,
    ):
        for data_file in data_files:
            append.append_data_file(data_file)


class _SnapshotsJson:
    """The JSON of the snapshots of the metadata file this process wrote last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # id of a snapshot: (the snapshot, its JSON). The snapshot is held so that its id is not reused while kept.
        self._kept: dict[int, tuple[Any, str]] = {}

    def of(self, snapshots: list[Any]) -> list[str]:
        with self._lock:
            known = self._kept
            self._kept = {id(s): known.get(id(s)) or (s, s.model_dump_json()) for s in snapshots}
            return [self._kept[id(s)][1] for s in snapshots]


_snapshots_json = _SnapshotsJson()


def metadata_file_bytes(metadata: Any, location: str) -> bytes:
    """The metadata file at `location` (compressed as its name says), as PyIceberg's ToOutputFile writes it, with
    each snapshot's JSON encoded once: the snapshots of the metadata files this process wrote last are kept. Version
    1 metadata, and the legacy-current-snapshot-id setting, go through PyIceberg's own encoding."""
    from pyiceberg.serializers import Compressor
    from pyiceberg.utils.config import Config

    if metadata.format_version < 2 or not metadata.snapshots or Config().get_bool("legacy-current-snapshot-id"):
        text = metadata.model_dump_json()
    else:
        rest = metadata.model_dump_json(exclude={"snapshots"})
        snapshots = ",".join(_snapshots_json.of(metadata.snapshots))
        text = f'{rest[:-1]},"snapshots":[{snapshots}]}}'
    return bytes(Compressor.get_compressor(location).bytes_compressor()(text.encode()))
