"""spec.iceberg, read and checked: where an archive of `format: Iceberg` is catalogued and how its table is laid out.

Two kinds of catalog: `Sql`, an Iceberg SQL catalog (iceberg_sql_catalog.py), two tables (iceberg_tables,
iceberg_namespace_properties) in a PostgreSQL database, by default the archived database itself, in a schema of
cellar's (`cellar_iceberg`); and `Rest`, a server of the Iceberg REST catalog protocol (spec.iceberg.catalog.rest),
reached with a bearer token or OAuth2 client credentials from Secrets, over TLS with a private CA where one is
named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlsplit

from common.encryption import KeyRef
from common.errors import InvalidSpec
from common.schema import ICEBERG_CATALOG_TYPES, ICEBERG_PARTITION_BY
from common.spec import DatabaseSpec, SecretKeyRef, SpecReader

DEFAULT_CATALOG_SCHEMA = "cellar_iceberg"
DEFAULT_TARGET_FILE_SIZE_MIB = 128
# Auto: chosen from the rows due when the table is created, then read back from its partition spec (layout.py).
DEFAULT_PARTITION_BY = "Auto"
DEFAULT_SNAPSHOT_RETENTION = "7d"
DEFAULT_ORPHAN_GRACE = "1d"
# Table properties cellar sets itself; spec.iceberg.properties may not override them.
OWN_PROPERTIES = ("write.target-file-size-bytes",)
REST_FIELD = "spec.iceberg.catalog.rest"
# REST catalog properties cellar sets from spec.iceberg.catalog.rest's own fields and spec.storage: the field to use.
OWN_REST_PROPERTIES = {
    "uri": "uri",
    "warehouse": "warehouse",
    "prefix": "prefix",
    "token": "auth.bearerToken",
    "credential": "auth.oauth2",
    "scope": "auth.oauth2.scope",
    "oauth2-server-uri": "auth.oauth2.tokenEndpoint",
    "ssl": "caBundle",
    "auth": "auth",
}
OWN_REST_PREFIXES = {"s3.": "spec.storage", "ssl.": "caBundle", "client.": "spec.storage"}


@dataclass(frozen=True)
class OAuth2Spec:
    """auth.oauth2: the client credentials grant, the id and secret from Secret keys."""

    client_id: SecretKeyRef
    client_secret: SecretKeyRef
    scope: str | None = None
    token_endpoint: str | None = None  # None: the catalog's own <uri>/v1/oauth/tokens


@dataclass(frozen=True)
class RestCatalogSpec:
    """spec.iceberg.catalog.rest: a server of the Iceberg REST catalog protocol."""

    uri: str
    warehouse: str | None = None
    prefix: str | None = None
    bearer_token: SecretKeyRef | None = None
    oauth2: OAuth2Spec | None = None
    ca_bundle: KeyRef | None = None
    properties: dict[str, str] = field(default_factory=dict)

    def credential_keys(self) -> str:
        """Where the credentials the catalog refused come from, for messages: the fields and Secret keys, never a
        value."""
        if self.bearer_token is not None:
            ref = self.bearer_token
            return f'{ref.field} (Secret "{ref.name}" key "{ref.key}")'
        if self.oauth2 is not None:
            ids = self.oauth2.client_id, self.oauth2.client_secret
            return " and ".join(f'{ref.field} (Secret "{ref.name}" key "{ref.key}")' for ref in ids)
        return f"{REST_FIELD}.auth (none is set: the catalog may want a bearer token or OAuth2 client credentials)"


@dataclass(frozen=True)
class IcebergCatalogSpec:
    """spec.iceberg.catalog: `database` None means the archived database (spec.database)."""

    type: str
    database: DatabaseSpec | None
    schema: str
    name: str  # the catalog's name in its tables (catalog_name): one database may hold several catalogs
    rest: RestCatalogSpec | None = None  # type Rest


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
    partition_by: str  # day, month, year; Auto until the run resolves it (IcebergTable.open)
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


def _https_or_http(reader: SpecReader, key: str, *, required: bool = False) -> str | None:
    value = reader.string(key, required=required) if required or reader.has(key) else None
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise InvalidSpec(f"{reader.path}.{key}: {value!r} must be an http:// or https:// URL without a query")
    if parts.password or parts.username:
        raise InvalidSpec(f"{reader.path}.{key}: must not hold credentials; give them in {reader.path}.auth")
    return value


def _string_map(reader: SpecReader, key: str) -> dict[str, str]:
    found = reader.data.get(key) or {}
    if not isinstance(found, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in found.items()):
        raise InvalidSpec(f"{reader.path}.{key}: must map property names to strings")
    return dict(found)


def _rest_properties(reader: SpecReader) -> dict[str, str]:
    properties = _string_map(reader, "properties")
    for name in properties:
        own = OWN_REST_PROPERTIES.get(name) or next(
            (where for prefix, where in OWN_REST_PREFIXES.items() if name.startswith(prefix)), None
        )
        if own is not None:
            where = own if own.startswith("spec.") else f"{reader.path}.{own}"
            raise InvalidSpec(f"{reader.path}.properties: {name} is set by {where}; set it there")
    return properties


def _ca_bundle(reader: SpecReader) -> KeyRef | None:
    if not reader.has("caBundle"):
        return None
    origin = reader.child("caBundle")
    kinds = [key for key in ("configMapKeyRef", "secretKeyRef") if origin.has(key)]
    if len(kinds) != 1:
        raise InvalidSpec(f"{origin.path}: set exactly one of configMapKeyRef and secretKeyRef")
    ref = SecretKeyRef.parse(origin.child(kinds[0]))
    return KeyRef("ConfigMap" if kinds[0] == "configMapKeyRef" else "Secret", ref.name, ref.key, ref.field)


def _oauth2(reader: SpecReader) -> OAuth2Spec:
    scope = reader.optional_string("scope")
    if scope is not None and (not scope.strip() or any(c in scope for c in "\r\n\x00")):
        raise InvalidSpec(f"{reader.path}.scope: must be a non-empty line (space-separated scopes)")
    return OAuth2Spec(
        SecretKeyRef.parse(reader.child("clientId", required=True)),
        SecretKeyRef.parse(reader.child("clientSecret", required=True)),
        scope,
        _https_or_http(reader, "tokenEndpoint"),
    )


def parse_rest_catalog(reader: SpecReader) -> RestCatalogSpec:
    """spec.iceberg.catalog.rest: the server, the warehouse, how to authenticate and which CA to trust."""
    uri = _https_or_http(reader, "uri", required=True)
    assert uri is not None
    auth = reader.child("auth")
    kinds = [key for key in ("bearerToken", "oauth2") if auth.has(key)]
    if len(kinds) > 1:
        raise InvalidSpec(f"{auth.path}: set one of bearerToken and oauth2, not both")
    prefix = reader.optional_string("prefix")
    if prefix is not None and (not prefix.strip("/") or "?" in prefix or "#" in prefix):
        raise InvalidSpec(f"{reader.path}.prefix: {prefix!r} must be a path segment of the catalog's URLs")
    warehouse = reader.optional_string("warehouse")
    if warehouse is not None and not warehouse:
        raise InvalidSpec(f"{reader.path}.warehouse: must not be empty (leave it out for the server's default)")
    return RestCatalogSpec(
        uri=uri,
        warehouse=warehouse,
        prefix=prefix.strip("/") if prefix else None,
        bearer_token=SecretKeyRef.parse(auth.child("bearerToken")) if "bearerToken" in kinds else None,
        oauth2=_oauth2(auth.child("oauth2")) if "oauth2" in kinds else None,
        ca_bundle=_ca_bundle(reader),
        properties=_rest_properties(reader),
    )


def _parse_catalog(catalog: SpecReader) -> IcebergCatalogSpec:
    catalog_type = catalog.string("type", "Sql", choices=ICEBERG_CATALOG_TYPES)
    catalog_schema = catalog.string("schema", DEFAULT_CATALOG_SCHEMA)
    if not catalog_schema or len(catalog_schema) > 63 or "\x00" in catalog_schema:
        raise InvalidSpec(f"{catalog.path}.schema: must be 1 to 63 characters without NUL")
    database = DatabaseSpec.parse(catalog.child("database")) if catalog.has("database") else None
    rest = None
    if catalog_type == "Rest":
        if database is not None:
            raise InvalidSpec(f"{catalog.path}.database: only with type Sql (a REST catalog keeps its own tables)")
        if not catalog.has("rest"):
            raise InvalidSpec(f"{catalog.path}.rest: required with type Rest (the catalog's uri, at least)")
        rest = parse_rest_catalog(catalog.child("rest"))
    elif catalog.has("rest"):
        raise InvalidSpec(f"{catalog.path}.rest: only with type Rest")
    return IcebergCatalogSpec(catalog_type, database, catalog_schema, _name(catalog, "name", "cellar"), rest)


def parse_iceberg_spec(reader: SpecReader, schema: str, table: str) -> IcebergSettings:
    """`schema` and `table`: the source's, the defaults of the namespace and the table name."""
    catalog = _parse_catalog(reader.child("catalog"))
    partition_by = reader.string("partitionBy", DEFAULT_PARTITION_BY)
    if partition_by not in ICEBERG_PARTITION_BY:
        raise InvalidSpec(
            f"{reader.path}.partitionBy: {partition_by!r} is not a transform cellar partitions by; "
            f"use one of {', '.join(ICEBERG_PARTITION_BY)}"
        )
    properties = _string_map(reader, "properties")
    for own in OWN_PROPERTIES:
        if own in properties:
            raise InvalidSpec(f"{reader.path}.properties: {own} is set by targetFileSizeMiB")
    size_mib = reader.integer("targetFileSizeMiB", DEFAULT_TARGET_FILE_SIZE_MIB, minimum=1, maximum=4096)
    return IcebergSettings(
        catalog=catalog,
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
