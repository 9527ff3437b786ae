"""Iceberg maintenance's pure parts and its deletes: spec.iceberg.maintenance read and checked; small files packed
into bins of the target size; a partition value's time span; and a store that refuses a delete (over a fake boto3
client, the store's seam) stopping the run with the reason, after the files it could delete."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from common.errors import InvalidSpec, PermanentError, RetryableError
from common.reasons import Reason
from common.storage.s3 import S3Store
from jobs.archive.iceberg_cleanup import Cleaned, delete_files
from jobs.archive.iceberg_compaction import bins, partition_span
from jobs.archive.settings import parse_archive_spec
from tests.unit.test_archive_pure import SPEC
from tests.unit.test_store import SPEC as STORE_SPEC


def test_maintenance_runs_by_default_with_a_week_of_snapshots_and_a_day_of_grace() -> None:
    iceberg = parse_archive_spec({**SPEC, "format": "Iceberg"}).iceberg
    assert iceberg is not None
    assert iceberg.maintenance.enabled
    assert iceberg.maintenance.snapshot_retention == timedelta(days=7)
    assert iceberg.maintenance.orphan_grace == timedelta(days=1)


def test_maintenance_settings_are_read_as_written_and_a_bad_duration_names_its_field() -> None:
    written = {"enabled": False, "snapshotRetention": "36h", "orphanGracePeriod": "0s"}
    iceberg = parse_archive_spec({**SPEC, "format": "Iceberg", "iceberg": {"maintenance": written}}).iceberg
    assert iceberg is not None
    assert (iceberg.maintenance.enabled, iceberg.maintenance.snapshot_retention) == (False, timedelta(hours=36))
    assert iceberg.maintenance.orphan_grace == timedelta(0)
    with pytest.raises(InvalidSpec, match=r"spec\.iceberg\.maintenance\.snapshotRetention"):
        parse_archive_spec({**SPEC, "format": "Iceberg", "iceberg": {"maintenance": {"snapshotRetention": "week"}}})


@dataclass
class File:
    file_path: str
    file_size_in_bytes: int


@dataclass
class Task:
    file: File


def sizes(groups: list[list[Any]]) -> list[list[int]]:
    return [[t.file.file_size_in_bytes for t in group] for group in groups]


def test_small_files_are_packed_into_bins_of_the_target_size_and_none_is_rewritten_alone() -> None:
    tasks = [Task(File(f"f{n}", size)) for n, size in enumerate([40, 40, 40, 30, 50, 10])]
    assert sizes(bins(tasks, 100)) == [[40, 40], [40, 30], [50, 10]]
    assert sizes(bins(tasks[:5], 100)) == [[40, 40], [40, 30, 50]]  # the last one joins the bin before
    assert sizes(bins(tasks[:2], 1000)) == [[40, 40]]


def test_a_partition_value_spans_its_day_month_or_year() -> None:
    day = datetime(2025, 3, 4, tzinfo=UTC)
    assert partition_span("day", (day - datetime(1970, 1, 1, tzinfo=UTC)).days) == (day, day + timedelta(days=1))
    december = datetime(2025, 12, 1, tzinfo=UTC)
    assert partition_span("month", 55 * 12 + 11) == (december, datetime(2026, 1, 1, tzinfo=UTC))
    assert partition_span("year", 55) == (datetime(2025, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))
    assert partition_span("bucket[4]", 3) is None


class RefusingClient:
    """boto3's S3 client as the store calls it to delete: `refused` keys answer with `error`."""

    def __init__(self, refused: str, error: Exception) -> None:
        self.refused = refused
        self.error = error
        self.deleted: list[str] = []

    def delete_object(self, **arguments: Any) -> None:
        if arguments["Key"] == self.refused:
            raise self.error
        self.deleted.append(arguments["Key"])


def refusal(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "op")


def test_a_store_that_refuses_a_delete_stops_the_run_with_the_reason_and_what_stays() -> None:
    client = RefusingClient("p/t/iceberg/data/b.parquet", refusal(403, "AccessDenied"))
    store = S3Store(client, STORE_SPEC)  # type: ignore[arg-type]
    cleaned = Cleaned()
    keys = ["p/t/iceberg/data/a.parquet", "p/t/iceberg/data/b.parquet", "p/t/iceberg/data/c.parquet"]
    with pytest.raises(PermanentError) as raised:
        delete_files(store, keys, cleaned)
    assert raised.value.reason is Reason.DELETE_REFUSED
    message = str(raised.value)
    assert "s3://bucket/p/t/iceberg/data/b.parquet" in message
    assert "the table is whole, and 2 unreferenced files stay" in message
    assert "s3:DeleteObject" in message
    assert client.deleted == ["p/t/iceberg/data/a.parquet"]  # the one before; none after the refusal
    assert cleaned.files_deleted == 1


def test_a_store_that_is_unreachable_mid_deletes_is_retryable() -> None:
    client = RefusingClient("k", refusal(503, "SlowDown"))
    with pytest.raises(RetryableError, match="the table is whole"):
        delete_files(S3Store(client, STORE_SPEC), ["k"], Cleaned())  # type: ignore[arg-type]
