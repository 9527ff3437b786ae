"""Every status record fits the CRD schema it is written to: names and types, field by field."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

import jobs.archive.status
import jobs.backup.status
from common.reasons import Reason
from common.status import Progress, RunRecord, StatusRecord, camel_case

CRDS = Path(__file__).resolve().parents[2] / "cronjobs" / "crds"
SAMPLES: dict[Any, Any] = {
    str: "2026-11-29T00:00:00Z",
    int: 7,
    float: 1.5,
    bool: True,
    Reason: Reason.COMPLETED,
    list[str]: ["app"],
}
JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", Reason: "string", list[str]: "array"}


def _records() -> list[type[StatusRecord]]:
    found: list[type[StatusRecord]] = []
    for module in (jobs.backup.status, jobs.archive.status):
        found += [
            value
            for value in vars(module).values()
            if isinstance(value, type) and issubclass(value, StatusRecord) and value.written_to
        ]
    return [Progress, *found]


def _plain(annotation: Any) -> type:
    """`int | None` -> int."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return typing.cast(type, inner)
    return typing.cast(type, annotation)


def _full_sample(record: type[StatusRecord]) -> StatusRecord:
    hints = typing.get_type_hints(record)
    return record(**{f.name: SAMPLES[_plain(hints[f.name])] for f in dataclasses.fields(record)})


def _status_schema(crd_file: str, path: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / crd_file).read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    for part in filter(None, path.split(".")):
        schema = schema["properties"][part.removesuffix("[]")]
        if part.endswith("[]"):  # a list of records: its items' schema
            schema = schema["items"]
    return dict(schema)


@pytest.mark.parametrize("record", _records(), ids=lambda r: r.__name__)
def test_a_status_record_writes_only_what_the_crd_schema_keeps(record: type[StatusRecord]) -> None:
    sample = _full_sample(record)
    written = sample.to_status()
    hints = typing.get_type_hints(record)
    assert len(written) == len(dataclasses.fields(record))  # a full sample writes every field
    for crd_file, path in record.written_to:
        schema = _status_schema(crd_file, path)
        properties = schema["properties"]
        for field in dataclasses.fields(record):
            name = camel_case(field.name)
            assert name in properties, f"{record.__name__}.{field.name}: {crd_file} status.{path} has no {name}"
            expected = JSON_TYPES[_plain(hints[field.name])]
            assert properties[name]["type"] == expected, f"{record.__name__}.{field.name} in {crd_file}"


def test_names_and_leaving_out_follow_one_rule() -> None:
    assert camel_case("longest_transaction_seconds") == "longestTransactionSeconds"
    assert camel_case("from_") == "from"
    # A record written into what status has leaves its None fields out (a merge patch keeps them)...
    verified = jobs.backup.status.SuccessfulBackup("backups/b1.dump", verified=True)
    assert verified.to_status() == {"key": "backups/b1.dump", "verified": True}
    # ... and a run's record, which describes that run alone, clears them (null in a merge patch).
    run = RunRecord("abc", "2026-11-29T00:00:00Z", reason=Reason.STALE)
    assert run.to_status() == {
        "runId": "abc",
        "startTime": "2026-11-29T00:00:00Z",
        "completionTime": None,
        "durationSeconds": None,
        "reason": "Stale",
        "message": None,
    }
    assert type(run.to_status()["reason"]) is str
