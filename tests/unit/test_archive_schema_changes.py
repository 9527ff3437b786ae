"""Which changes of the source's columns an archive follows: Parquet by the Arrow types its manifests record, Iceberg
by its schema, evolved through PyIceberg's own update_schema() on a real (SQLite, local files) catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from common.errors import PermanentError
from jobs.archive.iceberg_schema import evolve, plan_changes, refusal
from jobs.archive.parquet_schema import widens


@pytest.mark.parametrize(
    ("old", "new", "follows"),
    [
        ("int32", "int64", True),  # integer to bigint
        ("int16", "int32", True),  # smallint to integer
        ("float", "double", True),  # real to double precision
        ("decimal128(12, 2)", "decimal128(14, 2)", True),  # a numeric's precision
        ("string", "string", True),  # varchar(10) to varchar(50), or to text
        ("int64", "int32", False),  # narrower
        ("string", "int32", False),  # text to integer
        ("decimal128(12, 2)", "decimal128(12, 4)", False),  # another scale
        ("timestamp[us]", "timestamp[us, tz=UTC]", False),  # timestamp to timestamptz
    ],
)
def test_parquet_follows_the_widenings_engines_merge(old: str, new: str, follows: bool) -> None:
    assert widens(old, new) is follows


def _schema(*fields: tuple[str, Any, bool]) -> Any:
    from pyiceberg.schema import Schema
    from pyiceberg.types import NestedField

    return Schema(*(NestedField(i + 1, name, kind, required=req) for i, (name, kind, req) in enumerate(fields)))


def test_iceberg_evolves_a_real_table_and_refuses_what_it_cannot_follow(tmp_path: Path) -> None:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.types import DecimalType, DoubleType, FloatType, IntegerType, LongType, StringType

    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}")
    catalog.create_namespace("n")
    found = _schema(
        ("id", LongType(), True),
        ("qty", IntegerType(), True),
        ("ratio", FloatType(), False),
        ("amount", DecimalType(10, 2), False),
        ("note", StringType(), True),
    )
    table = catalog.create_table(("n", "t"), schema=found)
    # The source now: qty bigint, ratio double, amount numeric(12,2), note dropped, region added.
    expected = _schema(
        ("id", LongType(), True),
        ("qty", LongType(), True),
        ("ratio", DoubleType(), False),
        ("amount", DecimalType(12, 2), False),
        ("region", StringType(), True),
    )
    changes = plan_changes(table.schema(), expected)
    assert not changes.refused
    assert [f.name for f in changes.added] == ["region"]
    assert [name for name, _, _ in changes.widened] == ["qty", "ratio", "amount"]
    assert changes.kept == ["note"]
    assert changes.loosened == ["note"]  # required in the table, absent from newer rows
    evolve(table, changes)
    evolved = {f.name: f for f in catalog.load_table(("n", "t")).schema().fields}
    assert str(evolved["qty"].field_type) == "long"
    assert str(evolved["ratio"].field_type) == "double"
    assert str(evolved["amount"].field_type) == "decimal(12, 2)"
    assert not evolved["region"].required
    assert not evolved["note"].required
    assert not plan_changes(catalog.load_table(("n", "t")).schema(), expected).any  # nothing left to change

    # text to integer, and a narrower decimal scale: refused, naming the columns.
    wrong = _schema(
        ("id", LongType(), True),
        ("qty", LongType(), True),
        ("ratio", DoubleType(), False),
        ("amount", DecimalType(12, 4), False),
        ("region", IntegerType(), False),
    )
    refused = plan_changes(catalog.load_table(("n", "t")).schema(), wrong).refused
    assert [r.split(" ")[0] for r in refused] == ["amount", "region"]
    error = refusal("n.t", "public.orders", refused)
    assert isinstance(error, PermanentError)
    assert error.reason.value == "SchemaMismatch"
    assert "region (string in the table, int now)" in str(error)
    # A source narrower than the table (bigint back to integer) still appends: nothing to change, nothing refused.
    narrower = plan_changes(
        catalog.load_table(("n", "t")).schema(), _schema(("id", LongType(), True), ("qty", IntegerType(), True))
    )
    assert not narrower.refused
    assert not narrower.widened
