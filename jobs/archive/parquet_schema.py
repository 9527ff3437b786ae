"""Schema changes of the source between runs, for a Parquet (or CSV) archive: checked against the columns the newest
batch manifest recorded, before any row moves.

Each batch's files carry the columns the source has then, so a column added appears in the newer files and a
column dropped is absent from them: query engines merge the two by name (DuckDB `union_by_name = true`, Spark
`mergeSchema`). A type widened the way engines widen when they merge files (a smaller integer to a larger, float to
double, a decimal's precision with the same scale; a longer varchar is a string either way) is accepted. Any other
change of a column's stored type would give two files one column of two types no engine merges: refused with
SchemaMismatch, naming the column and what to do.
"""

from __future__ import annotations

import logging
import re

from common.errors import PermanentError
from common.reasons import Reason
from common.storage import ObjectStore
from jobs.archive.manifest import ArchivedColumn, BatchManifest
from jobs.archive.objects import ObjectLayout, column_description
from jobs.archive.table import TableInfo

log = logging.getLogger(__name__)

_INTEGERS = ("int8", "int16", "int32", "int64")
_FLOATS = ("float", "double")
_DECIMAL = re.compile(r"^decimal(?:128|256)\((\d+), (\d+)\)$")


def widens(old: str, new: str) -> bool:
    """Whether an Arrow type (as a manifest records it, `storedAs`) may become another in newer files."""
    if old == new:
        return True
    for family in (_INTEGERS, _FLOATS):
        if old in family and new in family:
            return family.index(new) > family.index(old)
    was, now = _DECIMAL.match(old), _DECIMAL.match(new)
    return bool(was and now and was.group(2) == now.group(2) and int(now.group(1)) > int(was.group(1)))


def newest_manifest(store: ObjectStore, layout: ObjectLayout) -> BatchManifest | None:
    """The manifest of the batch written last (by the store's time), or None for an archive with none yet."""
    newest = max(store.list_objects(layout.manifest_prefix), key=lambda o: (o.last_modified, o.key), default=None)
    if newest is None:
        return None
    return BatchManifest.read(store.get_bytes(newest.key), newest.key)


def check_source_schema(store: ObjectStore, layout: ObjectLayout, info: TableInfo) -> list[str]:
    """Refuse (SchemaMismatch) a column whose stored type changed in a way newer files cannot follow; the
    changes the newer files carry (added, dropped, widened columns), for the log."""
    manifest = newest_manifest(store, layout)
    if manifest is None:
        return []
    before: dict[str, ArchivedColumn] = {c.name: c for c in manifest.columns}
    now = {c.name: column_description(c) for c in info.columns}
    refused, changes = [], []
    for name, column in now.items():
        old = before.get(name)
        if old is None:
            changes.append(f"{name} added ({column.type})")
        elif old.stored_as and old.stored_as != column.stored_as:
            if widens(old.stored_as, column.stored_as):
                changes.append(f"{name} widened ({old.type} to {column.type})")
            else:
                refused.append(f"{name} ({old.type}, stored as {old.stored_as}; now {column.type}, {column.stored_as})")
    changes += [f"{name} dropped (absent from newer files)" for name in before if name not in now]
    if refused:
        raise PermanentError(
            f"the source {manifest.relation} changed a column's type since the archive's last batch "
            f"({manifest.batch_id}): {', '.join(refused)}; newer files would hold that column as another type, which "
            "query engines do not merge. Change the column back (or to a type that widens: a larger integer, "
            "double precision, a numeric of more precision), or archive into a new prefix (spec.storage.prefix). "
            "Nothing was moved",
            reason=Reason.SCHEMA_MISMATCH,
        )
    if changes:
        log.info(
            "the source's columns changed since the last batch; newer files carry them", extra={"changes": changes}
        )
    return changes
