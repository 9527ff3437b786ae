"""spec.iceberg, read and checked: where an archive of `format: Iceberg` is catalogued and how its table is laid out.

The catalog of this version is PyIceberg's SQL catalog: two tables (iceberg_tables, iceberg_namespace_properties)
in a PostgreSQL database, by default the archived database itself, in a schema of cellar's (`cellar_iceberg`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from common.errors import InvalidSpec
from common.schema import ICEBERG_CATALOG_TYPES, ICEBERG_TRANSFORMS, IcebergTransform
from common.spec import DatabaseSpec, SpecReader

DEFAULT_CATALOG_SCHEMA = "cellar_iceberg"
DEFAULT_TARGET_FILE_SIZE_MIB = 128
DEFAULT_PARTITION_BY: IcebergTransform = "month"
DEFAULT_SNAPSHOT_RETENTION = "7d"
DEFAULT_ORPHAN_GRACE = "1d"
# Table properties cellar sets itself; spec.iceberg.properties may not override them.
OWN_PROPERTIES = ("write.target-file-size-bytes",)


@dataclass(frozen=True)
class IcebergCatalogSpec:
    """spec.iceberg.catalog: `database` None means the archived database (spec.database)."""

    type: str
    database: DatabaseSpec | None
    schema: str
    name: str  # the catalog's name in its tables (catalog_name): one database may hold several catalogs


@dataclass(frozen=True)
class MaintenanceSettings:
    """spec.iceberg.maintenance: what `cellar-archive maintain` (and the end of each archive run) does."""

    enabled: bool = True  # at the end of each archive run; `maintain` runs whatever this says
    # Snapshots older than this are expired (the newest always stays, and any the ledger still needs).
    snapshot_retention: timedelta = timedelta(days=7)
    # Files no snapshot references are deleted once older than this: longer than any writer's run, whose files
    # are unreferenced until its commit.
    orphan_grace: timedelta = timedelta(days=1)


@dataclass(frozen=True)
class IcebergSettings:
    catalog: IcebergCatalogSpec
    namespace: str
    table: str
    partition_by: IcebergTransform
    target_file_size_bytes: int
    properties: dict[str, str] = field(default_factory=dict)
    maintenance: MaintenanceSettings = field(default_factory=MaintenanceSettings)

    @property
    def identifier(self) -> str:
        return f"{self.namespace}.{self.table}"

    def table_properties(self) -> dict[str, str]:
        return {**self.properties, "write.target-file-size-bytes": str(self.target_file_size_bytes)}


def _name(reader: SpecReader, key: str, default: str) -> str:
    value = reader.string(key, default)
    if not value or len(value) > 255 or "\x00" in value or "." in value:
        raise InvalidSpec(f"{reader.path}.{key}: {value!r} must be 1 to 255 characters, without '.' or NUL")
    return value


def parse_iceberg_spec(reader: SpecReader, schema: str, table: str) -> IcebergSettings:
    """`schema` and `table`: the source's, the defaults of the namespace and the table name."""
    catalog = reader.child("catalog")
    catalog_type = catalog.string("type", "Sql", choices=ICEBERG_CATALOG_TYPES)
    catalog_schema = catalog.string("schema", DEFAULT_CATALOG_SCHEMA)
    if not catalog_schema or len(catalog_schema) > 63 or "\x00" in catalog_schema:
        raise InvalidSpec(f"{catalog.path}.schema: must be 1 to 63 characters without NUL")
    database = DatabaseSpec.parse(catalog.child("database")) if catalog.has("database") else None
    partition_by = reader.string("partitionBy", DEFAULT_PARTITION_BY)
    if partition_by not in ICEBERG_TRANSFORMS:
        raise InvalidSpec(
            f"{reader.path}.partitionBy: {partition_by!r} is not a transform cellar partitions by; "
            f"use one of {', '.join(ICEBERG_TRANSFORMS)}"
        )
    properties = reader.data.get("properties") or {}
    if not isinstance(properties, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in properties.items()
    ):
        raise InvalidSpec(f"{reader.path}.properties: must map property names to strings")
    for own in OWN_PROPERTIES:
        if own in properties:
            raise InvalidSpec(f"{reader.path}.properties: {own} is set by targetFileSizeMiB")
    size_mib = reader.integer("targetFileSizeMiB", DEFAULT_TARGET_FILE_SIZE_MIB, minimum=1, maximum=4096)
    return IcebergSettings(
        catalog=IcebergCatalogSpec(catalog_type, database, catalog_schema, _name(catalog, "name", "cellar")),
        namespace=_name(reader, "namespace", schema),
        table=_name(reader, "table", table),
        partition_by=partition_by,
        target_file_size_bytes=size_mib * 1024 * 1024,
        properties=dict(properties),
        maintenance=_maintenance(reader.child("maintenance")),
    )


def _maintenance(reader: SpecReader) -> MaintenanceSettings:
    return MaintenanceSettings(
        enabled=reader.boolean("enabled", True),
        snapshot_retention=reader.duration("snapshotRetention", DEFAULT_SNAPSHOT_RETENTION),
        orphan_grace=reader.duration("orphanGracePeriod", DEFAULT_ORPHAN_GRACE),
    )
