"""A partial restore (spec.select): the entries of the backup's table of contents it takes, checked against what
the target already has, and the foreign keys it leaves out. The restore job resolves one before anything is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from common.db import connect
from common.errors import InvalidSpec, PermanentError
from common.reasons import Reason
from common.secrets import DatabaseSettings
from jobs.backup.restore.plan import BackupSource, RestorePlan
from jobs.backup.restore.stream import read_toc
from jobs.backup.toc import SelectedToc, Selection, missing_names, parse_toc, select_entries

log = logging.getLogger(__name__)
Connection = psycopg.Connection[tuple[object, ...]]


@dataclass(frozen=True)
class SelectedRestore:
    """What a partial restore takes from the backup (spec.select), and the foreign keys it leaves out."""

    toc: SelectedToc
    left_out: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [f"schema {name}" for name in self.toc.schemas]
        parts += [f"{schema}.{name}" for schema, name in self.toc.tables if schema not in self.toc.schemas]
        shown = ", ".join(parts[:10]) + (f" and {len(parts) - 10} more" if len(parts) > 10 else "")
        note = f"; left out {', '.join(self.left_out)}" if self.left_out else ""
        return f"{shown} ({len(self.toc.entries)} entries{note})"

    def list_file(self) -> str:
        return self.toc.list_file()


def choose_entries(source: BackupSource, plan: RestorePlan, selection: Selection) -> SelectedRestore:
    """The entries of the backup's table of contents that restore `selection`; every name must be there."""
    manifest = source.manifest
    entries = parse_toc(read_toc(source, plan))
    missing = missing_names(entries, selection)
    if missing:
        raise InvalidSpec(f"spec.select: backup {manifest.backup_id} holds no {', '.join(missing)}")
    return SelectedRestore(select_entries(entries, selection))


def check_target(target: DatabaseSettings, selected: SelectedRestore, *, clean: bool, created: bool) -> SelectedRestore:
    """What the target already has, asked once on one connection: without `clean`, a table or schema the
    partial restore creates stops it (refuse_existing); a foreign key to a table that is neither restored
    nor there is left out (leave_out_dangling_foreign_keys). A database made for the restore has nothing."""
    if created:
        return leave_out_dangling_foreign_keys(selected, lambda schema, name: False)
    with connect(target) as conn:
        if not clean:
            refuse_existing(conn, target, selected)
        return leave_out_dangling_foreign_keys(selected, lambda schema, name: _relation_exists(conn, schema, name))


def refuse_existing(conn: Connection, target: DatabaseSettings, selected: SelectedRestore) -> None:
    """A partial restore into a live database must not meet what it creates: refuse up front, naming each,
    rather than fail halfway (every name is checked before anything is written)."""
    found = [
        f"schema {name}"
        for name in selected.toc.schemas
        if _found(conn.execute("SELECT to_regnamespace(quote_ident(%s))", (name,)).fetchone())
    ]
    found += [f"table {schema}.{name}" for schema, name in selected.toc.tables if _relation_exists(conn, schema, name)]
    if found:
        raise PermanentError(
            f"{target.describe()} already has {', '.join(found)}: drop or rename them first, or set "
            "spec.clean: true to replace them with the backup's",
            reason=Reason.TABLE_EXISTS,
        )


def leave_out_dangling_foreign_keys(selected: SelectedRestore, exists: Callable[[str, str], bool]) -> SelectedRestore:
    """A restored table's foreign key to a table neither restored nor in the target (`exists`) would fail
    the whole restore: it is left out, and the message says which (restore that table too to keep it)."""
    needing = selected.toc.foreign_keys_needing()
    missing = {t for tables in needing.values() for t in tables if not exists(*t)}
    dropped = {dump_id for dump_id, tables in needing.items() if any(t in missing for t in tables)}
    if not dropped:
        return selected
    entries = {e.dump_id: e for e in selected.toc.entries}
    notes = tuple(
        f"foreign key {entries[i].rest.rsplit(' ', 1)[0]} (it references {', '.join('.'.join(t) for t in needing[i])})"
        for i in sorted(dropped)
    )
    log.warning("foreign keys left out of the partial restore", extra={"left_out": list(notes)})
    return SelectedRestore(selected.toc.without(dropped), notes)


def _relation_exists(conn: Connection, schema: str, name: str) -> bool:
    return _found(
        conn.execute("SELECT to_regclass(quote_ident(%s) || '.' || quote_ident(%s))", (schema, name)).fetchone()
    )


def _found(row: tuple[object, ...] | None) -> bool:
    return row is not None and row[0] is not None
