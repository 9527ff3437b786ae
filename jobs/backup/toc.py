"""Restoring part of a backup: pg_restore's own table of contents (`pg_restore -l -v`), filtered to what a
DatabaseRestore selects, handed back with `-L`.

A selected table comes with what belongs to it: its data (unless `data: false`), the sequences it owns
(serial and identity) with their values, defaults, constraints, indexes, triggers, row security, comments
and grants, and its own foreign keys. Objects of other tables are left alone, foreign keys that point at
the table from elsewhere included: restoring one table does not touch the rest of the database. A selected
schema comes whole. The entries keep the archive's order, so pg_restore reads a stream front to back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# `<dump id>; <catalog oid> <oid> <DESC> <schema> <tag> <owner>`; DESC may hold spaces (TABLE DATA).
_ENTRY = re.compile(r"^(\d+); (\d+) (\d+) (.+)$")
_DEPENDS = re.compile(r"^;\s*depends on:(.*)$")
# Descriptions, longest first, so that "TABLE DATA" is not read as "TABLE".
_DESCRIPTIONS = sorted(
    [
        "TABLE DATA",
        "TABLE",
        "SEQUENCE SET",
        "SEQUENCE OWNED BY",
        "SEQUENCE",
        "DEFAULT",
        "FK CONSTRAINT",
        "CHECK CONSTRAINT",
        "CONSTRAINT",
        "INDEX ATTACH",
        "INDEX",
        "TRIGGER",
        "ROW SECURITY",
        "POLICY",
        "COMMENT",
        "ACL",
        "STATISTICS",
        "RULE",
        "SCHEMA",
        "VIEW",
        "MATERIALIZED VIEW DATA",
        "MATERIALIZED VIEW",
        "FUNCTION",
        "TYPE",
        "DATABASE",
        "EXTENSION",
    ],
    key=len,
    reverse=True,
)
# What belongs to a table and goes with it; the first word of their tag names the table.
_OF_A_TABLE = {"DEFAULT", "CONSTRAINT", "CHECK CONSTRAINT", "FK CONSTRAINT", "TRIGGER", "POLICY", "RULE"}
_DATA = {"TABLE DATA", "SEQUENCE SET", "MATERIALIZED VIEW DATA"}
_OWN_OBJECTS = {"VIEW", "MATERIALIZED VIEW", "FUNCTION", "TABLE", "SCHEMA", "TYPE"}
_RELATIONS = {"TABLE", "VIEW", "MATERIALIZED VIEW"}  # what spec.select.tables names


@dataclass
class TocEntry:
    """One line of the listing: `<dump id>; <catalog oid> <oid> <DESC> <schema> <tag> <owner>`. Names are
    printed as they are, spaces included, so entries are matched against known names (is_of, in_schema)
    rather than split into words."""

    dump_id: int
    description: str
    rest: str  # what follows the description: "<schema> <tag> <owner>"
    line: str
    depends_on: list[int] = field(default_factory=list)
    catalog_oid: int = 0  # the object's OID; a TABLE DATA entry's is its table's (pg_dump's makeTableDataInfo)

    def is_of(self, schema: str, name: str) -> bool:
        """Whether this entry's object is `name` in `schema`, or (a constraint, trigger, default, ...) one
        of table `name`'s, whose tag starts with the table's name."""
        return (self.rest + " ").startswith(f"{schema} {name} ")

    def in_schema(self, schema: str) -> bool:
        return (self.rest + " ").startswith(f"{schema} ")


def parse_toc(listing: str) -> list[TocEntry]:
    """The entries of `pg_restore -l -v` output, with their dependencies (the `depends on` lines)."""
    entries: list[TocEntry] = []
    for line in listing.splitlines():
        dependencies = _DEPENDS.match(line)
        if dependencies and entries:
            entries[-1].depends_on += [int(d) for d in dependencies.group(1).split()]
            continue
        found = _ENTRY.match(line)
        if not found:
            continue
        rest = found.group(4)
        description = next((d for d in _DESCRIPTIONS if rest.startswith(d + " ")), rest.split(" ", 1)[0])
        entries.append(
            TocEntry(
                int(found.group(1)), description, rest[len(description) + 1 :], line, catalog_oid=int(found.group(3))
            )
        )
    return entries


@dataclass(frozen=True)
class Selection:
    """What a DatabaseRestore asks for (spec.select): whole schemas, tables as schema.table, with or without rows."""

    schemas: tuple[str, ...] = ()
    tables: tuple[tuple[str, str], ...] = ()
    data: bool = True

    @property
    def everything(self) -> bool:
        return not self.schemas and not self.tables


@dataclass(frozen=True)
class SelectedToc:
    entries: list[TocEntry]
    tables: list[tuple[str, str]]  # every table and view restored, by (schema, name)
    schemas: list[str]  # every schema created

    references: dict[int, list[tuple[str, str]]] = field(default_factory=dict)  # foreign key -> tables it needs

    def list_file(self) -> str:
        """The `-L` list: the chosen entries in the archive's order."""
        return "".join(entry.line + "\n" for entry in self.entries)

    def foreign_keys_needing(self) -> dict[int, list[tuple[str, str]]]:
        """Chosen foreign keys that point at tables this restore does not create, with those tables."""
        restored = set(self.tables)
        return {
            dump_id: outside
            for dump_id, tables in self.references.items()
            if (outside := [t for t in tables if t not in restored])
        }

    def without(self, dump_ids: set[int]) -> SelectedToc:
        kept = [e for e in self.entries if e.dump_id not in dump_ids]
        references = {i: t for i, t in self.references.items() if i not in dump_ids}
        return SelectedToc(kept, self.tables, self.schemas, references)


def select_entries(entries: Sequence[TocEntry], selection: Selection) -> SelectedToc:
    """The entries that restore `selection` (missing_names says what it asks for that is not there)."""
    chosen: set[int] = set()
    schema_entries = [e for e in entries if e.description == "SCHEMA" and e.rest.startswith("- ")]
    schemas = [name for name in selection.schemas if any(e.is_of("-", name) for e in schema_entries)]
    chosen |= {e.dump_id for e in schema_entries if any(e.is_of("-", name) for name in schemas)}
    tables = [
        (schema, name)
        for schema, name in {
            *selection.tables,
            *(
                (schema, _name_after(e, schema))
                for e in entries
                if e.description in _RELATIONS
                for schema in selection.schemas
                if e.in_schema(schema)
            ),
        }
        if any(e.description in _RELATIONS and e.is_of(schema, name) for e in entries)
    ]
    for entry in entries:
        if entry.description in ("DATABASE", "ENCODING", "STDSTRINGS", "SEARCHPATH", "SCHEMA"):
            continue
        if any(entry.in_schema(schema) for schema in schemas) or (
            entry.description in _RELATIONS and any(entry.is_of(schema, name) for schema, name in tables)
        ):
            chosen.add(entry.dump_id)
    # What belongs to a chosen table, then what belongs to that (a sequence's OWNED BY and value, a
    # comment on an index), until nothing more comes.
    grew = True
    while grew:
        grew = False
        for entry in entries:
            if entry.dump_id in chosen or not any(d in chosen for d in entry.depends_on):
                continue
            if entry.description in _OF_A_TABLE and not any(entry.is_of(s, n) for s, n in tables):
                continue  # a foreign key, trigger or default of another table
            if entry.description in _OWN_OBJECTS:
                continue  # objects of their own that use the table: select them by name
            chosen.add(entry.dump_id)
            grew = True
    if not selection.data:
        chosen -= {e.dump_id for e in entries if e.description in _DATA}
    by_id = {e.dump_id: e for e in entries}
    references = {
        e.dump_id: sorted(
            {_relation_name(by_id[d]) for d in e.depends_on if d in by_id and by_id[d].description == "TABLE"}
            - {t for t in tables if e.is_of(*t)}
        )
        for e in entries
        if e.dump_id in chosen and e.description == "FK CONSTRAINT"
    }
    return SelectedToc([e for e in entries if e.dump_id in chosen], sorted(tables), sorted(schemas), references)


def _relation_name(entry: TocEntry) -> tuple[str, str]:
    """A table entry's (schema, name), reading the first word as the schema."""
    schema = entry.rest.split(" ", 1)[0]
    return schema, _name_after(entry, schema)


def _name_after(entry: TocEntry, schema: str) -> str:
    """A table entry's name, knowing its schema: the tag up to the owner (the last word)."""
    tag = (entry.rest + " ")[len(schema) + 1 :].rstrip(" ")
    return tag.rsplit(" ", 1)[0] if " " in tag else tag


def missing_names(entries: Iterable[TocEntry], selection: Selection) -> list[str]:
    """Names the selection asks for that the backup does not hold."""
    entries = list(entries)
    missing = [
        f"table {schema}.{name}"
        for schema, name in selection.tables
        if not any(e.description in _RELATIONS and e.is_of(schema, name) for e in entries)
    ]
    return missing + [
        f"schema {name}"
        for name in selection.schemas
        if not any(e.description == "SCHEMA" and e.is_of("-", name) for e in entries)
    ]
