"""`partitioning: Auto` (Parquet) and `partitionBy: Auto` (Iceberg): the granularity of an archive's partitions,
chosen once from the rows due and then kept with the archive, so later runs never mix granularities.

The choice: the finest of day, month and year whose partitions hold at least TARGET_PARTITION_BYTES of rows, as
measured on the rows due (their count, their size in PostgreSQL, and the days and months that hold them; the
dry run measures the same). Where it is kept: a Parquet archive's layout record,
`<prefix>/_cellar_layouts/<schema>.<table>.json`, written once with a conditional PUT; an Iceberg table's own
partition spec. An archive written before Auto existed keeps the layout its keys show (dt=YYYY-MM-DD, dt=YYYY-MM,
dt=YYYY or none). docs/design.md says why.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from psycopg import sql

from common.conditions import format_time
from common.documents import StoredDocument
from common.errors import PermanentError
from common.reasons import Reason
from common.schema import Partitioning
from common.storage import ObjectStore
from jobs.archive.settings import ArchiveSettings
from jobs.archive.statements import eligible_condition, table_name
from jobs.archive.table import Connection, TableInfo

log = logging.getLogger(__name__)

TARGET_PARTITION_BYTES = 64 * 1024 * 1024
# The oldest rows due measured at most: enough for a density, bounded on a first run over years of rows.
MEASURED_ROWS = 1_000_000
LAYOUTS = "_cellar_layouts"
TRANSFORMS: dict[Partitioning, str] = {"Daily": "day", "Monthly": "month", "Yearly": "year"}
_KEY_LAYOUT = re.compile(r"/dt=(\d{4})(-\d{2})?(-\d{2})?/")


@dataclass(frozen=True)
class DueMeasure:
    """The rows due as measured: how many, their bytes (pg_column_size), and how many days and months hold them."""

    rows: int
    bytes: int
    days: int
    months: int


@dataclass(frozen=True)
class LayoutChoice:
    """A granularity and why: `partitioning` as a Parquet archive names it (Daily, Monthly, Yearly, None)."""

    partitioning: Partitioning
    why: str

    @property
    def transform(self) -> str:
        """As an Iceberg partition transform (day, month, year)."""
        return TRANSFORMS[self.partitioning]

    def describe(self) -> str:
        return f"{self.partitioning} ({self.why})"


def _mib(value: float) -> str:
    return f"{value / (1024 * 1024):.1f} MiB"


def choose_granularity(measure: DueMeasure, target: int = TARGET_PARTITION_BYTES) -> LayoutChoice:
    """The finest granularity whose partitions hold at least `target` bytes on average; year when none does."""
    per_day = measure.bytes / max(1, measure.days)
    per_month = measure.bytes / max(1, measure.months)
    seen = (
        f"{measure.rows} rows due of about {round(measure.bytes / max(1, measure.rows))} bytes each over "
        f"{measure.days} days: about {_mib(per_day)} a day, {_mib(per_month)} a month"
    )
    if per_day >= target:
        return LayoutChoice("Daily", f"{seen}; a day holds at least {_mib(target)}")
    if per_month >= target:
        return LayoutChoice("Monthly", f"{seen}; a day holds less than {_mib(target)}, a month at least that")
    return LayoutChoice("Yearly", f"{seen}; a month holds less than {_mib(target)}")


def measure_due(
    conn: Connection, settings: ArchiveSettings, info: TableInfo, cutoff: datetime, limit: int = MEASURED_ROWS
) -> DueMeasure:
    """The oldest `limit` rows due, measured as the dry run measures them (one index range scan, nothing changed)."""
    holds = conn.execute("SELECT to_regclass('cellar.archive_holds') IS NOT NULL").fetchone()
    condition = eligible_condition(settings, info, cutoff, holds=bool(holds and holds[0]))
    ts = sql.Identifier(info.timestamp_column.name)
    row = conn.execute(
        sql.SQL(
            "SELECT count(*), coalesce(sum(pg_column_size(t.*)), 0), count(DISTINCT {ts}::date), "
            "count(DISTINCT date_trunc('month', {ts})) FROM (SELECT * FROM {table} WHERE {condition} ORDER BY {ts} "
            "LIMIT {limit}) t"
        ).format(ts=ts, table=table_name(settings), condition=condition, limit=sql.Literal(limit))
    ).fetchone()
    conn.rollback()
    assert row is not None
    return DueMeasure(int(str(row[0])), int(str(row[1])), int(str(row[2])), int(str(row[3])))


@dataclass(frozen=True)
class LayoutRecord(StoredDocument):
    """A Parquet archive's layout record: the granularity Auto chose for it, when, and why."""

    what: ClassVar[str] = "layout record"

    partitioning: Partitioning
    chosen_at: str
    why: str

    def to_body(self) -> dict[str, Any]:
        return {"partitioning": self.partitioning, "chosenAt": self.chosen_at, "why": self.why}

    @classmethod
    def from_body(cls, body: dict[str, Any], key: str) -> LayoutRecord:
        partitioning = next((p for p in (*TRANSFORMS, "None") if p == body["partitioning"]), None)
        if partitioning is None:
            raise ValueError(f"partitioning {body['partitioning']!r}")
        return cls(partitioning, str(body["chosenAt"]), str(body.get("why", "")))

    @classmethod
    def damaged(cls, key: str, error: Exception, *, parsed: bool) -> PermanentError:
        return PermanentError(
            f"{key} is not a cellar layout record ({error}); it keeps the granularity partitioning: Auto chose for "
            "this archive. Set spec.partitioning to the layout the archive's keys show (dt=...), or restore the record",
            reason=Reason.INVALID_MANIFEST,
        )


def layout_key(store: ObjectStore, relation: str) -> str:
    return store.key(LAYOUTS, f"{relation}.json")


def layout_of_key(key: str) -> Partitioning:
    """The layout an archived object's key shows: dt=YYYY-MM-DD, dt=YYYY-MM, dt=YYYY, or no dt= folder."""
    found = _KEY_LAYOUT.search(key)
    if found is None:
        return "None"
    return "Daily" if found.group(3) else "Monthly" if found.group(2) else "Yearly"


@dataclass(frozen=True)
class ParquetLayout:
    """Where a Parquet archive's layout is found: its store, its data folder and its relation."""

    store: ObjectStore
    data_prefix: str
    relation: str


def existing_parquet_layout(where: ParquetLayout) -> LayoutChoice | None:
    """The layout the archive keeps: its layout record, else the keys of an archive written before Auto existed;
    None when the archive holds nothing yet."""
    store = where.store
    key = layout_key(store, where.relation)
    found = store.get_if_exists(key)
    if found is not None:
        record = LayoutRecord.read(found[0], store.url(key))
        return LayoutChoice(record.partitioning, f"kept: chosen {record.chosen_at}, {record.why}")
    for listed in store.list_objects(where.data_prefix):
        if listed.key.rsplit("/", 1)[-1].startswith("part-"):
            shown = layout_of_key(listed.key)
            return LayoutChoice(shown, f"kept: the archive's objects were written {shown} before Auto")
    return None


def keep_parquet_layout(where: ParquetLayout, choice: LayoutChoice) -> LayoutChoice:
    """Write the layout record (If-None-Match: a run that chose at the same time wins, and its choice is kept)."""
    store = where.store
    key = layout_key(store, where.relation)
    record = LayoutRecord(choice.partitioning, format_time(datetime.now(UTC)), choice.why)
    if store.put_if(key, record.to_bytes(), etag=None):
        log.info("archive layout chosen", extra={"partitioning": choice.partitioning, "why": choice.why})
        return choice
    kept = existing_parquet_layout(where)
    return kept if kept is not None else choice
