"""Run metrics, pushed over OTLP/HTTP when a run ends (and every OTEL_METRIC_EXPORT_INTERVAL while it runs).

Batch jobs have no process to scrape, so each run pushes to an OpenTelemetry receiver (Prometheus 3's OTLP
receiver, a Collector, a vendor), configured the standard way (OTEL_EXPORTER_OTLP_ENDPOINT, _HEADERS,
OTEL_RESOURCE_ATTRIBUTES) or by the resource's `spec.metrics.otlpEndpoint`. Without an endpoint nothing is
imported and nothing is pushed. A push that fails is a warning, never the run's outcome.

Two kinds of metric, one table each:
- RUN_METRICS: what the run itself knows (outcome, times), pushed only.
- STATUS_METRICS: read from the resource's status after the run. kube-state-metrics reads the same fields
  into series of the same names (the chart's monitoring, generated from this table), so every alert works from
  either path.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PUSH_TIMEOUT_MILLIS = 10_000
_SUFFIXES = {"s": "_seconds", "By": "_bytes", "": ""}


@dataclass(frozen=True)
class Metric:
    """One gauge: its OpenTelemetry name and unit, and the name Prometheus gives it (after its OTLP
    translation: dots become underscores, the unit becomes a suffix)."""

    name: str
    unit: str
    description: str

    @property
    def prometheus_name(self) -> str:
        return self.name.replace(".", "_") + _SUFFIXES[self.unit]


@dataclass(frozen=True)
class StatusMetric(Metric):
    """A gauge read from a status field: numbers as they are, booleans and "True"/"False" as 1 and 0, RFC 3339
    times as Unix seconds (kube-state-metrics converts the same way). A path step "[type=Ready]" picks the list
    element whose `type` is Ready."""

    kind: str = ""
    path: tuple[str, ...] = ()
    # The condition's reason as the label `reason` (path ends in a condition's status).
    with_reason: bool = False
    # Where kube-state-metrics reads it: `status`, or `metadata` for facts no run pushes (only kube-state-metrics
    # sees a resource that never ran).
    root: str = "status"


RUN_SUCCESS = Metric("cellar.run.success", "", "1 when the run succeeded, 0 when it failed")
RUN_START = Metric("cellar.run.start", "s", "when the run started (Unix time)")
RUN_END = Metric("cellar.run.end", "s", "when the run ended (Unix time)")
RUN_DURATION = Metric("cellar.run.duration", "s", "how long the run took")
RUN_LAST_SUCCESS = Metric("cellar.run.last_success", "s", "when the run ended, pushed by successful runs only")
RUN_FAILURE = Metric("cellar.run.failure", "s", "when the run failed, with its `reason`; pushed by failed runs only")
RUN_METRICS = (RUN_SUCCESS, RUN_START, RUN_END, RUN_DURATION, RUN_LAST_SUCCESS, RUN_FAILURE)

BACKUP, RESTORE, ARCHIVE = "DatabaseBackup", "DatabaseRestore", "TableArchive"
READY = ("conditions", "[type=Ready]", "status")
STATUS_METRICS = (
    StatusMetric("cellar.backup.ready", "", "1 when Ready is True", BACKUP, READY),
    StatusMetric(
        "cellar.backup.succeeded",
        "",
        "1 when the last run's BackupSucceeded is True, with its `reason`",
        BACKUP,
        ("conditions", "[type=BackupSucceeded]", "status"),
        with_reason=True,
    ),
    StatusMetric(
        "cellar.resource.created",
        "s",
        "when the resource was created (kube-state-metrics only)",
        BACKUP,
        ("creationTimestamp",),
        root="metadata",
    ),
    StatusMetric(
        "cellar.backup.last_success",
        "s",
        "completion of the newest good backup",
        BACKUP,
        ("lastSuccessfulBackup", "completionTime"),
    ),
    StatusMetric(
        "cellar.backup.fresh_until", "s", "when Ready turns stale (status.freshUntil)", BACKUP, ("freshUntil",)
    ),
    StatusMetric(
        "cellar.backup.size",
        "By",
        "stored size of the newest good backup",
        BACKUP,
        ("lastSuccessfulBackup", "sizeBytes"),
    ),
    StatusMetric(
        "cellar.backup.raw_size",
        "By",
        "size of the newest good backup's dumps before compression",
        BACKUP,
        ("lastSuccessfulBackup", "rawSizeBytes"),
    ),
    StatusMetric(
        "cellar.backup.duration",
        "s",
        "how long the newest good backup took",
        BACKUP,
        ("lastSuccessfulBackup", "durationSeconds"),
    ),
    StatusMetric("cellar.backup.kept", "", "complete backups in storage", BACKUP, ("backupsKept",)),
    StatusMetric(
        "cellar.verify.last_run", "s", "when the last restore test ended", BACKUP, ("lastVerification", "time")
    ),
    StatusMetric(
        "cellar.verify.passed", "", "1 when the last restore test passed", BACKUP, ("lastVerification", "passed")
    ),
    StatusMetric("cellar.archive.ready", "", "1 when Ready is True", ARCHIVE, READY),
    StatusMetric(
        "cellar.archive.succeeded",
        "",
        "1 when the last run's ArchiveSucceeded is True, with its `reason`",
        ARCHIVE,
        ("conditions", "[type=ArchiveSucceeded]", "status"),
        with_reason=True,
    ),
    StatusMetric(
        "cellar.resource.created",
        "s",
        "when the resource was created (kube-state-metrics only)",
        ARCHIVE,
        ("creationTimestamp",),
        root="metadata",
    ),
    StatusMetric("cellar.archive.last_run.rows", "", "rows the last run moved", ARCHIVE, ("lastRun", "rows")),
    StatusMetric(
        "cellar.archive.last_run.size", "By", "Parquet bytes the last run wrote", ARCHIVE, ("lastRun", "bytes")
    ),
    StatusMetric(
        "cellar.archive.last_run.batches", "", "batches the last run committed", ARCHIVE, ("lastRun", "batches")
    ),
    StatusMetric(
        "cellar.archive.last_run.longest_transaction",
        "s",
        "the last run's longest transaction",
        ARCHIVE,
        ("lastRun", "longestTransactionSeconds"),
    ),
    StatusMetric(
        "cellar.archive.last_run.files",
        "",
        "files the last run wrote: Parquet objects or Iceberg data files",
        ARCHIVE,
        ("lastRun", "files"),
    ),
    StatusMetric(
        "cellar.archive.iceberg.snapshots",
        "",
        "snapshots the Iceberg table keeps (format: Iceberg)",
        ARCHIVE,
        ("icebergTable", "snapshots"),
    ),
    StatusMetric(
        "cellar.archive.iceberg.data_files",
        "",
        "data files in the Iceberg table's current snapshot (format: Iceberg)",
        ARCHIVE,
        ("icebergTable", "dataFiles"),
    ),
    StatusMetric("cellar.archive.moved.rows", "", "rows moved by every run so far", ARCHIVE, ("totals", "rows")),
    StatusMetric(
        "cellar.archive.moved.size", "By", "Parquet bytes written by every run so far", ARCHIVE, ("totals", "bytes")
    ),
    StatusMetric(
        "cellar.archive.cutoff", "s", "the last run's cutoff: rows older than this are due", ARCHIVE, ("cutoff",)
    ),
    StatusMetric(
        "cellar.archive.oldest_row",
        "s",
        "the oldest timestampColumn value still in the table",
        ARCHIVE,
        ("oldestRowTime",),
    ),
    StatusMetric(
        "cellar.restore.succeeded",
        "",
        "1 when Succeeded is True",
        RESTORE,
        ("conditions", "[type=Succeeded]", "status"),
    ),
    StatusMetric("cellar.restore.read", "By", "bytes the restore read from storage", RESTORE, ("bytesRead",)),
)


def status_value(status: Mapping[str, Any], path: Sequence[str]) -> float | None:
    """The number a status field stands for, or None when it is not there (or not a number, time or flag)."""
    return _as_number(_walk(status, path))


def condition_reason(status: Mapping[str, Any], path: Sequence[str]) -> str:
    """The reason of the condition whose status `path` reads ('' when there is none)."""
    condition = _walk(status, path[:-1])
    return str(condition.get("reason", "")) if isinstance(condition, Mapping) else ""


def _walk(status: Mapping[str, Any], path: Sequence[str]) -> Any:
    value: Any = status
    for step in path:
        if step.startswith("[") and step.endswith("]") and "=" in step:
            key, wanted = step[1:-1].split("=", 1)
            value = next((e for e in value or [] if isinstance(e, Mapping) and str(e.get(key)) == wanted), None)
        else:
            value = value.get(step) if isinstance(value, Mapping) else None
    return value


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    if value.lower() in ("true", "false", "unknown"):
        return 1.0 if value.lower() == "true" else 0.0
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def configured_endpoint(spec: Mapping[str, Any]) -> str | None:
    """The OTLP endpoint of spec.metrics.otlpEndpoint, else of the standard variables; None: do not push."""
    metrics = spec.get("metrics")
    if isinstance(metrics, Mapping) and metrics.get("otlpEndpoint"):
        return str(metrics["otlpEndpoint"])
    if any(os.environ.get(name) for name in ENDPOINT_VARIABLES):
        return ""  # the exporter reads the variables itself (and appends /v1/metrics to the general one)
    return None


@dataclass(frozen=True)
class RunLabels:
    """Whose run the metrics describe: the operation (backup, archive, ...), the resource, and the run's id."""

    operation: str
    kind: str
    namespace: str
    name: str
    run_id: str


class RunMetrics:
    """The metrics of one run: started with the run, pushed when it ends. Made only when an endpoint is set."""

    def __init__(self, endpoint: str, labels: RunLabels) -> None:
        operation, kind, namespace, name, run_id = (
            labels.operation,
            labels.kind,
            labels.namespace,
            labels.name,
            labels.run_id,
        )
        # Imported here: without an endpoint the SDK is never loaded.
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import MetricExportResult, MetricsData, PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource

        class CountingExporter(OTLPMetricExporter):
            """Counts failed exports: the reader ignores an export's result, and the run should say."""

            failed = 0

            def export(self, metrics_data: MetricsData, timeout_millis: float | None = None, **kwargs: Any) -> Any:
                result = super().export(metrics_data, timeout_millis=timeout_millis, **kwargs)
                if result is not MetricExportResult.SUCCESS:
                    self.failed += 1
                return result

        for noisy in ("opentelemetry", "urllib3"):  # the SDK logs its own export errors: we report one line
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
        exporter = CountingExporter(endpoint=_metrics_url(endpoint) if endpoint else None)
        self._exporter = exporter
        resource = Resource.create(
            {
                "service.name": "cellar",
                "service.instance.id": f"{kind}/{namespace}/{name}",
                "k8s.namespace.name": namespace,
                "cellar.resource.kind": kind,
                "cellar.resource.name": name,
                "cellar.run.id": run_id,
            }
        )
        self._provider = MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(exporter)])
        self._meter = self._provider.get_meter("cellar")
        self._attributes = {"namespace": namespace, "name": name, "kind": kind, "operation": operation}
        self._kind = kind

    def _set(self, metric: Metric, value: float, **extra: str) -> None:
        gauge = self._meter.create_gauge(metric.name, unit=metric.unit, description=metric.description)
        gauge.set(value, {**self._attributes, **extra})

    def started(self, at: datetime) -> None:
        self._set(RUN_START, at.timestamp())

    def finish(self, *, succeeded: bool, reason: str, started: datetime, status: Mapping[str, Any]) -> None:
        """Record the outcome and what status says, push, and shut the exporter down; never raises."""
        ended = time.time()
        try:
            self._set(RUN_SUCCESS, 1.0 if succeeded else 0.0)
            self._set(RUN_END, ended)
            self._set(RUN_DURATION, ended - started.timestamp())
            if succeeded:
                self._set(RUN_LAST_SUCCESS, ended)
            else:
                self._set(RUN_FAILURE, ended, reason=reason)
            for metric in STATUS_METRICS:
                pushed_here = metric.kind == self._kind and metric.root == "status"
                value = status_value(status, metric.path) if pushed_here else None
                if value is not None:
                    labels = {"reason": condition_reason(status, metric.path)} if metric.with_reason else {}
                    self._set(metric, value, **labels)
            failed_before = self._exporter.failed
            pushed = self._provider.force_flush(timeout_millis=PUSH_TIMEOUT_MILLIS)
            pushed = pushed and self._exporter.failed == failed_before
            self._provider.shutdown(timeout_millis=PUSH_TIMEOUT_MILLIS)
        except Exception as exc:  # noqa: BLE001 (metrics never fail a run)
            log.warning("metrics were not pushed", extra={"error": type(exc).__name__})
            return
        if pushed:
            log.info("metrics pushed", extra={"outcome": "success" if succeeded else "failure"})
        else:
            log.warning("metrics were not pushed: the OTLP receiver did not accept them (unreachable, or refused)")


def _metrics_url(endpoint: str) -> str:
    """spec.metrics.otlpEndpoint is the receiver's base, as OTEL_EXPORTER_OTLP_ENDPOINT is."""
    return endpoint.rstrip("/") + "/v1/metrics"


def start_run_metrics(spec: Mapping[str, Any], labels: RunLabels, at: datetime) -> RunMetrics | None:
    endpoint = configured_endpoint(spec)
    if endpoint is None:
        return None
    try:
        metrics = RunMetrics(endpoint, labels)
        metrics.started(at)
    except Exception as exc:  # noqa: BLE001 (metrics never fail a run)
        log.warning("metrics are off for this run", extra={"error": f"{type(exc).__name__}: {exc}"})
        return None
    return metrics


def markdown_table() -> str:
    """docs/monitoring.md's table of metrics, as Prometheus names them."""
    rows = ["| metric | of | what |", "|---|---|---|"]
    rows += [f"| `{m.prometheus_name}` | every run (pushed only) | {m.description} |" for m in RUN_METRICS]
    shown: set[str] = set()
    for metric in STATUS_METRICS:
        if metric.prometheus_name in shown:
            continue
        shown.add(metric.prometheus_name)
        kinds = ", ".join(m.kind for m in STATUS_METRICS if m.prometheus_name == metric.prometheus_name)
        rows.append(f"| `{metric.prometheus_name}` | {kinds} | {metric.description} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(markdown_table())
