"""A batch's manifest: what an archive run wrote for one batch (its objects, counts and columns), typed, and read
and written here alone, with its version rule.

Stored as JSON under `_cellar_manifests/<batch>.json` (objects.ObjectLayout). Version 2 may say its objects
are encrypted (`encryption`); an unencrypted batch still says 1, so that every cellar that reads 1 reads it, and
one that reads only 1 refuses an encrypted batch (UnsupportedManifest) rather than misread it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from common.documents import StoredDocument
from common.errors import PermanentError
from common.reasons import Reason

MANIFEST_FORMAT_VERSION = 2


def _aware(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ArchivedObject:
    """One object of a batch: where it is, its rows and their span, and the SHA-256 of its stored bytes."""

    object_key: str
    partition: str | None
    rows: int
    bytes: int
    sha256: str
    min_timestamp: str | None
    max_timestamp: str | None
    min_key: Any = None
    max_key: Any = None

    def spans(self, start: datetime, end: datetime) -> bool:
        """Whether rows of [start, end) may be in it."""
        if self.min_timestamp is None or self.max_timestamp is None:
            return False
        return _aware(self.min_timestamp) < end and _aware(self.max_timestamp) >= start

    @property
    def time_span(self) -> tuple[datetime, datetime]:
        """The first and last timestamp of its rows (objects_in_range picks only objects that have them)."""
        if self.min_timestamp is None or self.max_timestamp is None:
            raise PermanentError(f"{self.object_key}: the manifest gives no timestamps", reason=Reason.INVALID_MANIFEST)
        return _aware(self.min_timestamp), _aware(self.max_timestamp)

    def to_json(self) -> dict[str, Any]:
        return {
            "objectKey": self.object_key,
            "partition": self.partition,
            "rows": self.rows,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "minTimestamp": self.min_timestamp,
            "maxTimestamp": self.max_timestamp,
            "minKey": self.min_key,
            "maxKey": self.max_key,
        }

    @classmethod
    def parse(cls, data: dict[str, Any]) -> ArchivedObject:
        return cls(
            object_key=str(data["objectKey"]),
            partition=data.get("partition"),
            rows=int(data["rows"]),
            bytes=int(data.get("bytes", 0)),
            sha256=str(data["sha256"]),
            min_timestamp=data.get("minTimestamp"),
            max_timestamp=data.get("maxTimestamp"),
            min_key=data.get("minKey"),
            max_key=data.get("maxKey"),
        )


@dataclass(frozen=True)
class ArchivedColumn:
    """A column as the batch recorded it: unarchive casts each value back to `type`."""

    name: str
    type: str
    stored_as: str = ""
    generated: str | None = None  # "stored" or "virtual"

    def to_json(self) -> dict[str, str]:
        described = {"name": self.name, "type": self.type, "storedAs": self.stored_as}
        if self.generated:
            described["generated"] = self.generated
        return described

    @classmethod
    def parse(cls, data: dict[str, Any]) -> ArchivedColumn:
        return cls(str(data["name"]), str(data["type"]), str(data.get("storedAs", "")), data.get("generated"))


@dataclass(frozen=True)
class BatchManifest(StoredDocument):
    """An archive batch's manifest (`_cellar_manifests/<relation>/<batch>.json`): its objects and their rows."""

    latest_version: ClassVar[int] = MANIFEST_FORMAT_VERSION
    what: ClassVar[str] = "manifest"

    batch_id: str
    schema: str
    table: str
    format: str
    timestamp_column: str
    primary_key: list[str]
    cutoff: str
    run_id: str
    mode: str
    columns: list[ArchivedColumn]
    server_version: str
    objects: list[ArchivedObject]
    created_at: str
    encryption: dict[str, Any] | None = None  # {"format": "age", "recipients": [<fingerprints>]}
    format_version: int = field(default=0)

    @property
    def version(self) -> int:
        """What it is written as: 2 where its objects are encrypted, else 1."""
        return self.format_version or (MANIFEST_FORMAT_VERSION if self.encryption else 1)

    @property
    def rows(self) -> int:
        return sum(o.rows for o in self.objects)

    @property
    def relation(self) -> str:
        return f"{self.schema}.{self.table}"

    def object(self, key: str) -> ArchivedObject | None:
        return next((o for o in self.objects if o.object_key == key), None)

    def to_body(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "formatVersion": self.version,
            "batchId": self.batch_id,
            "relation": {"schema": self.schema, "table": self.table},
            "format": self.format,
            "compression": "zstd" if self.format == "Parquet" else "gzip",
            "timestampColumn": self.timestamp_column,
            "primaryKey": list(self.primary_key),
            "cutoff": self.cutoff,
            "runId": self.run_id,
            "mode": self.mode,
            "rows": self.rows,
            "columns": [c.to_json() for c in self.columns],
            "serverVersion": self.server_version,
            "objects": [o.to_json() for o in self.objects],
            "createdAt": self.created_at,
        }
        if self.encryption:
            document["encryption"] = self.encryption
        return document

    @classmethod
    def from_body(cls, data: dict[str, Any], key: str) -> BatchManifest:
        relation = data.get("relation") or {}
        return cls(
            batch_id=str(data.get("batchId", "")),
            schema=str(relation.get("schema", "")),
            table=str(relation.get("table", "")),
            format=str(data["format"]),
            timestamp_column=str(data.get("timestampColumn", "")),
            primary_key=[str(k) for k in data.get("primaryKey", [])],
            cutoff=str(data.get("cutoff", "")),
            run_id=str(data.get("runId", "")),
            mode=str(data.get("mode", "")),
            columns=[ArchivedColumn.parse(c) for c in data.get("columns", [])],
            server_version=str(data.get("serverVersion", "")),
            objects=[ArchivedObject.parse(o) for o in data.get("objects", [])],
            created_at=str(data.get("createdAt", "")),
            encryption=data.get("encryption") or None,
            format_version=int(data.get("formatVersion", 0)),
        )

    @classmethod
    def damaged(cls, key: str, error: Exception, *, parsed: bool) -> PermanentError:
        if not parsed:
            return PermanentError(f"manifest {key} is not a batch manifest: {error}", reason=Reason.INVALID_MANIFEST)
        return PermanentError(
            f"manifest {key} lacks or mistypes {error}: it is damaged or not cellar's", reason=Reason.INVALID_MANIFEST
        )
