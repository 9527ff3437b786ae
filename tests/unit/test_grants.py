"""Reading the roles a dump's grant entries name (restore.grants), on real `pg_restore -l -v` and `pg_restore
-f - -L <grant entries>` output of PostgreSQL 15 for a database with grants to a reader, to a role the target
lacks, and default privileges."""

from __future__ import annotations

from jobs.backup.restore.grants import Skipped, grant_entries
from jobs.backup.toc import parse_toc

LISTING = """\
3357; 1262 16389 DATABASE - t_shop t_owner
6; 2615 16390 SCHEMA - sales t_owner
3358; 0 0 ACL - SCHEMA sales t_owner
217; 1259 16399 TABLE public customers t_owner
3359; 0 0 ACL public TABLE customers t_owner
216; 1259 16392 TABLE sales orders t_owner
3360; 0 0 ACL sales TABLE orders t_owner
3351; 0 16399 TABLE DATA public customers t_owner
2040; 826 16406 DEFAULT ACL sales DEFAULT PRIVILEGES FOR TABLES t_owner
"""

SQL = """\
SET row_security = off;

--
-- Name: SCHEMA sales; Type: ACL; Schema: -; Owner: t_owner
--

GRANT USAGE ON SCHEMA sales TO t_reader;


--
-- Name: TABLE customers; Type: ACL; Schema: public; Owner: t_owner
--

GRANT SELECT ON TABLE public.customers TO t_gone;
GRANT SELECT(name) ON TABLE public.customers TO "Odd "" Name", PUBLIC WITH GRANT OPTION;


--
-- Name: TABLE orders; Type: ACL; Schema: sales; Owner: t_owner
--

SET SESSION AUTHORIZATION t_reader;
GRANT SELECT ON TABLE sales.orders TO t_reader;
RESET SESSION AUTHORIZATION;


--
-- Name: DEFAULT PRIVILEGES FOR TABLES; Type: DEFAULT ACL; Schema: sales; Owner: t_owner
--

ALTER DEFAULT PRIVILEGES FOR ROLE t_owner IN SCHEMA sales GRANT SELECT ON TABLES  TO t_gone;
"""


def test_each_grant_entry_names_its_roles() -> None:
    found = grant_entries(parse_toc(LISTING), SQL)
    assert found is not None
    assert [(g.entry.dump_id, sorted(g.grantees), g.for_role, g.as_grantor) for g in found] == [
        (3358, ["t_reader"], "", False),
        (3359, ['Odd " Name', "t_gone"], "", False),
        (3360, ["t_reader"], "", True),
        (2040, ["t_gone"], "t_owner", False),
    ]
    assert [g.describe() for g in found] == [
        "grants on SCHEMA sales",
        "grants on TABLE customers in schema public",
        "grants on TABLE orders in schema sales",
        "default privileges for tables in schema sales",
    ]


def test_sql_that_does_not_line_up_with_the_listing_is_not_guessed_at() -> None:
    assert grant_entries(parse_toc(LISTING), SQL.split("-- Name: DEFAULT", maxsplit=1)[0]) is None


def test_what_is_left_out_is_named() -> None:
    skipped = Skipped("restorer", owners={"t_owner": "the restoring role may not SET ROLE to it"})
    skipped.grants = {3359: "grants on TABLE customers in schema public (no role t_gone here)"}
    assert skipped.options() == ["--no-owner"]
    assert skipped.describe() == (
        "ownership left to restorer, which cannot give objects to t_owner (the restoring role may not SET ROLE "
        "to it), grants left out: grants on TABLE customers in schema public (no role t_gone here)"
    )
    assert Skipped("restorer").describe() == ""
