"""The Iceberg part of the TableArchive CRD (spec.iceberg): the table's catalog, SQL or REST, its layout and its
maintenance. Used by tools/crd_tablearchive.py."""

from __future__ import annotations

from typing import Any

from common.schema import ICEBERG_CATALOG_TYPES, ICEBERG_PARTITION_BY
from tools.crd_schema import (
    boolean,
    database_connection,
    duration,
    integer,
    obj,
    secret_key_selector,
    string,
)


def rest_catalog() -> dict[str, Any]:
    """spec.iceberg.catalog.rest: a server of the Iceberg REST catalog protocol."""
    url = {"type": "string", "pattern": "^https?://[^?#]+$", "maxLength": 2048}
    return obj(
        "With type Rest: a server of the Iceberg REST catalog protocol (Apache Polaris, Lakekeeper, Nessie, "
        "Gravitino, Unity Catalog, AWS S3 Tables and Glue speak it; see the guide for which are tested). Data files "
        "still go to spec.storage with its credentials; the server writes the metadata files with its own.",
        {
            "uri": {
                **url,
                "description": "The catalog's base URL, before /v1 (https://polaris.example:8181/api/catalog).",
            },
            "warehouse": string(
                "The warehouse (or catalog) to use, sent as ?warehouse= to /v1/config. Default: the server's.",
                minLength=1,
                maxLength=1024,
            ),
            "prefix": string(
                "A path segment after /v1/ for every request. Usually left out: the server's /v1/config sets it.",
                minLength=1,
                maxLength=1024,
            ),
            "auth": obj(
                "How cellar authenticates: a bearer token, or OAuth2 client credentials exchanged for a token. "
                "Neither: the server is asked without credentials.",
                {
                    "bearerToken": secret_key_selector("A Secret key holding a bearer token, sent as is."),
                    "oauth2": obj(
                        "OAuth2 client credentials grant.",
                        {
                            "clientId": secret_key_selector("The Secret key holding the client id."),
                            "clientSecret": secret_key_selector("The Secret key holding the client secret."),
                            "scope": string(
                                "The scope asked for (Polaris: PRINCIPAL_ROLE:ALL). Default: catalog.",
                                minLength=1,
                                maxLength=1024,
                            ),
                            "tokenEndpoint": {
                                **url,
                                "description": "The token endpoint (oauth2-server-uri). Default: <uri>/v1/oauth/tokens",
                            },
                        },
                        required=["clientId", "clientSecret"],
                    ),
                },
                rules=[
                    {
                        "rule": "!(has(self.bearerToken) && has(self.oauth2))",
                        "message": "set one of bearerToken and oauth2, not both",
                    }
                ],
            ),
            "caBundle": obj(
                "The PEM CA bundle that signed the catalog's (and token endpoint's) TLS certificate: a private CA.",
                {
                    "configMapKeyRef": secret_key_selector("A key of a ConfigMap in this namespace.", "ConfigMap"),
                    "secretKeyRef": secret_key_selector("A key of a Secret in this namespace."),
                },
                rules=[
                    {
                        "rule": "has(self.configMapKeyRef) != has(self.secretKeyRef)",
                        "message": "set exactly one of configMapKeyRef and secretKeyRef",
                    }
                ],
            ),
            "properties": {
                "type": "object",
                "description": "More RestCatalog properties (header.* and others); not those the fields above set.",
                "additionalProperties": {"type": "string"},
                "maxProperties": 64,
            },
        },
        required=["uri"],
    )


def iceberg() -> dict[str, Any]:
    """spec.iceberg: the catalog and layout of an archive of format: Iceberg."""
    name = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": r"^[^.\x00]+$"}
    return obj(
        "With format: Iceberg: the Iceberg table the rows are appended to, one snapshot per batch (its summary "
        "carries cellar's batch id). Data and metadata files go to spec.storage (S3), under "
        "<prefix>/<schema>.<table>/iceberg/.",
        {
            "catalog": obj(
                "Where the table is catalogued: Sql, an Iceberg SQL catalog, two tables (iceberg_tables, "
                "iceberg_namespace_properties, as PyIceberg's SqlCatalog and Iceberg's JDBC catalog keep them) in a "
                "PostgreSQL schema of cellar's; or Rest, an Iceberg REST "
                "catalog server (rest).",
                {
                    "type": string("The catalog's kind.", enum=list(ICEBERG_CATALOG_TYPES), default="Sql"),
                    "database": {
                        **database_connection(),
                        "description": "The PostgreSQL database of the catalog, its credentials in a Secret as for "
                        "spec.database. Default: the archived database itself (spec.database).",
                    },
                    "schema": string(
                        "The PostgreSQL schema of the catalog's tables; made when missing.",
                        minLength=1,
                        maxLength=63,
                        default="cellar_iceberg",
                    ),
                    "name": {
                        **name,
                        "description": "The catalog's name (catalog_name in its tables).",
                        "default": "cellar",
                    },
                    "rest": rest_catalog(),
                },
                default={},
                rules=[
                    {
                        "rule": "!has(self.type) || self.type != 'Rest' || has(self.rest)",
                        "message": "type Rest needs rest (its uri)",
                    },
                    {
                        "rule": "(has(self.type) && self.type == 'Rest') || !has(self.rest)",
                        "message": "rest is only for type Rest",
                    },
                    {
                        "rule": "!(has(self.type) && self.type == 'Rest' && has(self.database))",
                        "message": "database is only for type Sql",
                    },
                ],
            ),
            "namespace": {**name, "description": "The Iceberg namespace. Default: the source table's schema."},
            "table": {**name, "description": "The Iceberg table's name. Default: the source table's name."},
            "partitionBy": string(
                "The Iceberg transform of timestampColumn that partitions the table: day, month, year, or Auto "
                "(chosen from the rows due when the table is created, so that a partition holds at least about "
                "64 MiB; an existing table keeps its partition spec).",
                enum=list(ICEBERG_PARTITION_BY),
                default="Auto",
            ),
            "targetFileSizeMiB": integer(
                "Target size of a data file (write.target-file-size-bytes).", minimum=1, maximum=4096, default=128
            ),
            "properties": {
                "type": "object",
                "description": "Iceberg table properties set when the table is created (write.* and others).",
                "additionalProperties": {"type": "string"},
                "maxProperties": 64,
            },
            "maintenance": obj(
                "What `cellar-archive maintain` does, and the end of each archive run: a partition's small data "
                "files rewritten into target-size files in one snapshot, old snapshots expired, files no snapshot "
                "references deleted.",
                {
                    "enabled": boolean(
                        "Maintain the table at the end of each archive run (`cellar-archive maintain` runs either "
                        "way).",
                        True,
                    ),
                    "snapshotRetention": duration(
                        "Snapshots older than this are expired (time travel reaches back this far); the newest, "
                        "and any whose batch the ledger has not recorded yet, always stay.",
                        default="7d",
                    ),
                    "orphanGracePeriod": duration(
                        "Files under the table's location that no snapshot references (a killed run's) are "
                        "deleted once older than this. Keep it longer than any run of a writer of the table "
                        "takes: its files are unreferenced until it commits.",
                        default="1d",
                    ),
                },
                default={},
            ),
        },
    )
