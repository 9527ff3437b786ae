"""`cellar-backup list`: the backups in storage, as a table for people or JSON for scripts.

The same catalog a restore picks "the newest" from (take_inventory), with what else matters when choosing
one: size, compression, encryption, the last restore test, the retention rules that keep it, and the
object lock that holds it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from common.errors import CellarError
from common.kube import DATABASE_BACKUP
from common.ownership import Area, readable_by, take_over_from
from common.runtime import RunContext
from common.storage import ObjectStore
from jobs.backup.backup.preflight import APPLICATION as BACKUP_APPLICATION
from jobs.backup.backup.preflight import me, open_storage
from jobs.backup.backup.retention import retention_reasons
from jobs.backup.catalog import Manifest
from jobs.backup.inventory import take_inventory
from jobs.backup.settings import BackupSettings, parse_backup_spec
from jobs.backup.status import human_size


@dataclass(frozen=True)
class ListedBackup:
    backup_id: str
    completed: str
    databases: list[str]
    server_version: str
    bytes_stored: int
    bytes_raw: int
    compression: str
    encrypted_to: list[str]  # recipient fingerprints; empty: not encrypted
    with_globals: bool  # the server's roles and tablespaces are stored with it
    files: int  # a directory dump's (spec.parallelism) objects; 0: one object a database
    verified: str  # "passed" or "failed" (the resource's last restore test of it), or ""
    kept_by: list[str]  # retention rules that keep it
    locked: str  # what an object lock says, or ""
    key: str


def list_backups(
    store: ObjectStore, readable: frozenset[str], settings: BackupSettings, status: dict[str, Any], now: datetime
) -> list[ListedBackup]:
    inventory = take_inventory(store, readable)
    reasons = retention_reasons(inventory.backups, settings.retention, now)
    verification = status.get("lastVerification") or {}
    listed = []
    for manifest in inventory.backups:
        lock = store.lock_of(manifest.manifest_key) if settings.storage.object_lock else None
        listed.append(
            ListedBackup(
                backup_id=manifest.backup_id,
                completed=manifest.end_time,
                databases=manifest.databases,
                server_version=manifest.server_version,
                bytes_stored=manifest.bytes_stored,
                bytes_raw=manifest.bytes_raw,
                compression=manifest.compression,
                encrypted_to=list(manifest.encryption.recipients) if manifest.encryption else [],
                with_globals=manifest.globals is not None,
                files=sum(len(d.files) for d in manifest.dumps),
                verified=_verified(manifest, verification),
                kept_by=reasons.get(manifest.backup_id, []),
                locked=lock.describe() if lock else "",
                key=manifest.data_key,
            )
        )
    return listed


def _verified(manifest: Manifest, verification: dict[str, Any]) -> str:
    if verification.get("key") != manifest.data_key:
        return ""
    return str(verification.get("result", "")).lower()


def render_table(backups: list[ListedBackup]) -> str:
    headers = [
        "COMPLETED",
        "BACKUP",
        "DATABASES",
        "SIZE",
        "RAW",
        "COMPRESSION",
        "ENCRYPTED",
        "VERIFIED",
        "KEPT BY",
        "LOCK",
    ]
    rows = [
        [
            b.completed,
            b.backup_id,
            ",".join(b.databases) if len(b.databases) <= 3 else f"{len(b.databases)} databases",
            human_size(b.bytes_stored),
            human_size(b.bytes_raw),
            b.compression + (f" dir/{b.files}" if b.files else "") + (" +roles" if b.with_globals else ""),
            f"age ({len(b.encrypted_to)})" if b.encrypted_to else "no",
            b.verified or "-",
            ",".join(b.kept_by) or "(goes next run)",
            b.locked.removeprefix("kept ").removesuffix(" by object lock") or "-",
        ]
        for b in backups
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = [
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines) + "\n"


class ListJob:
    """List the backups in storage (read-only: writes no status, no Event)."""

    name = "list"
    kind = DATABASE_BACKUP
    application_name = BACKUP_APPLICATION
    description = "List the backups of a DatabaseBackup in storage: a table, or JSON with -o json."
    output_on_stdout = True  # the listing is the output: logs go to stderr

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "-o", "--output", choices=["table", "json"], default="table", help="table (default) or json"
        )

    def run(self, ctx: RunContext, args: argparse.Namespace) -> str:
        settings = parse_backup_spec(ctx.spec)
        store = open_storage(ctx, settings)
        store.check_access()
        readable = readable_by(Area.of_backups(store), me(ctx), take_over_from(ctx.resource))
        status = dict(ctx.resource.get("status") or {})
        backups = list_backups(store, readable, settings, status, datetime.now(UTC))
        if args.output == "json":
            document = {"resource": f"{ctx.ref.namespace}/{ctx.ref.name}", "backups": [asdict(b) for b in backups]}
            sys.stdout.write(json.dumps(document, indent=2) + "\n")
        else:
            sys.stdout.write(render_table(backups) if backups else "no complete backup in storage\n")
        sys.stdout.flush()
        return f"{len(backups)} complete backups listed"

    def record_failure(self, ctx: RunContext, error: CellarError) -> None:
        pass  # a listing changes nothing about the resource; the exit code and the log say what failed
