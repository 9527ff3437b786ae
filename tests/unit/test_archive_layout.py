"""partitioning: Auto's choice of a granularity, the layout an archive's keys show, and its layout record."""

from __future__ import annotations

from dataclasses import replace

import pytest

from common.errors import PermanentError
from jobs.archive.dry_run import auto_layout_note
from jobs.archive.layout import (
    TARGET_PARTITION_BYTES,
    DueMeasure,
    LayoutRecord,
    choose_granularity,
    layout_of_key,
)
from jobs.archive.settings import live_changes, parse_archive_spec
from tests.unit.test_archive_pure import SPEC

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("measure", "chosen"),
    [
        # 2,000,000 rows of 100 bytes a day: 190 MiB a day.
        (DueMeasure(rows=60_000_000, bytes=6_000_000_000, days=30, months=1), "Daily"),
        # 40,000 rows of 100 bytes a day: 3.8 MiB a day, 114 MiB a month.
        (DueMeasure(rows=14_600_000, bytes=1_460_000_000, days=365, months=12), "Monthly"),
        # The table: 50,000 rows over three and a half years.
        (DueMeasure(rows=50_000, bytes=5_000_000, days=1278, months=43), "Yearly"),
        # Exactly the target a day.
        (DueMeasure(rows=1000, bytes=TARGET_PARTITION_BYTES * 3, days=3, months=1), "Daily"),
    ],
    ids=["dense", "medium", "thin", "at-the-target"],
)
def test_auto_chooses_the_finest_granularity_whose_partitions_hold_64_mib(measure: DueMeasure, chosen: str) -> None:
    choice = choose_granularity(measure)
    assert choice.partitioning == chosen
    assert f"{measure.rows} rows due" in choice.why
    assert choice.transform == {"Daily": "day", "Monthly": "month", "Yearly": "year"}[chosen]


@pytest.mark.parametrize(
    ("key", "layout"),
    [
        ("p/public.t/dt=2024-01-05/part-b-000.parquet", "Daily"),
        ("p/public.t/dt=2024-01/part-b-000.parquet", "Monthly"),
        ("p/public.t/dt=2024/part-b-000.parquet.age", "Yearly"),
        ("p/public.t/part-b-000.csv.gz", "None"),
    ],
)
def test_the_layout_an_archives_keys_show(key: str, layout: str) -> None:
    assert layout_of_key(key) == layout


def test_a_layout_record_reads_back_and_a_damaged_one_is_refused() -> None:
    record = LayoutRecord("Monthly", "2026-01-01T00:00:00Z", "because")
    assert LayoutRecord.read(record.to_bytes(), "k") == record
    with pytest.raises(PermanentError, match="is not a cellar layout record"):
        LayoutRecord.read(b'{"partitioning": "Hourly", "chosenAt": "x"}', "k")


def test_auto_is_the_default_and_a_resolved_auto_is_no_spec_change() -> None:
    spec = {k: v for k, v in SPEC.items() if k != "partitioning"}
    settings = parse_archive_spec(spec)
    assert settings.partitioning == "Auto"
    resolved = replace(settings, partitioning="Yearly")
    _, applied, later = live_changes(resolved, parse_archive_spec(spec))
    assert (applied, later) == ({}, [])
    _, _, later = live_changes(resolved, parse_archive_spec({**spec, "partitioning": "Daily"}))
    assert later == ["partitioning"]


def test_a_dry_run_says_what_auto_would_choose() -> None:
    report = {"rows": 50_000, "bytes": 5_000_000, "days": 1278, "months": 43}
    note = auto_layout_note(parse_archive_spec({k: v for k, v in SPEC.items() if k != "partitioning"}), report)
    assert note.startswith(" Layout: partitioning: Auto chooses Yearly for a new archive (50000 rows due")
    assert auto_layout_note(parse_archive_spec({**SPEC, "partitioning": "Daily"}), report) == ""
    assert auto_layout_note(parse_archive_spec(SPEC), {**report, "rows": 0}) == ""
    iceberg = parse_archive_spec({**SPEC, "format": "Iceberg"})
    assert "iceberg.partitionBy: Auto chooses year" in auto_layout_note(iceberg, report)
