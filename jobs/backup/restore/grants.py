"""A restore by a role that is no superuser (a managed server's admin role, or any CREATEDB role): what of the
dump's ownership and grants it cannot restore, found before anything is written, left out, and named.

Nothing pg_restore reports is ignored: it still runs with --exit-on-error in one transaction. The two things a
non-superuser predictably cannot do are kept from reaching it instead:
- `ALTER ... OWNER TO r` needs the restoring role to be able to SET ROLE to `r` (PostgreSQL 16+; before 16,
  membership in `r`), and `r` to exist. When any of the dump's owners is such a role, the restore runs with
  --no-owner: everything belongs to the restoring role, and the owners are named.
- A grant entry (ACL, DEFAULT ACL) naming a role the server does not have fails ("role ... does not exist"), as
  does one the dump made as another grantor (SET SESSION AUTHORIZATION: superuser only), or default privileges
  FOR ROLE a role it cannot become. Those entries are left out of pg_restore's list (-L) and named; the other
  grants are restored.
Any other error (a missing extension, a type of another owner) still fails the restore and says so.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from jobs.backup.privileges import can_become, missing_roles
from jobs.backup.restore.plan import BackupSource, RestorePlan
from jobs.backup.restore.stream import read_head
from jobs.backup.toc import TocEntry

log = logging.getLogger(__name__)

# Entries that carry no owner of their own (data, grants, comments, header entries): their owner column
# repeats an object's, which an ownable entry names too.
_NOT_OWNED = {"TABLE DATA", "SEQUENCE SET", "MATERIALIZED VIEW DATA", "ACL", "COMMENT", "ENCODING", "STDSTRINGS"}
_NOT_OWNED |= {"SEARCHPATH", "DATABASE", "DEFAULT", "STATISTICS"}
_ROLE = r'(?:"(?:[^"]|"")*"|[^\s;,"]+)'
# The grantees of one GRANT or REVOKE as pg_dump writes it: `... TO a, "B c" [WITH GRANT OPTION];`.
_GRANTEES = re.compile(rf"\s(?:TO|FROM)\s+({_ROLE}(?:\s*,\s*{_ROLE})*)(?:\s+WITH (?:GRANT|ADMIN) OPTION)?;\s*$")
_FOR_ROLE = re.compile(rf"^ALTER DEFAULT PRIVILEGES FOR ROLE ({_ROLE})")
_HEADER = re.compile(r"^-- Name: .*; Type: (?:DEFAULT )?ACL; ")


def _is_grant(entry: TocEntry) -> bool:
    return entry.description == "ACL" or (entry.description == "DEFAULT" and entry.rest.startswith("ACL "))


def _unquote(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') else name


@dataclass(frozen=True)
class GrantEntry:
    """One grant entry of the dump and the roles its statements name."""

    entry: TocEntry
    grantees: frozenset[str]  # PUBLIC left out
    for_role: str = ""  # ALTER DEFAULT PRIVILEGES FOR ROLE ...
    as_grantor: bool = False  # SET SESSION AUTHORIZATION: granted by a role other than the owner

    def describe(self) -> str:
        """`grants on TABLE orders in schema sales`, `default privileges for tables in schema sales`."""
        default = self.entry.description == "DEFAULT"
        rest = self.entry.rest[4:] if default else self.entry.rest  # "<schema> <tag> <owner>"
        schema, _, tag = rest.rsplit(" ", 1)[0].partition(" ")
        where = f" in schema {schema}" if schema != "-" else ""
        return f"{tag.lower()}{where}" if default else f"grants on {tag}{where}"


def grant_entries(entries: list[TocEntry], sql_text: str) -> list[GrantEntry] | None:
    """Each grant entry with the roles it names, from the SQL pg_restore wrote for those entries alone (in
    their order, each after its `-- Name: ...; Type: ACL` header); None when the two do not line up."""
    grants = [e for e in entries if _is_grant(e)]
    blocks: list[list[str]] = []
    for line in sql_text.splitlines():
        if _HEADER.match(line):
            blocks.append([])
        elif blocks:
            blocks[-1].append(line)
    if len(blocks) != len(grants):
        return None
    found = []
    for entry, lines in zip(grants, blocks, strict=True):
        names: set[str] = set()
        for_role = ""
        for line in lines:
            if (to := _GRANTEES.search(line)) is not None and line.startswith(("GRANT ", "REVOKE ", "ALTER DEFAULT")):
                names |= {_unquote(n.strip()) for n in re.findall(_ROLE, to.group(1))}
            if (default := _FOR_ROLE.match(line)) is not None:
                for_role = _unquote(default.group(1))
        grantor = any(line.startswith("SET SESSION AUTHORIZATION") for line in lines)
        found.append(GrantEntry(entry, frozenset(n for n in names if n.upper() != "PUBLIC"), for_role, grantor))
    return found


@dataclass
class Skipped:
    """What a restore by a role that is no superuser leaves out of one database's dump, and why."""

    role: str
    entries: list[TocEntry] = field(default_factory=list)  # the table of contents it restores from
    owners: dict[str, str] = field(default_factory=dict)  # the dump's owners it cannot set, with why
    grants: dict[int, str] = field(default_factory=dict)  # dump id of a grant entry left out -> what and why
    all_grants: str = ""  # why every grant is left out (--no-privileges), when they could not be told apart
    database_owner: str = ""  # the database's owner (a whole-server backup's) it cannot give the database to

    @property
    def no_owner(self) -> bool:
        return bool(self.owners)

    def options(self) -> list[str]:
        return (["--no-owner"] if self.owners else []) + (["--no-privileges"] if self.all_grants else [])

    def describe(self) -> str:
        """For the message: "" when nothing is left out."""
        parts = []
        if self.database_owner:
            parts.append(f"the database owned by {self.role}, not {self.database_owner}")
        if self.owners:
            named = ", ".join(f"{name} ({why})" for name, why in sorted(self.owners.items()))
            parts.append(f"ownership left to {self.role}, which cannot give objects to {named}")
        if self.all_grants:
            parts.append(f"every grant left out ({self.all_grants})")
        elif self.grants:
            shown = list(self.grants.values())
            parts.append(
                f"grants left out: {'; '.join(shown[:10])}"
                + (f"; and {len(shown) - 10} more" if len(shown) > 10 else "")
            )
        return ", ".join(parts)


def plan_skips(
    conn: psycopg.Connection[tuple[object, ...]],
    source: BackupSource,
    plan: RestorePlan,
    entries: list[TocEntry],
    *,
    no_owner: bool,
) -> Skipped:
    """What of the dump (its table of contents `entries`) the connecting role, no superuser, cannot restore on
    `conn`'s server; `no_owner`: the spec already leaves ownership out."""
    role = str((conn.execute("SELECT current_user").fetchone() or ("",))[0])
    skipped = Skipped(role, entries)
    if not no_owner:
        owners = {e.line.rsplit(" ", 1)[-1] for e in entries if e.description not in _NOT_OWNED}
        skipped.owners = can_become(conn, {o for o in owners if o and o not in (role, "pg_database_owner")})
    grants = [e for e in entries if _is_grant(e)]
    if not grants:
        return skipped
    listing = "".join(e.line + "\n" for e in grants)
    sql_text = _grant_sql(source, plan, listing)
    described = grant_entries(entries, sql_text)
    if described is None:
        skipped.all_grants = "their SQL could not be matched to the table of contents"
        return skipped
    missing = missing_roles(conn, {n for g in described for n in g.grantees} | {g.for_role for g in described} - {""})
    unsettable = can_become(conn, {g.for_role for g in described if g.for_role and g.for_role not in missing})
    for grant in described:
        lacking = sorted(grant.grantees & missing)
        if lacking:
            skipped.grants[grant.entry.dump_id] = f"{grant.describe()} (no role {', '.join(lacking)} here)"
        elif grant.for_role and (grant.for_role in missing or grant.for_role in unsettable):
            skipped.grants[grant.entry.dump_id] = f"{grant.describe()} (for role {grant.for_role})"
        elif grant.as_grantor:
            skipped.grants[grant.entry.dump_id] = f"{grant.describe()} (granted by another role than the owner)"
    return skipped


def _grant_sql(source: BackupSource, plan: RestorePlan, listing: str) -> str:
    """The SQL of the grant entries alone (`pg_restore -f - -L`): pg_restore writes it from the archive's table
    of contents, so only the head of the object is read."""
    with tempfile.TemporaryDirectory(prefix="cellar-grants-") as scratch:
        list_file = Path(scratch) / "grants.list"
        list_file.write_text(listing, encoding="utf-8")
        return read_head(source, plan, ["--file=-", f"--use-list={list_file}"], checksum=False)
