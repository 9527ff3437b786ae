"""A directory dump's row counts from its files: the lines of COPY text pg_dump writes (checked against pg_dump 14
to 18: rows, then `\\.` and two empty lines), and which table each file holds, from the table of contents."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import PermanentError
from jobs.backup.backup.file_counts import LineTally, rows_by_table, tally_for

LISTING = (Path(__file__).parent / "data" / "toc_pg15.txt").read_text()
END = b"\\.\n\n\n"


def tallied(data: bytes, chunk: int) -> LineTally:
    tally = LineTally()
    for start in range(0, len(data), chunk):
        tally.add(data[start : start + chunk])
    return tally


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 1024])
def test_rows_are_the_lines_before_the_end_of_data_marker_whatever_the_chunks(chunk: int) -> None:
    # Values with an escaped newline, an escaped `\.`, an empty value (an empty line) and NULL.
    rows = b"1\ttwo\\nlines\n2\t\\\\.\n\n3\t\\N\n\\\\.\n"
    assert tallied(rows + END, chunk).rows("3374.dat") == 5
    assert tallied(END, chunk).rows("3374.dat") == 0  # a table without rows


@pytest.mark.parametrize("data", [b"", b"1\n2\n", b"1\n\\.\n", b"\\\\.\n\n\n", b"1\n\\.\n\n"])
def test_a_file_without_the_marker_at_its_end_is_not_counted(data: bytes) -> None:
    with pytest.raises(PermanentError, match="end-of-data marker"):
        tallied(data, 2).rows("3374.dat")


def test_only_table_data_files_are_tallied() -> None:
    assert tally_for("3374.dat") is not None
    assert tally_for("toc.dat") is None
    assert tally_for("blob_16419.dat") is None
    assert tally_for("blobs_2606.toc") is None


def test_each_table_data_entry_gives_its_tables_oid_the_rows_of_its_file() -> None:
    tallies = {name: tallied(b"x\n" * rows + END, 7) for name, rows in (("3372.dat", 2), ("3376.dat", 0))}
    tallies["3374.dat"] = tallied(b"y\n" * 4 + END, 7)
    assert rows_by_table(LISTING, tallies) == {16387: 2, 16413: 0, 16398: 4}
    del tallies["3376.dat"]
    with pytest.raises(PermanentError, match=r"rows of sales items postgres in 3376\.dat, but pg_dump wrote no such"):
        rows_by_table(LISTING, tallies)
