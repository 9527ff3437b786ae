"""`main(argv) -> int` scaffolding shared by every job.

`run_job` is the story of every run: parse the command line, load credentials, read the custom
resource, hand over to the job, and turn whatever happened into one exit code (`exit_code_for` is
the only place that does). SIGTERM becomes an `Interrupted` exception so that the job's context
managers abort uploads and roll back; the job's `record_failure` then writes `Interrupted` to status
within the grace period.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from common.conditions import Condition, set_condition
from common.db import lock_timeout_failure, lost_connection, recovery_conflict_failure
from common.errors import EXIT_OK, EXIT_RETRYABLE, EXIT_USAGE, CellarError, Interrupted, NotFound, UsageError
from common.invocation import Invocation, add_invocation_arguments, resolve_invocation
from common.kube import Kube, KubeTransport, ResourceKind, ResourceRef
from common.kube_client import connect
from common.logs import LOG_FORMATS, bind_resource, configure_logging, set_log_format
from common.metrics import RunLabels, RunMetrics, start_run_metrics
from common.process import process_identity
from common.reasons import Reason
from common.redact import redact
from common.secrets import Secrets
from common.suspension import SCHEDULED_JOBS, SUSPEND_ANNOTATION, suspended

log = logging.getLogger("cellar")

TERMINATION_LOG = Path(os.environ.get("CELLAR_TERMINATION_LOG", "/dev/termination-log"))
TERMINATION_LOG_LIMIT = 4096


def exit_code_for(error: BaseException | None) -> int:
    """The one mapping from what happened to an exit code (0 ok, 1 retryable, 2 usage, 3 permanent)."""
    if error is None:
        return EXIT_OK
    if isinstance(error, CellarError):
        return error.exit_code
    return EXIT_RETRYABLE


class Interrupts:
    """SIGTERM handling: raise `Interrupted` at once, or (inside `deferred()`) at the next check.

    Only the first SIGTERM raises; cleanup that follows it is not interrupted again.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._deferring = 0
        self._raised = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = not self.requested.is_set()
        self.requested.set()
        log.warning("received SIGTERM; stopping", extra={"signal": signum})
        if first and not self._deferring:
            self._raised = True
            raise Interrupted(
                "interrupted by SIGTERM (deadline, eviction or node drain); work in flight was "
                "rolled back and the next run starts over"
            )

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Within this block SIGTERM only sets a flag; call `check()` at safe points."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1

    def check(self) -> None:
        if self.requested.is_set() and not self._raised:
            self._raised = True
            raise Interrupted("interrupted by SIGTERM (deadline, eviction or node drain); stopped at a safe point")


@dataclass
class RunContext:
    """What a job's run needs: who it is for, how to talk to the cluster, and how to report."""

    job: str
    run_id: str
    invocation: Invocation
    kube: Kube
    ref: ResourceRef
    resource: dict[str, Any]
    interrupts: Interrupts
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    metrics: RunMetrics | None = None  # pushed when the run ends, when an OTLP endpoint is configured
    status_writer: object = None  # the run's common.run_status.RunStatus, made at its first use
    application_name: str = "cellar"  # what the run's database sessions say they are (the job's)

    @property
    def spec(self) -> Mapping[str, Any]:
        spec = self.resource.get("spec")
        return spec if isinstance(spec, Mapping) else {}

    @property
    def generation(self) -> int | None:
        value = self.resource.get("metadata", {}).get("generation")
        return int(value) if value is not None else None

    @property
    def dry_run(self) -> bool:
        return self.invocation.dry_run

    @property
    def secrets(self) -> Secrets:
        """The Secrets and ConfigMaps of the resource's namespace, the only ones a run reads."""
        return Secrets(self.kube, self.ref.namespace, self.application_name)

    def update_status(
        self,
        conditions: Sequence[Condition] = (),
        fields: Mapping[str, Any] | None = None,
        compute: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Upsert `conditions` (type, status, reason, message) and merge `fields` into status.

        `compute(current_status)` may return more fields derived from what is there now (totals).
        Safe under concurrent writers (see `Kube.update_status`). In a dry run nothing is written.
        """
        if self.dry_run:
            log.info("dry run: status not written", extra={"conditions": [c[:3] for c in conditions]})
            return self.resource
        now = datetime.now(UTC)

        def mutate(resource: dict[str, Any]) -> dict[str, Any]:
            status = resource.get("status") or {}
            current = list(status.get("conditions") or [])
            generation = resource.get("metadata", {}).get("generation")
            for condition in conditions:
                current = set_condition(current, condition, generation, now)
            patch: dict[str, Any] = {"conditions": current, "observedGeneration": generation}
            patch.update(fields or {})
            if compute is not None:
                patch.update(compute(status))
            return patch

        self.resource = self.kube.update_status(self.ref, mutate)
        return self.resource

    def event(self, reason: Reason, note: str, *, action: str, warning: bool = False) -> None:
        if self.dry_run:
            return
        self.kube.post_event(self.resource, reason=reason, action=action, note=note, warning=warning)


class Job(Protocol):
    """What a job supplies to `run_job`."""

    name: str
    kind: ResourceKind
    description: str
    application_name: str  # what its database sessions say they are (pg_stat_activity)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, ctx: RunContext, args: argparse.Namespace) -> str:
        """Do the work; return a one-line summary for the termination log."""
        ...

    def record_failure(self, ctx: RunContext, error: CellarError) -> None:
        """Write the failure to status and post an Event (called by `run_job`)."""
        ...


def write_termination_log(message: str) -> None:
    """A short cause where `kubectl describe pod` shows it; best-effort."""
    if not TERMINATION_LOG.parent.exists():
        return
    try:
        data = redact(message).encode("utf-8")[:TERMINATION_LOG_LIMIT]
        with TERMINATION_LOG.open("wb") as out:
            out.write(data)
    except OSError:
        pass


def _wait_for_resource_seconds() -> float:
    value = os.environ.get("CELLAR_WAIT_FOR_RESOURCE_SECONDS", "0")
    if not value.isdigit():
        raise UsageError(f"CELLAR_WAIT_FOR_RESOURCE_SECONDS={value!r}: give a whole number of seconds")
    return float(value)


def _get_resource(kube: Kube, ref: ResourceRef, wait_seconds: float) -> dict[str, Any]:
    """The custom resource the run is for. A Pod may start before it exists (Helm creates a chart's Jobs
    before its custom resources), so a Job may ask to wait for it: CELLAR_WAIT_FOR_RESOURCE_SECONDS."""
    deadline = time.monotonic() + wait_seconds
    waiting = False
    while True:
        try:
            return kube.get(ref)
        except NotFound:
            if time.monotonic() >= deadline:
                raise
            if not waiting:
                log.info("waiting for the resource to be created", extra={"seconds": wait_seconds})
                waiting = True
            time.sleep(1)


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print and sys.exit(2) itself
        raise UsageError(f"{message} (see --help)")


def build_parser(job: Job, prog: str) -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog=prog, description=job.description)
    add_invocation_arguments(parser)
    parser.add_argument(
        "--log-level",
        default=os.environ.get("CELLAR_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="log verbosity",
    )
    parser.add_argument(
        "--log-format",
        default=os.environ.get("CELLAR_LOG_FORMAT", "auto"),
        choices=list(LOG_FORMATS),
        help="json lines, or short text lines for people; auto (the default): text on a terminal, else json",
    )
    job.add_arguments(parser)
    return parser


def run_job(
    job: Job,
    argv: Sequence[str] | None,
    *,
    prog: str | None = None,
    transport_factory: Callable[[str | None], KubeTransport] = connect,
) -> int:
    """Run one job to completion and return its exit code."""
    run_id = os.environ.get("CELLAR_RUN_ID") or uuid.uuid4().hex[:12]
    log_format = os.environ.get("CELLAR_LOG_FORMAT", "auto")
    # A command whose output is what it prints (a listing) sends its log lines to stderr.
    stream = sys.stderr if getattr(job, "output_on_stdout", False) else None
    configure_logging(job.name, run_id, stream, log_format=log_format if log_format in LOG_FORMATS else "auto")
    parser = build_parser(job, prog or f"cellar-{job.name}")
    interrupts = Interrupts()
    ctx: RunContext | None = None
    started = time.monotonic()
    try:
        try:
            args = parser.parse_args(list(argv) if argv is not None else sys.argv[1:])
        except SystemExit as exc:  # --help and --version exit 0 through argparse
            return int(exc.code or 0)
        _apply_log_settings(args)
        interrupts.install()
        ctx = _open_context(job, args, run_id, interrupts, transport_factory)
        if job.name in SCHEDULED_JOBS and suspended(ctx.resource):
            return _skip_suspended(ctx, started)
        ctx.metrics = _start_metrics(job, ctx)
        summary = job.run(ctx, args)
        log.info("run finished", extra={"summary": summary, "seconds": round(time.monotonic() - started, 3)})
        write_termination_log(summary)
        if ctx.metrics is not None:
            ctx.metrics.finish(
                succeeded=True, reason=Reason.COMPLETED, started=ctx.started, status=ctx.resource.get("status") or {}
            )
        return EXIT_OK
    except CellarError as error:
        return _fail(job, ctx, error, started)
    except Exception as error:
        transient = recovery_conflict_failure(error) or lost_connection(error) or lock_timeout_failure(error)
        if transient is not None:
            return _fail(job, ctx, transient, started)
        log.exception("unexpected failure")
        wrapped = CellarError(f"unexpected {type(error).__name__}: {redact(str(error))}", reason=Reason.INTERNAL_ERROR)
        return _fail(job, ctx, wrapped, started)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _apply_log_settings(args: argparse.Namespace) -> None:
    logging.getLogger().setLevel(args.log_level.upper())
    if args.log_format not in LOG_FORMATS:  # from CELLAR_LOG_FORMAT; argparse checks only the flag
        raise UsageError(f"CELLAR_LOG_FORMAT={args.log_format!r}: use one of {', '.join(LOG_FORMATS)}")
    set_log_format(args.log_format)


def _open_context(
    job: Job,
    args: argparse.Namespace,
    run_id: str,
    interrupts: Interrupts,
    transport_factory: Callable[[str | None], KubeTransport],
) -> RunContext:
    """Which resource the run is for, the cluster it talks to, and the resource as it is now."""
    invocation = resolve_invocation(args)
    bind_resource(invocation.namespace, invocation.name)
    ref = ResourceRef(job.kind, invocation.namespace, invocation.name)
    kube = Kube(transport_factory(invocation.kubeconfig), controller=f"cellar.dev/{job.name}")
    resource = _get_resource(kube, ref, _wait_for_resource_seconds())
    ctx = RunContext(
        job.name, run_id, invocation, kube, ref, resource, interrupts, application_name=job.application_name
    )
    log.info(
        "run started",
        extra={"generation": ctx.generation, "dry_run": invocation.dry_run, "identity": process_identity()},
    )
    return ctx


def _start_metrics(job: Job, ctx: RunContext) -> RunMetrics | None:
    """The run's metrics (pushed when it ends); none for a dry run or a command whose output is a listing."""
    if ctx.invocation.dry_run or getattr(job, "output_on_stdout", False):
        return None
    labels = RunLabels(job.name, job.kind.kind, ctx.ref.namespace, ctx.ref.name, ctx.run_id)
    return start_run_metrics(ctx.spec, labels, ctx.started)


def _skip_suspended(ctx: RunContext, started: float) -> int:
    """A suspended resource's run: an Event and the termination message say it was skipped; exit 0."""
    note = (
        f"{ctx.ref} is suspended (annotation {SUSPEND_ANNOTATION}): this run did nothing; "
        f"kubectl cellar resume {ctx.ref.name} -n {ctx.ref.namespace} runs the next"
    )
    log.info("run skipped", extra={"reason": Reason.SUSPENDED, "seconds": round(time.monotonic() - started, 3)})
    ctx.event(Reason.SUSPENDED, note, action=ctx.job.capitalize())
    write_termination_log(f"{Reason.SUSPENDED}: {note}")
    return EXIT_OK


def _fail(job: Job, ctx: RunContext | None, error: CellarError, started: float) -> int:
    code = exit_code_for(error)
    log.error(
        "run failed",
        extra={
            "reason": error.reason,
            "error": redact(str(error)),
            "exit_code": code,
            "seconds": round(time.monotonic() - started, 3),
        },
    )
    if ctx is not None and code != EXIT_USAGE:
        try:
            job.record_failure(ctx, error)
        except Exception as status_error:  # noqa: BLE001 (keep the original failure as the outcome)
            log.error("could not record the failure in status", extra={"error": redact(str(status_error))})
    write_termination_log(f"{error.reason}: {error}")
    if ctx is not None and ctx.metrics is not None:
        ctx.metrics.finish(
            succeeded=False, reason=error.reason, started=ctx.started, status=ctx.resource.get("status") or {}
        )
    return code


def print_usage(usage: str) -> None:
    """The usage on stdout; a reader that stopped early (`--help | head -1`) is no error."""
    try:
        print(usage, flush=True)
    except BrokenPipeError:
        # Python flushes stdout once more at exit: point it at /dev/null so that flush has nowhere to fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def run_command(commands: Mapping[str, Job], default: str, usage: str, argv: Sequence[str] | None, *, prog: str) -> int:
    """`prog [command] [options]`: pick a job by its first argument (default `default`) and run it."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in ("-h", "--help", "help"):
        print_usage(usage)
        return 0
    command = default
    if arguments and not arguments[0].startswith("-"):
        command = arguments.pop(0)
        if command not in commands:
            print(f"unknown command {command!r}\n\n{usage}", file=sys.stderr)
            return EXIT_USAGE
    return run_job(commands[command], arguments, prog=f"{prog} {command}")
