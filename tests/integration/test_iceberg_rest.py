"""format: Iceberg with spec.iceberg.catalog.type Rest, against a real Iceberg REST catalog: Apache Iceberg's own
REST catalog fixture (tests/harness/iceberg_rest.py), behind a gate that terminates TLS with a test CA and requires
OAuth2 client credentials or a bearer token. Row mode and whole-partition mode, read back by DuckDB's iceberg
extension and PyIceberg agreeing with PostgreSQL; unarchive; a kill between the catalog's commit and PostgreSQL's;
each refusal (unreachable, credentials, privileges, warehouse, TLS) a clear reason that deletes nothing."""

from __future__ import annotations

import signal
from typing import Any

import psycopg
import pytest
from kubernetes.client.exceptions import ApiException

from tests.harness.iceberg_rest import CatalogGate, RestCatalogFixture
from tests.harness.stack import free_port
from tests.integration.archive_helpers import dsn, ids_in_table, json_log_lines
from tests.integration.environments import ArchiveEnv
from tests.integration.iceberg_helpers import (
    duckdb_over_minio,
    duckdb_through_rest,
    figures_in_duckdb,
    rest_catalog,
    rest_catalog_spec,
    rest_namespace,
    setup_iceberg_archive,
)
from tests.integration.processes import start_job
from tests.integration.test_archive_partitions import make_events
from tests.integration.test_iceberg import figures_in_postgres, make_orders

pytestmark = pytest.mark.integration


def current_metadata(env: ArchiveEnv, gate: CatalogGate, table: str = "orders") -> str:
    """The table's current metadata file, as the REST catalog answers."""
    return str(rest_catalog(env, gate).load_table((rest_namespace(env), table)).metadata_location)


def test_archive_into_a_rest_catalog_over_tls_with_oauth2_read_by_duckdb_and_pyiceberg(
    archive_env: ArchiveEnv, catalog_gate: CatalogGate, iceberg_rest: RestCatalogFixture
) -> None:
    env, gate = archive_env, catalog_gate
    make_orders(env)
    expected = figures_in_postgres(env, "id <= 3000")
    setup_iceberg_archive(env, batch={"rows": 500}, iceberg={**rest_catalog_spec(env, gate), "partitionBy": "month"})
    scopes = len(gate.credentials.scopes)
    assert env.run() == 0
    assert ids_in_table(env.database) == set(range(1_000_001, 1_000_011))  # the recent rows stay
    assert "PRINCIPAL_ROLE:ALL" in gate.credentials.scopes[scopes:]  # the client-credentials exchange happened

    table = rest_catalog(env, gate).load_table((rest_namespace(env), "orders"))
    assert figures_in_duckdb(duckdb_over_minio(env), str(table.metadata_location)) == expected
    by_name = duckdb_through_rest(env, iceberg_rest).execute(
        "SELECT count(*), count(DISTINCT id), sum(amount), min(amount), max(amount) "
        f"FROM lake.{rest_namespace(env)}.orders"
    )
    assert by_name.fetchone() == expected  # DuckDB asks the catalog for the table by name
    rows = table.scan().to_arrow()
    amounts = rows.column("amount").to_pylist()
    assert (rows.num_rows, len(set(rows.column("id").to_pylist()))) == expected[:2]
    assert (sum(amounts), min(amounts), max(amounts)) == expected[2:]
    assert str(table.location()).startswith(f"s3://{env.bucket}/test/")  # the resource's own storage
    # The batches' snapshots (the compaction of the maintenance that ends the run carries no batch).
    snapshots = [s for s in table.metadata.snapshots if s.summary.get("cellar.batch-id")]
    with psycopg.connect(dsn(env.database)) as conn:
        ledger = conn.execute(
            "SELECT count(DISTINCT batch_id), sum(rows), count(DISTINCT object_key) FROM cellar.archive_ledger"
        ).fetchone()
    assert ledger == (len(snapshots), 3000, len(snapshots))  # one ledger batch per snapshot, every row once
    assert {s.summary["cellar.batch-id"] for s in snapshots} == _ledger_batches(env)


def _ledger_batches(env: ArchiveEnv) -> set[str]:
    with psycopg.connect(dsn(env.database)) as conn:
        return {str(r[0]) for r in conn.execute("SELECT DISTINCT batch_id FROM cellar.archive_ledger")}


def test_whole_partitions_into_a_rest_catalog_with_a_bearer_token_then_back(
    archive_env: ArchiveEnv, catalog_gate: CatalogGate
) -> None:
    env, gate = archive_env, catalog_gate
    due = make_events(env.database, days=40, per_day=30, default=False)
    setup_iceberg_archive(
        env,
        table="events",
        name="events",
        primaryKey=["id", "created_at"],
        iceberg={**rest_catalog_spec(env, gate, auth="bearer", ca="Secret"), "partitionBy": "day"},
    )
    with psycopg.connect(dsn(env.database)) as conn:
        ids = ",".join(map(str, due))
        expected = conn.execute(
            f"SELECT count(*), count(DISTINCT id), sum(id), min(id), max(id) FROM events WHERE id IN ({ids})"
        ).fetchone()
    assert env.run(name="events") == 0
    assert "whole partitions" in env.conditions("TableArchive", "events")["ArchiveSucceeded"]["message"]
    found = (
        duckdb_over_minio(env)
        .execute(
            "SELECT count(*), count(DISTINCT id), sum(id), min(id), max(id) "
            f"FROM iceberg_scan('{current_metadata(env, gate, 'events')}')"
        )
        .fetchone()
    )
    assert found == expected
    read = rest_catalog(env, gate).load_table((rest_namespace(env), "events")).scan().to_arrow().column("id")
    values = read.to_pylist()
    assert (len(values), len(set(values)), sum(values), min(values), max(values)) == expected
    assert not due & ids_in_table(env.database, "events")

    assert env.run("unarchive", "--into", "source", "--from", "2000-01-01", "--to", "2100-01-01", name="events") == 0
    assert due <= ids_in_table(env.database, "events")


def test_unarchive_from_a_rest_catalog_table_brings_back_equal_rows(
    archive_env: ArchiveEnv, catalog_gate: CatalogGate, capsys: pytest.CaptureFixture[str]
) -> None:
    env, gate = archive_env, catalog_gate
    make_orders(env)
    with psycopg.connect(dsn(env.database)) as conn:
        february = conn.execute(
            "SELECT t::text FROM orders t WHERE created_at >= '2025-02-01' AND created_at < '2025-03-01' ORDER BY id"
        ).fetchall()
    setup_iceberg_archive(
        env, batch={"rows": 1000}, iceberg={**rest_catalog_spec(env, gate, auth="bearer"), "partitionBy": "month"}
    )
    assert env.run() == 0
    json_log_lines(capsys)
    assert env.run("unarchive", "--from", "2025-02-01", "--to", "2025-03-01") == 0
    planned = next(line for line in json_log_lines(capsys) if line["msg"] == "Iceberg scan planned")
    assert 0 < planned["data_files"] < planned["data_files_in_table"]  # monthly partitions pruned
    with psycopg.connect(dsn(env.database)) as conn:
        back = conn.execute("SELECT t::text FROM orders_unarchived t ORDER BY id").fetchall()
    assert back == february


def test_a_kill_between_the_rest_catalog_commit_and_postgresql_doubles_nothing(
    archive_env: ArchiveEnv, catalog_gate: CatalogGate
) -> None:
    env, gate = archive_env, catalog_gate
    make_orders(env, rows=1000)
    setup_iceberg_archive(env, batch={"rows": 100, "parallelism": 1}, iceberg=rest_catalog_spec(env, gate))
    job = start_job(
        "jobs.archive", env.kubeconfig, env.namespace, "orders", failpoint="archive.iceberg-between-commits"
    )
    job.wait_for_line("FAILPOINT archive.iceberg-between-commits")
    job.send_signal(signal.SIGKILL)
    job.wait()
    # The REST catalog holds the batch's snapshot; PostgreSQL rolled its rows back: they are in both, for now.
    in_iceberg = rest_catalog(env, gate).load_table((rest_namespace(env), "orders")).scan().to_arrow()
    assert in_iceberg.num_rows == 100
    assert set(in_iceberg.column("id").to_pylist()) <= ids_in_table(env.database)

    assert env.run() == 0
    archived = rest_catalog(env, gate).load_table((rest_namespace(env), "orders")).scan().to_arrow()
    assert sorted(archived.column("id").to_pylist()) == list(range(1, 1001)), "every old row once"
    assert ids_in_table(env.database) == set(range(1_000_001, 1_000_011))
    counted = figures_in_duckdb(duckdb_over_minio(env), current_metadata(env, gate))
    assert counted[:2] == (1000, 1000)
    message = env.conditions("TableArchive", "orders")["ArchiveSucceeded"]["message"]
    assert "1 Iceberg snapshots of crashed runs recorded" in message


def _refused(env: ArchiveEnv, name: str, code: int) -> dict[str, Any]:
    assert env.run(name=name) == code
    assert len(ids_in_table(env.database)) == 60, "nothing deleted"
    return env.conditions("TableArchive", name)["ArchiveSucceeded"]


def test_each_refusal_of_the_rest_catalog_names_its_cause_and_deletes_nothing(
    archive_env: ArchiveEnv, catalog_gate: CatalogGate, iceberg_rest: RestCatalogFixture
) -> None:
    env, gate = archive_env, catalog_gate
    make_orders(env, rows=50)
    creds = gate.credentials

    def setup(name: str, **catalog: Any) -> None:  # each resource its own storage prefix: none owns another's
        storage = {**env.storage_spec, "prefix": f"refusals-{name}"}
        setup_iceberg_archive(env, name=name, storage=storage, iceberg=rest_catalog_spec(env, gate, **catalog))

    setup("unreachable", uri=f"https://127.0.0.1:{free_port()}")
    failed = _refused(env, "unreachable", 1)  # retryable: the catalog may come back
    assert failed["reason"] == "CatalogUnavailable"
    assert "spec.iceberg.catalog.rest.uri" in failed["message"]

    setup("no-ca", ca=None)
    failed = _refused(env, "no-ca", 3)
    assert failed["reason"] == "CatalogCertificateRejected"
    assert "spec.iceberg.catalog.rest.caBundle" in failed["message"]

    setup("warehouse", warehouse="sales")
    failed = _refused(env, "warehouse", 3)
    assert failed["reason"] == "NotFound"
    assert "spec.iceberg.catalog.rest.warehouse" in failed["message"]
    assert "'sales'" in failed["message"]

    setup("client")
    env.create_secret(
        "cellar-iceberg-rest",
        {
            "token": "not-the-token",
            "client-id": creds.client_id,
            "client-secret": "not-the-secret",
            "ca.pem": gate.ca_pem,
        },
    )
    failed = _refused(env, "client", 3)
    assert failed["reason"] == "CatalogAccessDenied"
    assert (
        'spec.iceberg.catalog.rest.auth.oauth2.clientSecret (Secret "cellar-iceberg-rest" key "client-secret")'
        in (failed["message"])
    )
    assert "not-the-secret" not in failed["message"]

    setup("token", auth="bearer")
    env.create_secret("cellar-iceberg-rest", {"token": "not-the-token", "ca.pem": gate.ca_pem})
    failed = _refused(env, "token", 3)
    assert failed["reason"] == "CatalogAccessDenied"
    assert 'spec.iceberg.catalog.rest.auth.bearerToken (Secret "cellar-iceberg-rest" key "token")' in failed["message"]
    assert "not-the-token" not in failed["message"]

    env.create_secret("cellar-iceberg-rest", {"token": creds.forbidden_token, "ca.pem": gate.ca_pem})
    failed = _refused(env, "token", 3)
    assert failed["reason"] == "CatalogAccessDenied"
    assert "forbidden" in failed["message"]
    assert creds.forbidden_token not in failed["message"]

    # The fixture itself, over plain HTTP without credentials: it takes the run (no gate, no refusal).
    setup("open", auth="none", ca=None, uri=iceberg_rest.uri)
    assert env.run(name="open") == 0
    assert not {i for i in ids_in_table(env.database) if i <= 50}


@pytest.mark.parametrize(
    ("catalog", "field"),
    [
        ({"type": "Rest"}, "type Rest needs rest"),
        ({"type": "Rest", "rest": {"uri": "ftp://catalog"}}, "spec.iceberg.catalog.rest.uri"),
        (
            {
                "type": "Rest",
                "rest": {
                    "uri": "https://catalog",
                    "auth": {
                        "bearerToken": {"name": "a", "key": "b"},
                        "oauth2": {"clientId": {"name": "a", "key": "b"}, "clientSecret": {"name": "a", "key": "c"}},
                    },
                },
            },
            "set one of bearerToken and oauth2",
        ),
    ],
)
def test_a_bad_rest_catalog_is_refused_at_apply(archive_env: ArchiveEnv, catalog: dict[str, Any], field: str) -> None:
    with pytest.raises(ApiException) as refused:
        setup_iceberg_archive(archive_env, iceberg={"catalog": catalog})
    assert refused.value.status == 422
    assert field in str(refused.value.body)
