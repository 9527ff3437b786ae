"""Leftovers of crashed runs: objects no committed ledger row describes.

An object without a ledger row was uploaded by a batch whose transaction never committed, so in Move
mode its rows must all still be in the table. That is checked before anything is deleted; an object
whose rows are not all there is left in place and reported, never deleted.
"""

from __future__ import annotations

import json
import logging

import pyarrow as pa
from psycopg import sql

from common.storage import ObjectStore
from jobs.archive import ledger
from jobs.archive.archiver import Connection, ObjectLayout, read_verified, table_name
from jobs.archive.encoding import decode
from jobs.archive.settings import ArchiveSettings
from jobs.archive.table import TableInfo

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
    query = sql.SQL("SELECT count(*) FROM {} t JOIN unnest({}) AS k({}) ON {}").format(
        table_name(settings), arrays, sql.SQL(", ").join(sql.Identifier(k) for k in keys), join
    )
    row = conn.execute(query).fetchone()
    return int(str(row[0])) if row else 0


def _leftover_rows(
    store: ObjectStore, settings: ArchiveSettings, info: TableInfo, key: str, manifest_key: str | None
) -> pa.Table:
    """A leftover's rows: checked against its manifest when the run got that far, else read as they are
    (a run killed between the object and its manifest leaves an object that is still self-describing)."""
    if manifest_key is not None:
        return read_verified(store, json.loads(store.get_bytes(manifest_key)), info.columns)
    return decode(store.get_bytes(key), settings.format, info.columns)


def clean_leftovers(conn: Connection, store: ObjectStore, settings: ArchiveSettings, info: TableInfo) -> list[str]:
    """Delete objects (and their manifests) that no ledger row describes and whose rows are all safe.

    Runs with the table's archive lock held, so no batch of another run is in flight.
    """
    layout = ObjectLayout(store, settings)
    recorded = ledger.recorded_keys(conn, settings.relation)
    conn.rollback()
    manifests = {o["Key"] for o in store.list_objects(layout.manifest_prefix)}
    recorded_manifests = {layout.manifest_key(_stem(k)) for k in recorded}
    deleted: list[str] = []
    data_stems = set()
    for listed in list(store.list_objects(layout.data_prefix)):
        key = listed["Key"]
        data_stems.add(_stem(key))
        if key in recorded:
            continue
        manifest_key = layout.manifest_key(_stem(key))
        if settings.mode == "Move":
            try:
                table = _leftover_rows(store, settings, info, key, manifest_key if manifest_key in manifests else None)
            except Exception as exc:  # noqa: BLE001 (an unreadable leftover is reported and kept, never deleted)
                log.error("unreadable leftover object: left in place", extra={"key": key, "error": str(exc)})
                continue
            present = rows_still_in_table(conn, settings, info, table)
            conn.rollback()
            if present != table.num_rows:
                log.error(
                    "leftover object whose rows are not all in the table: left in place",
                    extra={"key": key, "rows": table.num_rows, "in_table": present},
                )
                continue
        store.delete(key)
        deleted.append(key)
        if manifest_key in manifests:
            store.delete(manifest_key)
            manifests.discard(manifest_key)
    for orphan in manifests - recorded_manifests:
        if _stem(orphan) not in data_stems:  # a manifest whose object is already gone
            store.delete(orphan)
            deleted.append(orphan)
    if deleted:
        log.info("cleaned up leftovers of crashed runs", extra={"keys": deleted})
    return deleted


def _stem(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    for suffix in (".parquet", ".csv.gz", ".json"):
        name = name.removesuffix(suffix)
    return name
