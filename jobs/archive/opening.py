"""What archive and unarchive check and open before any work (OpenedTable): the settings, a connection, the store
(its bucket checked), the table (checked against the spec), the storage prefix claimed where the run writes, and
how to open more connections, binary readers and the Iceberg table."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from common.db import connect
from common.encryption import Identities, resolve_keys
from common.kube import TABLE_ARCHIVE
from common.ownership import Area, Owner, claim_prefix, released_on_failure, take_over_from
from common.runtime import RunContext
from common.secrets import DatabaseSettings, StorageCredentials
from common.storage import ObjectStore, open_store
from jobs.archive.arrow_reads import ArrowReader, open_reader
from jobs.archive.iceberg import Chooser, IcebergTable
from jobs.archive.iceberg_catalog import CatalogAccess
from jobs.archive.iceberg_rest import resolve_rest_credentials
from jobs.archive.objects import ObjectLayout
from jobs.archive.settings import DEFAULT_TUNING, ArchiveSettings, Tuning, parse_archive_spec
from jobs.archive.table import Connection, TableInfo, check_cascades, describe_table

APPLICATION = "cellar-archive"


class IcebergOpener(Protocol):
    """Opens the catalog and makes or checks the table, for the table as the run describes it; `choose` decides
    partitionBy: Auto for a table it creates."""

    def __call__(self, described: TableInfo, choose: Chooser | None = None) -> IcebergTable: ...


@dataclass(frozen=True)
class OpenedTable:
    """What archive and unarchive check and open before any work: settings, a connection, the store
    (bucket checked), the table (checked against the spec), and how to open one more connection."""

    settings: ArchiveSettings
    conn: Connection
    store: ObjectStore
    info: TableInfo
    open_connection: Callable[[], Connection]
    recipients: list[str]  # spec.encryption: what new objects are encrypted to (none: not encrypted)
    identities: Identities | None  # what reads encrypted objects back (unarchive, leftovers)
    open_reader: Callable[[], ArrowReader] | None = None  # whole partitions' binary reads (arrow_reads.py)
    # Wraps the run: a failed first run takes back the owner record it wrote while nothing else is there.
    owning: contextlib.AbstractContextManager[None] = field(default_factory=contextlib.nullcontext)
    # format: Iceberg: opens the catalog and makes or checks the table, for the table as the run describes it.
    open_iceberg: IcebergOpener | None = None
    iceberg_access: CatalogAccess | None = None  # format: Iceberg: how the catalog and the files are reached


def open_table(ctx: RunContext, tuning: Tuning = DEFAULT_TUNING, *, writes_to_store: bool = True) -> OpenedTable:
    """`writes_to_store`: the run writes (and deletes leftovers) under the prefix, so it must own the table's
    folder there (common.ownership); unarchive only reads it, so it may load another resource's archive (into
    another database, say) and claims nothing."""
    settings = parse_archive_spec(ctx.spec)
    database = ctx.secrets.database(settings.database)
    credentials = ctx.secrets.storage_credentials(settings.storage)
    # Requests at once: a batch's objects (tuning.upload_concurrency) and each lane's manifest.
    concurrency = tuning.upload_concurrency + settings.parallelism
    store = open_store(settings.storage, credentials, concurrency=concurrency)
    store.check_access()
    recipients, identities = resolve_keys(ctx.secrets, settings.encryption)
    # Every statement of the run waits at most spec.lockTimeout for a lock (a batch sets it again per
    # transaction, as the spec may change mid-run): a table another session holds is a named, retryable failure.
    conn = connect(database, lock_timeout=settings.lock_timeout)
    try:
        info = describe_table(conn, settings)
        check_cascades(conn, info, settings)
        conn.rollback()
        owning: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if writes_to_store:
            # Before the first write (leftovers of crashed runs are deleted next): a prefix another TableArchive
            # owns holds objects its ledger, not this one's, describes.
            me = Owner.of(TABLE_ARCHIVE.kind, ctx.ref.namespace, ctx.ref.name, ctx.resource)
            area = Area.of_archive(store, settings.relation)
            dry_run = ctx.dry_run or settings.dry_run
            claimed = claim_prefix(area, me, take_over=take_over_from(ctx.resource), dry_run=dry_run)
            layout = ObjectLayout(store, settings)
            owning = released_on_failure(area, me, claimed, [layout.data_prefix, layout.manifest_prefix])
    except BaseException:
        conn.close()
        raise
    open_iceberg = None
    access = _catalog_access(ctx, settings, database, credentials, store)
    if access is not None:

        def open_iceberg(described: TableInfo, choose: Chooser | None = None) -> IcebergTable:
            return IcebergTable.open(settings, described, access, create=writes_to_store, choose=choose)

    return OpenedTable(
        settings,
        conn,
        store,
        info,
        lambda: connect(database, lock_timeout=settings.lock_timeout),
        recipients,
        identities,
        (lambda: open_reader(database)) if tuning.arrow_reads else None,
        owning,
        open_iceberg,
        access,
    )


def _catalog_access(
    ctx: RunContext,
    settings: ArchiveSettings,
    database: DatabaseSettings,
    credentials: StorageCredentials,
    store: ObjectStore,
) -> CatalogAccess | None:
    """format: Iceberg: how the run reaches the catalog and the table's files (None: format Parquet)."""
    if settings.iceberg is None:
        return None
    catalog = settings.iceberg.catalog
    if catalog.rest is not None:  # a REST catalog keeps its own tables: no database of its own here
        rest_credentials = resolve_rest_credentials(ctx.secrets, catalog.rest)
        return CatalogAccess(None, credentials, store.key(settings.relation), rest_credentials, store)
    catalog_database = database if catalog.database is None else ctx.secrets.database(catalog.database)
    return CatalogAccess(catalog_database, credentials, store.key(settings.relation), store=store)
