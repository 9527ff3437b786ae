"""Reading an archive's Iceberg table as engines no one here wrote do: DuckDB's iceberg extension (its PyPI
packages) over MinIO, and PyIceberg's SQL and REST catalogs; and the figures the tests compare with PostgreSQL."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import duckdb
import psycopg

from tests.harness.iceberg_rest import CatalogGate, RestCatalogFixture
from tests.harness.stack import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.integration.archive_helpers import dsn, setup_archive
from tests.integration.environments import ArchiveEnv


def setup_iceberg_archive(env: ArchiveEnv, table: str = "orders", name: str = "orders", **spec: Any) -> dict[str, Any]:
    iceberg = spec.pop("iceberg", {})
    return setup_archive(env, table=table, name=name, format="Iceberg", iceberg=iceberg, **spec)


def iceberg_catalog(env: ArchiveEnv, schema: str = "cellar_iceberg") -> Any:
    """PyIceberg's SQL catalog over the test's database, as cellar's default catalog keeps it."""
    from pyiceberg.catalog.sql import SqlCatalog

    d = env.database
    with psycopg.connect(dsn(d), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    return SqlCatalog(
        "cellar",
        uri=f"postgresql+psycopg://{d['username']}:{d['password']}@{d['host']}:{d['port']}/{d['dbname']}"
        f"?options=-csearch_path%3D{schema}",
        **{
            "s3.endpoint": env.stack.s3_endpoint,
            "s3.access-key-id": S3_ACCESS_KEY,
            "s3.secret-access-key": S3_SECRET_KEY,
            "s3.region": "us-east-1",
        },
    )


def _extension(package: str, name: str) -> str:
    module = importlib.import_module(package)
    found = sorted(Path(str(module.__file__)).parent.glob(f"extensions/*/{name}.duckdb_extension"))
    assert found, f"{package} holds no {name} extension"
    return str(found[-1])


def duckdb_over_minio(env: ArchiveEnv) -> duckdb.DuckDBPyConnection:
    """DuckDB with its iceberg extension (and httpfs, avro) from their PyPI packages, reading MinIO."""
    conn = duckdb.connect()
    for package, name in (
        ("duckdb_extension_httpfs", "httpfs"),
        ("duckdb_extension_avro", "avro"),
        ("duckdb_extension_iceberg", "iceberg"),
    ):
        conn.load_extension(_extension(package, name))
    endpoint = env.stack.s3_endpoint.removeprefix("http://")
    conn.execute(
        f"CREATE SECRET minio (TYPE s3, KEY_ID '{S3_ACCESS_KEY}', SECRET '{S3_SECRET_KEY}', ENDPOINT '{endpoint}', "
        "URL_STYLE 'path', USE_SSL false, REGION 'us-east-1')"
    )
    return conn


def metadata_location(env: ArchiveEnv, namespace: str = "public", table: str = "orders") -> str:
    """The table's current metadata file, as the SQL catalog records it."""
    with psycopg.connect(dsn(env.database)) as conn:
        row = conn.execute(
            "SELECT metadata_location FROM cellar_iceberg.iceberg_tables WHERE table_namespace = %s "
            "AND table_name = %s",
            (namespace, table),
        ).fetchone()
    assert row is not None, "the catalog holds no such table"
    return str(row[0])


def figures_in_duckdb(conn: duckdb.DuckDBPyConnection, metadata: str, column: str = "amount") -> tuple[Any, ...]:
    """count, count of distinct ids, sum, min and max of `column` in the table at that metadata file."""
    found = conn.execute(
        f"SELECT count(*), count(DISTINCT id), sum({column}), min({column}), max({column}) "
        f"FROM iceberg_scan('{metadata}')"
    ).fetchone()
    assert found is not None
    return tuple(found)


def rest_namespace(env: ArchiveEnv) -> str:
    """The test's own Iceberg namespace in the session's one REST catalog."""
    return "t_" + env.bucket.removeprefix("cellar-")


def rest_catalog_spec(
    env: ArchiveEnv,
    gate: CatalogGate,
    *,
    auth: str = "oauth2",
    ca: str | None = "ConfigMap",
    uri: str | None = None,
    warehouse: str = "cellar",
) -> dict[str, Any]:
    """spec.iceberg over the gated REST catalog: its Secret (cellar-iceberg-rest: token, client-id,
    client-secret, ca.pem) and ConfigMap (cellar-iceberg-rest-ca) made, `auth` one of oauth2, bearer, none."""
    from kubernetes import client

    creds = gate.credentials
    env.create_secret(
        "cellar-iceberg-rest",
        {
            "token": creds.bearer_token,
            "client-id": creds.client_id,
            "client-secret": creds.client_secret,
            "ca.pem": gate.ca_pem,
        },
    )
    core = client.CoreV1Api(env.admin_api)
    body = {"metadata": {"name": "cellar-iceberg-rest-ca"}, "data": {"ca.pem": gate.ca_pem}}
    if not core.list_namespaced_config_map(env.namespace, field_selector="metadata.name=cellar-iceberg-rest-ca").items:
        core.create_namespaced_config_map(env.namespace, body)
    rest: dict[str, Any] = {"uri": uri or gate.uri, "warehouse": warehouse}
    if auth == "oauth2":
        rest["auth"] = {
            "oauth2": {
                "clientId": {"name": "cellar-iceberg-rest", "key": "client-id"},
                "clientSecret": {"name": "cellar-iceberg-rest", "key": "client-secret"},
                "scope": "PRINCIPAL_ROLE:ALL",
                "tokenEndpoint": f"{gate.uri}/oauth2/token",
            }
        }
    elif auth == "bearer":
        rest["auth"] = {"bearerToken": {"name": "cellar-iceberg-rest", "key": "token"}}
    if ca == "ConfigMap":
        rest["caBundle"] = {"configMapKeyRef": {"name": "cellar-iceberg-rest-ca", "key": "ca.pem"}}
    elif ca == "Secret":
        rest["caBundle"] = {"secretKeyRef": {"name": "cellar-iceberg-rest", "key": "ca.pem"}}
    return {"namespace": rest_namespace(env), "catalog": {"type": "Rest", "rest": rest}}


def rest_catalog(env: ArchiveEnv, gate: CatalogGate) -> Any:
    """PyIceberg's RestCatalog through the gate (bearer token, the test CA), as a reader elsewhere opens it."""
    from pyiceberg.catalog.rest import RestCatalog

    return RestCatalog(
        "reader",
        uri=gate.uri,
        warehouse=gate.credentials.warehouse,
        token=gate.credentials.bearer_token,
        ssl={"cabundle": str(gate.ca_path)},
        **{
            "s3.endpoint": env.stack.s3_endpoint,
            "s3.access-key-id": S3_ACCESS_KEY,
            "s3.secret-access-key": S3_SECRET_KEY,
            "s3.region": "us-east-1",
        },
    )


def duckdb_through_rest(env: ArchiveEnv, fixture: RestCatalogFixture) -> duckdb.DuckDBPyConnection:
    """DuckDB with the REST catalog attached as `lake`: tables by name, as the catalog says they are now. The
    fixture itself, over plain HTTP: DuckDB's TLS trusts the system's CAs, not the test's."""
    conn = duckdb_over_minio(env)
    conn.execute(f"ATTACH 'cellar' AS lake (TYPE iceberg, ENDPOINT '{fixture.uri}', AUTHORIZATION_TYPE 'none')")
    return conn
