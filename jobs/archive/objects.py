"""Where a table's archived objects live, how a batch becomes objects, and their verified upload and read."""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from common.encryption import EXTENSION as ENCRYPTED_EXTENSION
from common.encryption import FORMAT as ENCRYPTION_FORMAT
from common.encryption import CorruptedCiphertext, Identities, decrypt_bytes, fingerprint
from common.errors import DecryptionFailed, VerificationFailed
from common.storage import ObjectStore
from jobs.archive.arrow_types import arrow_type
from jobs.archive.encoding import decode
from jobs.archive.manifest import ArchivedColumn, ArchivedObject, BatchManifest
from jobs.archive.settings import ArchiveSettings
from jobs.archive.table import Column, TableInfo


def object_name(batch_id: str, number: int) -> str:
    return f"part-{batch_id}-{number:03d}"


def batch_of(object_key: str) -> str | None:
    """The batch id in an object's name (part-<batch id>-<n>.<ext>), or None for a foreign object."""
    name = object_key.rsplit("/", 1)[-1]
    if not name.startswith("part-"):
        return None
    stem = name.removeprefix("part-").split(".", 1)[0]
    return stem.rsplit("-", 1)[0] or None


class ObjectLayout:
    """Where a table's objects and manifests live: data under `<schema>.<table>/` (hive-style
    partitions), manifests under `_cellar_manifests/` so query engines never read them as data."""

    def __init__(self, store: ObjectStore, settings: ArchiveSettings) -> None:
        self.store = store
        self.settings = settings
        self.data_prefix = store.key(settings.relation) + "/"
        self.manifest_prefix = store.key("_cellar_manifests", settings.relation) + "/"
        self.extension = (".parquet" if settings.format == "Parquet" else ".csv.gz") + (
            ENCRYPTED_EXTENSION if settings.encryption else ""
        )

    def data_key(self, partition: str | None, name: str) -> str:
        parts = [self.settings.relation, f"dt={partition}" if partition else "", f"{name}{self.extension}"]
        return self.store.key(*[p for p in parts if p])

    def manifest_key(self, name: str) -> str:
        return self.store.key("_cellar_manifests", self.settings.relation, f"{name}.json")


def column_description(column: Column) -> ArchivedColumn:
    """A column as a batch manifest records it: unarchive casts each value back to `type`."""
    generated = ("stored" if column.generated == "s" else "virtual") if column.generated else None
    return ArchivedColumn(column.name, column.pg_type, str(arrow_type(column)), generated)


def sort_batch(table: pa.Table, info: TableInfo) -> pa.Table:
    """A batch in (timestamp, key) order: partitions become contiguous slices and files sort by time.

    Arrow's sort on several keys costs several times its sort on one, so the key takes part only when
    two rows share a timestamp; rows already in order (as a table filled over time often reads) stay as
    they are."""
    if table.num_rows < 2:
        return table
    timestamps = table.column(info.timestamp_column.name).combine_chunks()
    if _strictly_ascending(timestamps):
        return table
    order = pc.sort_indices(timestamps)
    if _strictly_ascending(timestamps.take(order)):
        return table.take(order)
    return table.sort_by([(info.timestamp_column.name, "ascending"), *((k, "ascending") for k in info.primary_key)])


def _strictly_ascending(values: pa.Array) -> bool:
    """Every value greater than the one before (a NULL answers no)."""
    later = pc.greater(values.slice(1), values.slice(0, len(values) - 1))
    return pc.all(later, skip_nulls=False).as_py() is True


# A layout's period (Arrow's floor_temporal unit) and the label of its hive key (dt=<label>).
PARTITION_UNITS = {"Daily": ("day", "%Y-%m-%d"), "Monthly": ("month", "%Y-%m"), "Yearly": ("year", "%Y")}


def partitions(table: pa.Table, settings: ArchiveSettings, info: TableInfo) -> list[tuple[str | None, pa.Table]]:
    """Split a batch sorted by sort_batch into the hive partitions of its timestamps (a file holds one).

    Each partition is a zero-copy slice: the day (month, year) of each row is floored and run-length
    encoded, so the work is one pass over the timestamps whatever the number of partitions.
    """
    if settings.partitioning == "None" or table.num_rows == 0:
        return [(None, table)]
    column = table.column(info.timestamp_column.name)
    if pa.types.is_timestamp(column.type):
        column = pc.cast(column, pa.timestamp("us"))  # UTC wall time for timestamptz
    unit, label_format = PARTITION_UNITS[settings.partitioning]
    runs = pc.run_end_encode(pc.floor_temporal(column.combine_chunks(), unit=unit))
    result = []
    start = 0
    for end, period in zip(runs.run_ends.to_pylist(), runs.values.to_pylist(), strict=True):
        label = period.strftime(label_format)
        result.append((label, table.slice(start, end - start)))
        start = end
    return result


def split_by_size(table: pa.Table, max_bytes: int) -> list[pa.Table]:
    """Slices whose in-memory size stays under max_bytes (the encoded file is smaller still)."""
    size = max(1, table.nbytes)
    if size <= max_bytes or table.num_rows <= 1:
        return [table]
    pieces = -(-size // max_bytes)
    step = -(-table.num_rows // pieces)
    return [table.slice(offset, step) for offset in range(0, table.num_rows, step)]


def upload_verified(store: ObjectStore, key: str, body: bytes, sha256_hex: str) -> None:
    """PUT with a checksum the store checks, and verify what the store says it stored."""
    store.put_verified(key, body, sha256_hex)


def read_verified(
    store: ObjectStore,
    manifest: BatchManifest,
    described: ArchivedObject,
    columns: list[Column],
    identities: Identities | None = None,
) -> pa.Table:
    """Download one object of a batch, check its SHA-256 (of the stored bytes) and row count against the
    manifest, decrypt it when the manifest says it is encrypted, decode it."""
    key = described.object_key
    body = store.get_bytes(key)
    digest = hashlib.sha256(body).hexdigest()
    if digest != described.sha256:
        raise VerificationFailed(f"{key}: SHA-256 {digest} does not match the manifest's {described.sha256}")
    if manifest.encryption:
        body = decrypt_object(body, key, identities)
    table = decode(body, manifest.format, columns)
    if table.num_rows != described.rows:
        raise VerificationFailed(f"{key}: {table.num_rows} rows, the manifest says {described.rows}")
    return table


def decrypt_object(body: bytes, key: str, identities: Identities | None) -> bytes:
    """An encrypted object's plaintext; without identities, DecryptionFailed naming the spec field."""
    if identities is None:
        raise DecryptionFailed(
            f"{key} is encrypted; name the Secret holding an identity of one of its recipients in "
            "spec.encryption.identitySecretRef"
        )
    try:
        return decrypt_bytes(body, identities, what=key)
    except CorruptedCiphertext as exc:
        raise VerificationFailed(str(exc)) from None


def encryption_record(recipients: list[str]) -> dict[str, Any]:
    """What a batch manifest says of its objects' encryption: the format and the recipients' fingerprints."""
    return {"format": ENCRYPTION_FORMAT, "recipients": [fingerprint(r) for r in recipients]}
