"""Fixtures over the real servers: kube-apiserver + etcd, PostgreSQL, MinIO.

The stack starts once per test session, only when a test that needs it runs. Every test gets its own
namespace, database and bucket, so tests never see each other's objects.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from common.redact import forget_all_secrets
from tests.harness.cluster import (
    REPO,
    admin_client,
    apply_manifests,
    install_crds,
    service_account_kubeconfig,
)
from tests.harness.emulators import Azurite, FakeGcs
from tests.harness.faults import Toxiproxy
from tests.harness.iceberg_rest import CatalogGate, RestCatalogFixture
from tests.harness.stack import PG_MAJORS, S3_ACCESS_KEY, S3_SECRET_KEY, LocalStack, postgres_majors, s3_client
from tests.integration.environments import ArchiveEnv, BackupEnv, JobEnvironment

__all__ = ["REPO", "apply_manifests"]

_STACK: LocalStack | None = None
_SERVERS: dict[int, LocalStack] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--pg",
        default=",".join(map(str, PG_MAJORS)),
        help="PostgreSQL majors the version matrix (tests taking `pg_major`) runs against, comma-separated "
        f"(default and supported: {','.join(map(str, PG_MAJORS))})",
    )


def _majors(config: pytest.Config) -> list[int]:
    chosen = [int(part) for part in str(config.getoption("--pg")).split(",") if part.strip()]
    unknown = sorted(set(chosen) - set(PG_MAJORS))
    if unknown:
        raise pytest.UsageError(f"--pg: no PostgreSQL {unknown} in the harness; choose from {PG_MAJORS}")
    return chosen


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "pg_major" in metafunc.fixturenames:
        majors = _majors(metafunc.config)
        metafunc.parametrize("pg_major", majors, ids=[f"pg{m}" for m in majors])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _STACK is not None:
        terminalreporter.write_line(
            f"real servers used: kube-apiserver {_STACK.kube_version} (etcd), {_STACK.pg_version}, "
            f"MinIO at {_STACK.s3_endpoint}"
        )
    for major, server in sorted(_SERVERS.items()):
        terminalreporter.write_line(f"version matrix: PostgreSQL {major}: {server.pg_version}")
    from tests.harness.realnode import REPORT

    for line in REPORT:
        terminalreporter.write_line(f"real node: {line}")


@pytest.fixture(autouse=True)
def _fresh_redaction_registry() -> Iterator[None]:
    yield
    forget_all_secrets()


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    global _STACK
    _STACK = LocalStack().start()
    try:
        yield _STACK
    finally:
        _STACK.stop()


@pytest.fixture(scope="session")
def pg_servers(stack: LocalStack) -> Iterator[Callable[[int], LocalStack]]:
    """Real PostgreSQL servers of other majors (the version matrix), each started on first use and kept
    for the session, beside the stack's own Kubernetes and MinIO."""

    def server(major: int) -> LocalStack:
        if major not in _SERVERS:
            _SERVERS[major] = LocalStack(pg_major=major).start(kubernetes=False, s3=False)
        return _SERVERS[major]

    try:
        yield server
    finally:
        for running in _SERVERS.values():
            running.stop()


@pytest.fixture(scope="session")
def matrix_client_tools(pg_servers: Callable[[int], LocalStack]) -> str:
    """CELLAR_PG_BINDIR for the matrix: the client tools of every major side by side, as the image has."""
    import os

    return os.pathsep.join(str(path) for _, path in sorted(postgres_majors(PG_MAJORS).items()))


def new_database(server: LocalStack) -> dict[str, str]:
    """A fresh database on `server` and a login role that owns it: the settings a Secret would carry."""
    name = f"db_{uuid.uuid4().hex[:10]}"
    role = f"u_{uuid.uuid4().hex[:8]}"
    password = f"pw-{uuid.uuid4().hex}"
    with psycopg.connect(server.pg_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' CREATEDB")
        conn.execute(f"CREATE DATABASE {name} OWNER {role}")
    return {"host": "127.0.0.1", "port": str(server.pg_port), "dbname": name, "username": role, "password": password}


@pytest.fixture(scope="session")
def admin_api(stack: LocalStack) -> Any:
    return admin_client(stack.kubeconfig)


@pytest.fixture(scope="session")
def crds(admin_api: Any) -> list[str]:
    """cellar's CRDs from the chart, installed and Established."""
    return install_crds(admin_api)


@pytest.fixture
def namespace(admin_api: Any, crds: list[str]) -> str:
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:10]}"
    client.CoreV1Api(admin_api).create_namespace({"metadata": {"name": name}})
    return name


@pytest.fixture
def job_kubeconfig(stack: LocalStack, admin_api: Any, namespace: str, tmp_path: Path) -> Callable[[str], Path]:
    """Factory: apply the chart's RBAC of <job> (backup, archive or restore) and return a kubeconfig holding a
    token minted for that job's ServiceAccount through the TokenRequest API, so the job runs with its real
    permissions."""

    made: dict[str, Path] = {}

    def make(job: str) -> Path:
        if job not in made:  # the ServiceAccount and its Role exist once per namespace
            made[job] = service_account_kubeconfig(admin_api, stack, namespace, job, tmp_path / f"{job}.kubeconfig")
        return made[job]

    return make


@pytest.fixture
def create_secret(admin_api: Any, namespace: str) -> Callable[[str, dict[str, str]], None]:
    from kubernetes import client

    def make(name: str, data: dict[str, str]) -> None:
        """Create the Secret, or replace what it holds."""
        body = {"metadata": {"name": name}, "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
        core = client.CoreV1Api(admin_api)
        try:
            core.create_namespaced_secret(namespace, body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            core.replace_namespaced_secret(name, namespace, body)

    return make


@pytest.fixture
def create_resource(admin_api: Any, namespace: str) -> Callable[[str, dict[str, Any]], dict[str, Any]]:
    """Create a cellar custom resource from a spec; returns what the server stored (defaults applied)."""
    from kubernetes import client

    plurals = {
        "DatabaseBackup": "databasebackups",
        "DatabaseRestore": "databaserestores",
        "TableArchive": "tablearchives",
    }

    def make(kind: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": "cellar.dev/v1alpha1", "kind": kind, **body}
        return dict(
            client.CustomObjectsApi(admin_api).create_namespaced_custom_object(
                "cellar.dev", "v1alpha1", namespace, plurals[kind], body
            )
        )

    return make


@pytest.fixture
def database(stack: LocalStack) -> Iterator[dict[str, Any]]:
    """A fresh database, and a login role that owns it; the settings a Secret would carry."""
    settings = new_database(stack)
    yield settings
    with psycopg.connect(stack.pg_dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {settings['dbname']} WITH (FORCE)")


@pytest.fixture(scope="session")
def toxiproxy() -> Iterator[Toxiproxy]:
    """Shopify's toxiproxy on loopback: TCP faults (latency, bandwidth, resets) between a job and a server."""
    server = Toxiproxy().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite's Blob service on loopback (Azure Blob Storage's emulator)."""
    server = Azurite().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_gcs() -> Iterator[FakeGcs]:
    """fake-gcs-server on loopback (Google Cloud Storage's JSON API)."""
    server = FakeGcs().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def iceberg_rest(stack: LocalStack) -> Iterator[RestCatalogFixture]:
    """Apache Iceberg's REST catalog fixture (Java, resolved from Maven Central once), its files in MinIO."""
    server = RestCatalogFixture(stack.s3_endpoint).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def catalog_gate(iceberg_rest: RestCatalogFixture) -> Iterator[CatalogGate]:
    """TLS with a test CA, OAuth2 client credentials and bearer tokens in front of the REST catalog fixture."""
    gate = CatalogGate(iceberg_rest).start()
    yield gate
    gate.stop()


@pytest.fixture(scope="session")
def s3_admin(stack: LocalStack) -> Any:
    return s3_client(stack.s3_endpoint)


@pytest.fixture
def bucket(s3_admin: Any) -> str:
    name = f"cellar-{uuid.uuid4().hex[:12]}"
    s3_admin.create_bucket(Bucket=name)
    return name


@pytest.fixture
def storage_spec(stack: LocalStack, bucket: str) -> dict[str, Any]:
    """A spec.storage block for the test bucket; the keys live in the Secret `cellar-object-storage`."""
    return {
        "bucket": bucket,
        "prefix": "test",
        "endpoint": stack.s3_endpoint,
        "forcePathStyle": True,
        "credentials": {
            "accessKeyId": {"name": "cellar-object-storage", "key": "AWS_ACCESS_KEY_ID"},
            "secretAccessKey": {"name": "cellar-object-storage", "key": "AWS_SECRET_ACCESS_KEY"},
        },
    }


@pytest.fixture
def storage_secret(create_secret: Callable[[str, dict[str, str]], None]) -> None:
    create_secret("cellar-object-storage", {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY})


@pytest.fixture
def job_env(
    stack: LocalStack,
    admin_api: Any,
    namespace: str,
    database: dict[str, Any],
    storage_spec: dict[str, Any],
    storage_secret: None,
    bucket: str,
    s3_admin: Any,
    create_secret: Callable[..., None],
    create_resource: Callable[..., Any],
    job_kubeconfig: Callable[[str], Path],
) -> JobEnvironment:
    """A namespace with the storage Secret, a database and a bucket: what every job's test starts from."""
    return JobEnvironment(
        stack,
        admin_api,
        namespace,
        database,
        storage_spec,
        bucket,
        s3_admin,
        create_secret,
        create_resource,
        job_kubeconfig,
    )


@pytest.fixture
def backup_env(job_env: JobEnvironment) -> BackupEnv:
    """A backup test's world, the backup job running as its ServiceAccount."""
    return BackupEnv(**vars(job_env))


@pytest.fixture
def archive_env(job_env: JobEnvironment) -> ArchiveEnv:
    """An archive test's world, the archive job running as its ServiceAccount."""
    return ArchiveEnv(**vars(job_env))
