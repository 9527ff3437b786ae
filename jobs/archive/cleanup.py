"""Leftovers of crashed runs: objects no committed ledger row describes.

An object without a ledger row was uploaded by a batch whose transaction never committed, so in Move
mode its rows must all still be in the table. That is checked before anything is deleted; an object
whose rows are not all there is left in place and reported, never deleted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pyarrow as pa
from psycopg import sql

from common.encryption import EXTENSION as ENCRYPTED_EXTENSION
from common.encryption import Identities
from common.storage import ObjectStore
from jobs.archive import ledger
from jobs.archive.encoding import decode
from jobs.archive.manifest import BatchManifest
from jobs.archive.objects import ObjectLayout, batch_of, decrypt_object, read_verified
from jobs.archive.settings import ArchiveSettings
from jobs.archive.statements import table_name
from jobs.archive.table import Connection, TableInfo

log = logging.getLogger(__name__)


def rows_still_in_table(conn: Connection, settings: ArchiveSettings, info: TableInfo, table: pa.Table) -> int:
    """How many of `table`'s rows (by primary key) are in the source table."""
    keys = list(info.primary_key)
    arrays = sql.SQL(", ").join(
        sql.SQL("{}::{}[]").format(
            sql.Literal([None if v is None else str(v) for v in table.column(k).to_pylist()]),
            sql.SQL(info.column(k).pg_type),
        )
        for k in keys
    )
    join = sql.SQL(" AND ").join(sql.SQL("t.{0} = k.{0}").format(sql.Identifier(k)) for k in keys)
    columns = sql.SQL(", ").join(sql.Identifier(k) for k in keys)
    # A partition archived whole is detached before it is read: a crashed run's objects of it have their rows
    # there (partitions.py), not in the parent.
    sources = [
        table_name(settings),
        *(sql.SQL(name) for name in ledger.pending_partitions(conn, settings.relation, detached_only=True)),
    ]
    union = sql.SQL(" UNION ").join(sql.SQL("SELECT {} FROM {}").format(columns, source) for source in sources)
    query = sql.SQL("SELECT count(*) FROM ({}) t JOIN unnest({}) AS k({}) ON {}").format(union, arrays, columns, join)
    row = conn.execute(query).fetchone()
    return int(str(row[0])) if row else 0


def _leftover_rows(
    store: ObjectStore,
    settings: ArchiveSettings,
    info: TableInfo,
    key: str,
    manifest: BatchManifest | None,
    identities: Identities | None,
) -> pa.Table:
    """A leftover's rows: checked against its batch's manifest when the run got that far, else read as
    they are (a run killed between its objects and their manifest leaves self-describing objects). An
    encrypted one needs `identities` (spec.encryption.identitySecretRef); without, it is kept."""
    described = manifest.object(key) if manifest is not None else None
    if manifest is not None and described is not None:
        return read_verified(store, manifest, described, info.columns, identities)
    body = store.get_bytes(key)
    if key.endswith(ENCRYPTED_EXTENSION):
        body = decrypt_object(body, key, identities)
    return decode(body, settings.format, info.columns)


@dataclass
class _MoveCheck:
    """Whether a Move-mode leftover's rows are all still in the table (only then may it go), reading each batch's
    manifest once."""

    conn: Connection
    store: ObjectStore
    settings: ArchiveSettings
    info: TableInfo
    identities: Identities | None
    manifest_keys: set[str]
    manifests: dict[str, BatchManifest | None] = field(default_factory=dict)

    def rows_all_in_table(self, key: str, batch: str) -> bool:
        manifest_key = ObjectLayout(self.store, self.settings).manifest_key(batch)
        if batch not in self.manifests:
            self.manifests[batch] = (
                BatchManifest.read(self.store.get_bytes(manifest_key), manifest_key)
                if manifest_key in self.manifest_keys
                else None
            )
        try:
            table = _leftover_rows(self.store, self.settings, self.info, key, self.manifests[batch], self.identities)
        except Exception as exc:  # noqa: BLE001 (an unreadable leftover is reported and kept, never deleted)
            log.error("unreadable leftover object: left in place", extra={"key": key, "error": str(exc)})
            return False
        present = rows_still_in_table(self.conn, self.settings, self.info, table)
        self.conn.rollback()
        if present != table.num_rows:
            log.error(
                "leftover object whose rows are not all in the table: left in place",
                extra={"key": key, "rows": table.num_rows, "in_table": present},
            )
            return False
        return True


def clean_leftovers(
    conn: Connection,
    store: ObjectStore,
    settings: ArchiveSettings,
    info: TableInfo,
    identities: Identities | None = None,
) -> list[str]:
    """Delete objects that no ledger row describes and whose rows are all still in the table, and
    manifests of batches that never committed once none of their objects is left.

    Runs with the table's archive lock held, so no batch of another run is in flight.
    """
    layout = ObjectLayout(store, settings)
    recorded = ledger.recorded_keys(conn, settings.relation)
    conn.rollback()
    committed_batches = {batch_of(k) for k in recorded}
    manifest_keys = {o.key for o in store.list_objects(layout.manifest_prefix)}
    check = _MoveCheck(conn, store, settings, info, identities, manifest_keys)
    deleted: list[str] = []
    kept_batches: set[str | None] = set()
    for listed in list(store.list_objects(layout.data_prefix)):
        key = listed.key
        batch = batch_of(key)
        if key in recorded:
            continue
        if batch is None:
            log.warning("object not written by cellar under the archive prefix: left alone", extra={"key": key})
            continue
        if settings.mode == "Move" and not check.rows_all_in_table(key, batch):
            kept_batches.add(batch)
        elif store.delete_leftover(key):
            deleted.append(key)
        else:
            kept_batches.add(batch)
    for manifest_key in manifest_keys:
        batch = manifest_key.rsplit("/", 1)[-1].removesuffix(".json")
        # A batch that never committed, and none of its objects is left.
        if batch not in committed_batches and batch not in kept_batches and store.delete_leftover(manifest_key):
            deleted.append(manifest_key)
    if deleted:
        log.info("cleaned up leftovers of crashed runs", extra={"keys": deleted})
    return deleted
