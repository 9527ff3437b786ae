"""Metrics and alerts against the real servers: backups, a restore and archives push their metrics to a real
Prometheus (OTLP receiver) that has cellar's rules loaded; the documented series carry the values the status
holds, a failed backup fires CellarBackupFailed; promtool checks and unit-tests every alert; the monitoring
component applies to the API server with prometheus-operator's CRDs installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from common.metrics import RUN_FAILURE, RUN_LAST_SUCCESS, RUN_METRICS, STATUS_METRICS
from tests.harness.chart import render
from tests.harness.prometheus import Prometheus, rule_groups
from tests.harness.stack import REPO, LocalStack, built_binaries, free_port
from tests.integration.archive_helpers import dsn, setup_archive
from tests.integration.environments import ArchiveEnv, BackupEnv

ALERTS_TEST = REPO / "tests" / "monitoring" / "alerts-test.yaml"


@pytest.fixture(scope="module")
def prometheus() -> Iterator[Prometheus]:
    server = Prometheus().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pushing(prometheus: Prometheus, monkeypatch: pytest.MonkeyPatch) -> Prometheus:
    """Runs in this test push to the Prometheus, the standard way (the job reads the variables)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", prometheus.otlp_endpoint)
    return prometheus


def value_of(prometheus: Prometheus, expression: str) -> float:
    found = prometheus.wait_for(expression, lambda: prometheus.query(expression))
    assert len(found) == 1, found
    return float(found[0]["value"][1])


def seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_a_backup_pushes_the_documented_series_with_the_status_values(
    backup_env: BackupEnv, pushing: Prometheus
) -> None:
    env = backup_env
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items AS SELECT g AS id, md5(g::text) AS body FROM generate_series(1, 2000) g")
    env.setup(verify={"enabled": True})
    assert env.run() == 0
    status = env.status("DatabaseBackup", "orders")
    where = f'namespace="{env.namespace}", name="orders"'

    assert value_of(pushing, f'cellar_run_success{{{where}, operation="backup", kind="DatabaseBackup"}}') == 1
    last = status["lastSuccessfulBackup"]
    assert value_of(pushing, f"cellar_backup_size_bytes{{{where}}}") == last["sizeBytes"]
    assert value_of(pushing, f"cellar_backup_raw_size_bytes{{{where}}}") == last["rawSizeBytes"] > last["sizeBytes"]
    assert value_of(pushing, f"cellar_backup_last_success_seconds{{{where}}}") == seconds(last["completionTime"])
    assert value_of(pushing, f"cellar_backup_fresh_until_seconds{{{where}}}") == seconds(status["freshUntil"])
    assert value_of(pushing, f"cellar_backup_kept{{{where}}}") == status["backupsKept"]
    assert value_of(pushing, f"cellar_backup_ready{{{where}}}") == 1
    assert value_of(pushing, f"cellar_verify_passed{{{where}}}") == 1
    assert value_of(pushing, f'cellar_backup_succeeded{{{where}, reason="Completed"}}') == 1
    run_seconds = value_of(pushing, f"cellar_run_duration_seconds{{{where}}}")
    assert 0 < run_seconds < 120
    # Every documented series a successful backup pushes is there, under the documented name.
    documented = {m.prometheus_name for m in RUN_METRICS if m is not RUN_FAILURE}
    documented |= {m.prometheus_name for m in STATUS_METRICS if m.kind == "DatabaseBackup" and m.root == "status"}
    missing = documented - pushing.series_names()
    assert not missing, f"documented but not in Prometheus: {sorted(missing)}"

    # A restore of it pushes too.
    env.create_restore("orders-restore", env.database, "orders_restored_metrics")
    assert env.run("restore", name="orders-restore") == 0
    where_restore = f'namespace="{env.namespace}", name="orders-restore", operation="restore"'
    assert value_of(pushing, f"cellar_run_success{{{where_restore}}}") == 1
    read = env.status("DatabaseRestore", "orders-restore")["bytesRead"]
    assert value_of(pushing, f'cellar_restore_read_bytes{{namespace="{env.namespace}", name="orders-restore"}}') == read
    assert not {m.prometheus_name for m in STATUS_METRICS if m.kind == "DatabaseRestore"} - pushing.series_names()


def test_a_failed_backup_pushes_its_reason_and_fires_the_alert(backup_env: BackupEnv, pushing: Prometheus) -> None:
    env = backup_env
    env.setup("broken", storage={**env.storage_spec, "bucket": "no-such-bucket-here"})
    assert env.run(name="broken") == 3
    where = f'namespace="{env.namespace}", name="broken"'
    assert value_of(pushing, f"cellar_run_success{{{where}}}") == 0
    failure = pushing.wait_for("the failure", lambda: pushing.query(f"cellar_run_failure_seconds{{{where}}}"))
    assert failure[0]["metric"]["reason"] == "BucketNotFound"
    assert not pushing.query(f"{RUN_LAST_SUCCESS.prometheus_name}{{{where}}}")  # only successes push it
    assert value_of(pushing, f'cellar_backup_succeeded{{{where}, reason="BucketNotFound"}}') == 0

    def firing() -> list[dict[str, Any]]:
        return [
            a
            for a in pushing.alerts()
            if a["labels"]["alertname"] == "CellarBackupFailed"
            and a["labels"].get("name") == "broken"
            and a["labels"].get("namespace") == env.namespace
            and a["state"] == "firing"
        ]

    alert = pushing.wait_for("CellarBackupFailed firing", firing)[0]
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["summary"] == f"The last backup of {env.namespace}/broken failed"


def test_archives_push_rows_and_a_failing_one_is_seen(archive_env: ArchiveEnv, pushing: Prometheus) -> None:
    env = archive_env
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id bigint PRIMARY KEY, created_at timestamptz NOT NULL)")
        conn.execute(
            "INSERT INTO events SELECT g, now() - interval '100 days' + g * interval '1 minute' "
            "FROM generate_series(1, 500) g"
        )
        conn.execute("INSERT INTO events VALUES (1000, now())")
        conn.execute("CREATE INDEX ON events (created_at)")
    setup_archive(env, table="events", name="events")
    assert env.run(name="events") == 0
    status = env.status("TableArchive", "events")
    where = f'namespace="{env.namespace}", name="events"'
    assert value_of(pushing, f'cellar_run_success{{{where}, operation="archive"}}') == 1
    assert value_of(pushing, f"cellar_archive_last_run_rows{{{where}}}") == status["lastRun"]["rows"] == 500
    assert value_of(pushing, f"cellar_archive_moved_rows{{{where}}}") == 500
    assert value_of(pushing, f"cellar_archive_oldest_row_seconds{{{where}}}") == seconds(status["oldestRowTime"])
    assert value_of(pushing, f"cellar_archive_cutoff_seconds{{{where}}}") == seconds(status["cutoff"])
    # An Iceberg archive pushes its table's snapshots and data files too, as its status gives them.
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("CREATE TABLE lake_events AS SELECT * FROM events WHERE false")
        conn.execute("ALTER TABLE lake_events ADD PRIMARY KEY (id)")
        conn.execute(
            "INSERT INTO lake_events SELECT g, now() - interval '100 days' + g * interval '1 hour' "
            "FROM generate_series(1, 300) g"
        )
    setup_archive(env, table="lake_events", name="lake", format="Iceberg", iceberg={"partitionBy": "month"})
    assert env.run(name="lake") == 0
    lake = env.status("TableArchive", "lake")["icebergTable"]
    at_lake = f'namespace="{env.namespace}", name="lake"'
    assert value_of(pushing, f"cellar_archive_iceberg_snapshots{{{at_lake}}}") == lake["snapshots"] >= 1
    assert value_of(pushing, f"cellar_archive_iceberg_data_files{{{at_lake}}}") == lake["dataFiles"] >= 1
    documented = {m.prometheus_name for m in STATUS_METRICS if m.kind == "TableArchive" and m.root == "status"}
    assert not documented - pushing.series_names()

    setup_archive(env, table="no_such_table", name="gone")
    assert env.run(name="gone") == 3
    assert value_of(pushing, f'cellar_run_success{{namespace="{env.namespace}", name="gone"}}') == 0


def test_without_an_endpoint_nothing_is_pushed_or_loaded(backup_env: BackupEnv, prometheus: Prometheus) -> None:
    backup_env.setup("quiet")
    assert backup_env.run(name="quiet") == 0
    assert not prometheus.query(f'cellar_run_success{{namespace="{backup_env.namespace}", name="quiet"}}')
    probe = "import sys, jobs.backup.__main__; print('opentelemetry.sdk' in sys.modules)"
    loaded = subprocess.run([".venv/bin/python", "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert loaded.stdout == "False\n"


def test_a_receiver_that_is_down_costs_a_warning_not_the_run(
    backup_env: BackupEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = free_port()  # nothing listens there
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")
    backup_env.setup("unheard")
    assert backup_env.run(name="unheard") == 0
    out = capsys.readouterr().out
    assert '"msg": "metrics were not pushed' in out
    assert "Completed" in str(backup_env.conditions("DatabaseBackup", "unheard")["BackupSucceeded"]["reason"])


def test_promtool_checks_and_unit_tests_every_alert(tmp_path: Path) -> None:
    promtool = built_binaries(["promtool"])["promtool"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups()))
    shutil.copy(ALERTS_TEST, tmp_path / "alerts-test.yaml")
    checked = subprocess.run([promtool, "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts-test.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = {rule["alert"] for group in rule_groups()["groups"] for rule in group["rules"]}
    tests_text = ALERTS_TEST.read_text()
    untested = {a for a in alerts if not re.search(rf"alertname: {a}\b", tests_text)}
    assert not untested


def test_the_charts_monitoring_applies_with_the_prometheus_operator_crds(
    stack: LocalStack, namespace: str, tmp_path: Path
) -> None:
    kubectl = [str(stack.binaries["kubectl"]), "--kubeconfig", str(stack.kubeconfig)]
    crds = built_binaries(["prometheus-operator-crds"])["prometheus-operator-crds"]
    for name in ("monitoring.coreos.com_prometheusrules.yaml",):
        subprocess.run([*kubectl, "apply", "--server-side", "-f", str(crds / name)], check=True, capture_output=True)
    subprocess.run(
        [*kubectl, "wait", "--for=condition=Established", "crd/prometheusrules.monitoring.coreos.com", "--timeout=60s"],
        check=True,
        capture_output=True,
    )
    documents = render(
        namespace=namespace, settings=("monitoring.enabled=true", "monitoring.prometheusRuleLabels.release=prom")
    )
    manifest = tmp_path / "monitoring.yaml"
    manifest.write_text(
        yaml.safe_dump_all([d for d in documents if d["kind"] not in ("ServiceAccount", "Role", "RoleBinding")])
    )
    applied = subprocess.run([*kubectl, "-n", namespace, "apply", "-f", str(manifest)], capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr
    assert "prometheusrule.monitoring.coreos.com/cellar" in applied.stdout
    assert "configmap/cellar-kube-state-metrics" in applied.stdout
    assert "configmap/cellar-grafana-dashboard" in applied.stdout
    stored = subprocess.run(
        [*kubectl, "-n", namespace, "get", "prometheusrule", "cellar", "-o", "yaml"],
        check=True,
        capture_output=True,
        text=True,
    )
    rule = yaml.safe_load(stored.stdout)
    assert rule["spec"] == rule_groups()  # the alerts' {{ $labels }} reach Prometheus as written
    assert rule["metadata"]["labels"]["release"] == "prom"
