"""Which PostgreSQL client tools dump and restore which server (the rules; the version matrix runs them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import PermanentError
from jobs.backup.pgtools import ClientTools, major_of, pick_dump_tools, pick_restore_tools, restores_through_sql
from jobs.backup.restore.sql import without_unknown_settings

RELEASES = {14: "14.23", 15: "15.19", 16: "16.15", 17: "17.11", 18: "18.6"}


def _tools(*majors: int) -> list[ClientTools]:
    return [ClientTools(major, RELEASES[major], Path(f"/usr/pgsql-{major}/bin")) for major in majors]


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ("15.19 (Debian 15.19-0+deb12u1)", 15),
        ("pg_dump (PostgreSQL) 17.2", 17),
        ("pg_dump 18.6", 18),
        ("9.6.24", 9),
        ("19beta1", 19),
        ("15", 15),
        ("", None),
    ],
)
def test_major_of_reads_every_way_a_version_is_written(text: str, major: int | None) -> None:
    assert major_of(text) == major


def test_a_server_is_dumped_with_its_own_major_else_the_nearest_newer() -> None:
    every = _tools(14, 15, 16, 17, 18)
    for major in RELEASES:
        assert pick_dump_tools(every, major * 10000 + 5, f"{major}.5").major == major
    assert pick_dump_tools(_tools(14, 16, 18), 150004, "15.4").major == 16


def test_a_server_newer_than_every_pg_dump_is_refused_naming_both_versions() -> None:
    with pytest.raises(PermanentError) as refused:
        pick_dump_tools(_tools(14, 15, 16), 180001, "18.1")
    assert refused.value.reason == "PgDumpTooOld"
    assert str(refused.value).startswith("pg_dump 16 is older than the server (18.1)")
    assert "pg_dump 16.15" in str(refused.value)
    assert "majors 14, 15, 16" in str(refused.value)


def test_a_restore_uses_the_target_major_when_it_reads_the_archive() -> None:
    every = _tools(14, 15, 16, 17, 18)
    assert pick_restore_tools(every, 180006, "18.6", "pg_dump 15.19", "15.19").major == 18
    assert pick_restore_tools(every, 150019, "15.19", "pg_dump 15.19", "15.19").major == 15
    assert pick_restore_tools(every, 170011, "17.11", "pg_dump (PostgreSQL) 14.23", "14.23").major == 17
    # A target newer than every tool: the newest tools that read the archive.
    assert pick_restore_tools(every, 190000, "19.0", "pg_dump 18.6", "18.6").major == 18
    # Into an older major: the oldest tools that read the archive (it works where the dump allows).
    assert pick_restore_tools(every, 150019, "15.19", "pg_dump 16.15", "16.15").major == 16


def test_a_restore_into_a_major_older_than_the_tools_goes_through_sql() -> None:
    """pg_restore 17 and newer cannot connect a restore to a server before 17 (transaction_timeout): the
    restore goes through its SQL into the server's psql instead of being refused."""
    every = _tools(14, 15, 16, 17, 18)
    chosen = pick_restore_tools(every, 150019, "15.19", "pg_dump 18.6", "18.6 (Debian 18.6-1)")
    assert chosen.major == 18
    assert restores_through_sql(chosen, 150019)
    assert not restores_through_sql(pick_restore_tools(every, 150019, "15.19", "pg_dump 16.15", "16.15"), 150019)
    assert not restores_through_sql(pick_restore_tools(every, 170011, "17.11", "pg_dump 18.6", "18.6"), 170011)
    # A 15 server dumped by pg_dump 18 (its own tools were missing) goes back into 15 the same way.
    assert restores_through_sql(pick_restore_tools(_tools(18), 150019, "15.19", "pg_dump 18.6", "15.19"), 150019)


def test_what_an_older_server_does_not_know_is_left_out_of_the_sql_but_rows_are_not() -> None:
    sql = [
        b"SET statement_timeout = 0;\n",
        b"SET transaction_timeout = 0;\n",
        b"COPY public.notes (id, body) FROM stdin;\n",
        b"1\tSET transaction_timeout = 0;\n",
        b"\\.\n",
        b"SET transaction_timeout = 0;\n",
        b"CREATE INDEX notes_body ON public.notes (body);\n",
    ]
    dropped: set[str] = set()
    kept = list(without_unknown_settings(sql, frozenset({"statement_timeout"}), dropped))
    assert kept == [sql[0], sql[2], sql[3], sql[4], sql[6]]
    assert dropped == {"transaction_timeout"}


def test_a_restore_that_cannot_read_the_backup_is_refused_before_anything_is_written() -> None:
    with pytest.raises(PermanentError) as unreadable:
        pick_restore_tools(_tools(14, 15, 16), 160000, "16.0", "pg_dump 17.11", "17.11")
    assert unreadable.value.reason == "PgRestoreTooOld"
    assert "pg_restore must be at least 17" in str(unreadable.value)
