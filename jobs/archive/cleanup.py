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


def clean_leftovers(conn: Connection, store: ObjectStore, settings: ArchiveSettings, info: TableInfo) -> list[str]:
    """Delete objects (and their manifests) that no ledger row describes and whose rows are all safe."""
    layout = ObjectLayout(store, settings)
    recorded = ledger.recorded_keys(conn, settings.relation)
    conn.rollback()
    deleted: list[str] = []
    manifests = {o["Key"] for o in store.list_objects(layout.manifest_prefix)}
    for listed in list(store.list_objects(layout.data_prefix)):
        key = listed["Key"]
        if key in recorded:
            continue
        name = key.rsplit("/", 1)[1].rsplit(".", 2 if key.endswith(".csv.gz") else 1)[0]
        manifest_key = layout.manifest_key(name)
        if settings.mode == "Move" and manifest_key in manifests:
            manifest = json.loads(store.get_bytes(manifest_key))
            table = read_verified(store, manifest, info.columns)
            present = rows_still_in_table(conn, settings, info, table)
            conn.rollback()
            if present != table.num_rows:
                log.error(
                    "leftover object whose rows are not all in the table: left in place",
                    extra={"key": key, "rows": table.num_rows, "in_table": present},
                )
                continue
        elif settings.mode == "Move":
            log.error("leftover object without a manifest: left in place", extra={"key": key})
            continue
        store.delete(key)
        deleted.append(key)
        if manifest_key in manifests:
            store.delete(manifest_key)
            manifests.discard(manifest_key)
    recorded_manifests = {
        k for k in manifests if any(k.endswith(r.rsplit("/", 1)[1].rsplit(".", 1)[0] + ".json") for r in recorded)
    }
    for orphan in manifests - recorded_manifests:
        data_names = {o["Key"].rsplit("/", 1)[1] for o in store.list_objects(layout.data_prefix)}
        stem = orphan.rsplit("/", 1)[1].removesuffix(".json")
        if not any(n.startswith(stem) for n in data_names):
            store.delete(orphan)  # a manifest whose object was already cleaned up
            deleted.append(orphan)
    if deleted:
        log.info("cleaned up leftovers of crashed runs", extra={"keys": deleted})
    return deleted
