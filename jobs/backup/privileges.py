"""What the connecting role may do on a server where it is no superuser (RDS, Cloud SQL, Azure Flexible
Server: the admin role there is not one), asked of the catalog before anything is written.

A backup needs to read every row (superuser, or pg_read_all_data on PostgreSQL 14+), a restore test needs
CREATEDB for its scratch database, and role passwords (pg_authid) are readable by a superuser only.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

# pg_has_role on a role the server lacks (pg_read_all_data before 14) is an error; CASE asks only when it exists.
_ROLE = """
SELECT current_user, r.rolsuper, r.rolcreatedb,
       CASE WHEN to_regrole('pg_read_all_data') IS NULL THEN false
            ELSE pg_has_role('pg_read_all_data', 'USAGE') END,
       CASE WHEN to_regrole('pg_read_all_stats') IS NULL THEN false
            ELSE pg_has_role('pg_read_all_stats', 'USAGE') END
FROM pg_roles r WHERE r.rolname = current_user
"""


@dataclass(frozen=True)
class RoleFacts:
    """The connecting role and what it holds."""

    name: str
    superuser: bool
    createdb: bool
    reads_all_data: bool  # superuser or pg_read_all_data
    reads_all_stats: bool  # superuser or pg_read_all_stats (pg_monitor has it): sizes of every database

    def role_passwords_note(self) -> str:
        """Why a whole-server backup by this role stores the roles without their passwords."""
        return (
            f"role {self.name} is not a superuser, so it cannot read role passwords (pg_authid); on a managed "
            "server no role can: set them again after a restore"
        )


def role_facts(conn: psycopg.Connection[tuple[object, ...]]) -> RoleFacts:
    row = conn.execute(_ROLE).fetchone()
    assert row is not None  # current_user is always a role
    superuser = bool(row[1])
    return RoleFacts(str(row[0]), superuser, bool(row[2]), superuser or bool(row[3]), superuser or bool(row[4]))


def can_become(conn: psycopg.Connection[tuple[object, ...]], roles: set[str]) -> dict[str, str]:
    """Of `roles`, those the connecting role cannot make the owner of what it restores, each with why: the
    role does not exist there, or the connecting role may not SET ROLE to it (PostgreSQL 16+: the SET option
    of its membership; before 16 membership itself). {} for a superuser."""
    if not roles:
        return {}
    option = "SET" if conn.info.server_version >= 160000 else "MEMBER"
    rows = conn.execute(
        "SELECT name, r.oid IS NOT NULL, r.oid IS NOT NULL AND pg_has_role(r.oid, %s) "
        "FROM unnest(%s::text[]) AS name LEFT JOIN pg_roles r ON r.rolname = name",
        (option, sorted(roles)),
    ).fetchall()
    return {
        str(name): ("it is not a role on this server" if not exists else "the restoring role may not SET ROLE to it")
        for name, exists, settable in rows
        if not settable
    }


def missing_roles(conn: psycopg.Connection[tuple[object, ...]], roles: set[str]) -> set[str]:
    """Of `roles`, those the server has no role of that name for."""
    if not roles:
        return set()
    rows = conn.execute(
        "SELECT name FROM unnest(%s::text[]) AS name WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name)",
        (sorted(roles),),
    ).fetchall()
    return {str(row[0]) for row in rows}
