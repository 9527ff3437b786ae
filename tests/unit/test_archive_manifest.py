"""A batch manifest read and written in one place: what it writes reads back the same, an older cellar's
manifest still reads, and one of a newer format or a damaged one is refused with the key."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from common.errors import PermanentError
from common.reasons import Reason
from jobs.archive.manifest import MANIFEST_FORMAT_VERSION, ArchivedColumn, ArchivedObject, BatchManifest

OBJECT = ArchivedObject(
    "p/public.t/dt=2024-01-01/part-b-000.parquet",
    "dt=2024-01-01",
    3,
    100,
    "ab" * 32,
    "2024-01-01T00:00:00+00:00",
    "2024-01-01T10:00:00+00:00",
    1,
    3,
)


def manifest(**changes: object) -> BatchManifest:
    fields: dict[str, object] = {
        "batch_id": "b",
        "schema": "public",
        "table": "t",
        "format": "Parquet",
        "timestamp_column": "at",
        "primary_key": ["id"],
        "cutoff": "2024-02-01T00:00:00+00:00",
        "run_id": "r",
        "mode": "Move",
        "columns": [ArchivedColumn("id", "bigint", "int64"), ArchivedColumn("g", "text", "string", "stored")],
        "server_version": "18.1",
        "objects": [OBJECT],
        "created_at": "2024-02-01T00:00:01+00:00",
        **changes,
    }
    return BatchManifest(**fields)  # type: ignore[arg-type]


def test_what_is_written_reads_back_the_same() -> None:
    plain = manifest()
    read = BatchManifest.read(plain.to_bytes(), "k")
    assert read.to_bytes() == plain.to_bytes()
    assert (read.version, read.rows, read.relation) == (1, 3, "public.t")
    assert read.object(OBJECT.object_key) == OBJECT
    sealed = manifest(encryption={"format": "age", "recipients": ["sha256:0123456789abcdef"]})
    assert json.loads(sealed.to_bytes())["formatVersion"] == MANIFEST_FORMAT_VERSION == 2


def test_an_older_manifest_without_the_later_fields_still_reads() -> None:
    older = {
        "formatVersion": 1,
        "format": "Parquet",
        "relation": {"schema": "public", "table": "t"},
        "columns": [{"name": "id", "type": "bigint"}],
        "objects": [
            {
                "objectKey": "k1",
                "rows": 2,
                "sha256": "00",
                "minTimestamp": "2024-01-01T00:00:00",
                "maxTimestamp": "2024-01-02T00:00:00",
            }
        ],
    }
    read = BatchManifest.read(json.dumps(older).encode(), "k")
    assert read.columns == [ArchivedColumn("id", "bigint")]
    assert read.objects[0].time_span == (datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC))
    assert read.objects[0].spans(datetime(2024, 1, 1, 12, tzinfo=UTC), datetime(2024, 1, 3, tzinfo=UTC))
    assert not read.objects[0].spans(datetime(2024, 1, 3, tzinfo=UTC), datetime(2024, 1, 4, tzinfo=UTC))


@pytest.mark.parametrize(
    ("body", "reason", "says"),
    [
        (json.dumps({"formatVersion": 3, "format": "Parquet"}).encode(), Reason.UNSUPPORTED_MANIFEST, "upgrade cellar"),
        (b"not json", Reason.INVALID_MANIFEST, "is not a batch manifest"),
        (json.dumps({"formatVersion": 1, "objects": [{"rows": 1}]}).encode(), Reason.INVALID_MANIFEST, "lacks"),
    ],
)
def test_a_newer_or_damaged_manifest_is_refused_naming_it(body: bytes, reason: Reason, says: str) -> None:
    with pytest.raises(PermanentError) as raised:
        BatchManifest.read(body, "p/_cellar_manifests/b.json")
    assert raised.value.reason == reason
    assert "p/_cellar_manifests/b.json" in str(raised.value)
    assert says in str(raised.value)
