"""Schema changes of the source between runs, applied to its Iceberg table before any row moves.

Compared by column name, the table's schema against the one the source's columns give now (iceberg.iceberg_schema):
- a column added to the source is added to the table (optional: the rows archived before have none);
- a column dropped from the source stays in the table, optional, null in the rows archived after;
- a type widened as Iceberg's schema evolution allows (int to long, float to double, decimal(P,S) to
  decimal(P',S) with P' > P) is widened in the table; a longer varchar is a string either way;
- a column whose NOT NULL was dropped becomes optional;
- any other change (text to integer, a narrower type, another scale) is refused with SchemaMismatch, naming the
  column and what to do, before anything is deleted.
All the changes of a run go in one schema update (one metadata commit), so a run killed meanwhile leaves the table
as it was, or with every change: the next run compares again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from common.errors import PermanentError
from common.reasons import Reason

log = logging.getLogger(__name__)


def shape(value: Any) -> Any:
    """A type without its field ids (a table's and a freshly numbered schema's differ), to compare."""
    from pyiceberg.types import ListType, MapType, StructType

    if isinstance(value, StructType):
        return ("struct", tuple((f.name, shape(f.field_type), f.required) for f in value.fields))
    if isinstance(value, ListType):
        return ("list", shape(value.element_type), value.element_required)
    if isinstance(value, MapType):
        return ("map", shape(value.key_type), shape(value.value_type), value.value_required)
    return str(value)


def widens(old: Any, new: Any) -> bool:
    """Whether Iceberg's schema evolution allows a column of type `old` to become `new` (the spec's promotions)."""
    from pyiceberg.types import DecimalType, DoubleType, FloatType, IntegerType, LongType

    if isinstance(old, IntegerType) and isinstance(new, LongType):
        return True
    if isinstance(old, FloatType) and isinstance(new, DoubleType):
        return True
    return (
        isinstance(old, DecimalType)
        and isinstance(new, DecimalType)
        and (new.scale == old.scale and new.precision > old.precision)
    )


@dataclass
class SchemaChanges:
    """What a run changes in its table's schema, and what it refuses."""

    added: list[Any] = field(default_factory=list)  # NestedFields of the source the table lacks
    widened: list[tuple[str, Any, Any]] = field(default_factory=list)  # (column, table's type, source's type)
    loosened: list[str] = field(default_factory=list)  # required in the table, now optional
    kept: list[str] = field(default_factory=list)  # dropped from the source, kept in the table
    refused: list[str] = field(default_factory=list)  # "amount: string in the table, int in the source"

    @property
    def any(self) -> bool:
        return bool(self.added or self.widened or self.loosened)

    def describe(self) -> dict[str, list[str]]:
        return {
            "added": [f"{f.name} ({f.field_type})" for f in self.added],
            "widened": [f"{name} ({old} to {new})" for name, old, new in self.widened],
            "made_optional": list(self.loosened),
            "kept_dropped": list(self.kept),
        }


def plan_changes(found: Any, expected: Any) -> SchemaChanges:
    """How the table's schema `found` becomes one the source's rows (`expected`) append to."""
    changes = SchemaChanges()
    for wanted in expected.fields:
        try:
            have = found.find_field(wanted.name)
        except ValueError:
            changes.added.append(wanted)
            continue
        if shape(have.field_type) != shape(wanted.field_type):
            if widens(have.field_type, wanted.field_type):
                changes.widened.append((wanted.name, have.field_type, wanted.field_type))
            elif not widens(wanted.field_type, have.field_type):  # a narrower source still appends as is
                changes.refused.append(f"{wanted.name} ({have.field_type} in the table, {wanted.field_type} now)")
        if have.required and not wanted.required:
            changes.loosened.append(wanted.name)
    names = {f.name for f in expected.fields}
    for have in found.fields:
        if have.name not in names:
            changes.kept.append(have.name)
            if have.required:
                changes.loosened.append(have.name)
    return changes


def refusal(identifier: str, relation: str, refused: list[str]) -> PermanentError:
    return PermanentError(
        f"the source {relation} changed a column's type in a way its Iceberg table {identifier} cannot follow: "
        f"{', '.join(refused)}. Iceberg widens int to bigint, real to double precision and a numeric's precision "
        "only; change the column back (or to a type that widens), or archive into a new table (spec.iceberg.table). "
        "Nothing was moved",
        reason=Reason.SCHEMA_MISMATCH,
    )


def evolve(table: Any, changes: SchemaChanges) -> None:
    """Apply `changes` to the table's schema in one commit."""
    with table.update_schema() as update:
        for added in changes.added:
            update.add_column(added.name, added.field_type, doc=added.doc, required=False)
        for name, _, new in changes.widened:
            update.update_column(name, field_type=new)
        for name in changes.loosened:
            update.make_column_optional(name)
    log.info("Iceberg table schema changed with the source's", extra=changes.describe())
