"""PostgreSQL connections from Secret-provided settings, with failures turned into clear errors."""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import timedelta

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from common.errors import ConnectionFailed, PermanentError, RetryableError
from common.reasons import Reason
from common.redact import redact
from common.secrets import DatabaseSettings

log = logging.getLogger(__name__)


def backoff_seconds(attempt: int, *, cap: float, first: float = 0.5) -> float:
    """How long to wait before try `attempt` + 1 of something another session holds up: doubling from `first`
    up to `cap`, with full jitter so that runs that failed together do not come back together."""
    return random.uniform(first, max(first, min(cap, first * 2**attempt)))  # noqa: S311 (jitter, not secrecy)


# SQLSTATE classes that retrying cannot fix: bad credentials, unknown database, no privilege.
_PERMANENT_SQLSTATES = {"28P01", "28000", "3D000", "42501"}


def libpq_params(settings: DatabaseSettings, *, application_name: str | None = None) -> dict[str, str]:
    """Keyword parameters for libpq (psycopg.connect, or PG* variables for pg_dump); `application_name`: other
    than the settings' own (a tool's sessions, say)."""
    params = {
        "host": settings.host,
        "port": str(settings.port),
        "dbname": settings.dbname,
        "user": settings.user,
        "password": settings.password,
        "sslmode": settings.ssl_mode,
        "connect_timeout": str(settings.connect_timeout),
        "application_name": application_name or settings.application_name,
    }
    if settings.ssl_root_cert:
        params["sslrootcert"] = _write_ca_file(settings.ssl_root_cert)
    return params


def libpq_environment(settings: DatabaseSettings, *, application_name: str | None = None) -> dict[str, str]:
    """The same settings as PG* environment variables, so a password never appears on a command line."""
    names = {
        "host": "PGHOST",
        "port": "PGPORT",
        "dbname": "PGDATABASE",
        "user": "PGUSER",
        "password": "PGPASSWORD",
        "sslmode": "PGSSLMODE",
        "connect_timeout": "PGCONNECT_TIMEOUT",
        "application_name": "PGAPPNAME",
        "sslrootcert": "PGSSLROOTCERT",
    }
    return {names[k]: v for k, v in libpq_params(settings, application_name=application_name).items()}


def _write_ca_file(pem: str) -> str:
    # libpq takes the CA as a file path; /tmp is the writable emptyDir under a read-only root.
    handle, path = tempfile.mkstemp(prefix="cellar-ca-", suffix=".pem")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(pem)
    return path


def _milliseconds(value: timedelta | None) -> str:
    return str(int(value.total_seconds() * 1000)) if value else "0"


def connect(
    settings: DatabaseSettings,
    *,
    application_name: str | None = None,
    statement_timeout: timedelta | None = None,
    lock_timeout: timedelta | None = None,
    autocommit: bool = False,
    extra: Mapping[str, str] | None = None,
) -> psycopg.Connection[tuple[object, ...]]:
    """Open a connection; wrong credentials and unreachable hosts raise errors that say so."""
    params = libpq_params(settings, application_name=application_name)
    params["options"] = (
        f"-c statement_timeout={_milliseconds(statement_timeout)} -c lock_timeout={_milliseconds(lock_timeout)}"
    )
    params.update(extra or {})
    conninfo = make_conninfo(**params)
    waited_since = time.monotonic()
    attempt = 0
    while True:
        try:
            return psycopg.connect(conninfo, autocommit=autocommit)
        except psycopg.Error as exc:
            full, replaying = _server_full(exc), RECOVERY_CONFLICT in str(exc)
            if not (full or replaying):
                raise translate_connect_error(exc, settings) from None
            waited = time.monotonic() - waited_since
            budget = connect_wait_seconds()
            if waited >= budget:
                raise (
                    _too_many_connections(exc, settings, waited) if full else translate_connect_error(exc, settings)
                ) from None
            attempt += 1
            pause = min(budget - waited, backoff_seconds(attempt, cap=10.0))
            log.warning(
                "the database server refused a connection for lack of slots; waiting for one"
                if full
                else "a hot standby's replay cancelled a new connection; connecting again",
                extra={"server": settings.describe(), "attempt": attempt, "waited_seconds": round(waited, 1)},
            )
            time.sleep(pause)


# What PostgreSQL says when it has no slot for another connection (SQLSTATE 53300: max_connections, a role's
# or a database's CONNECTION LIMIT, the slots reserved for superusers) or is not accepting connections yet.
_SERVER_FULL = (
    "too many clients already",
    "too many connections for",
    "remaining connection slots are reserved",
    "the database system is starting up",
)


# What PostgreSQL says when a hot standby cancels a query, or ends a session (even one starting up), because
# replay must remove rows its snapshot may still need (SQLSTATE 40001).
RECOVERY_CONFLICT = "conflict with recovery"


def _server_full(exc: psycopg.Error) -> bool:
    return exc.sqlstate in ("53300", "57P03") or any(sign in str(exc).lower() for sign in _SERVER_FULL)


def connect_wait_seconds() -> float:
    """How long a run waits for a connection slot on a full server (CELLAR_CONNECT_WAIT_SECONDS, default 120):
    a fleet that starts together takes its slots as earlier runs give theirs back."""
    raw = os.environ.get("CELLAR_CONNECT_WAIT_SECONDS", "120")
    try:
        return max(0.0, float(raw))
    except ValueError:
        return 120.0


def _too_many_connections(exc: psycopg.Error, settings: DatabaseSettings, waited: float) -> RetryableError:
    detail = redact(" ".join(str(exc).split()))
    return RetryableError(
        f"{settings.describe()} had no free connection for {waited:.0f}s ({detail}). Raise the server's "
        "max_connections (or the role's or database's CONNECTION LIMIT), put a pooler in front of it, or spread "
        "the schedules of the runs that share it; the Job's next attempt tries again",
        reason=Reason.TOO_MANY_CONNECTIONS,
    )


# What libpq says when TLS verification fails: a person must fix the CA or the mode; a retry cannot.
_CERTIFICATE_REJECTED = (
    "certificate verify failed",
    "does not match host name",
    "root certificate file",
    "could not read root certificate",
    "no certificate in the root certificate file",
)


def translate_connect_error(exc: Exception, settings: DatabaseSettings) -> Exception:
    """A failed connection (psycopg's, or the Arrow driver's libpq) as the error that says what to fix."""
    where = settings.describe()
    detail = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    sqlstate = getattr(exc, "sqlstate", None)
    text = str(exc).lower()
    if sqlstate in ("28P01", "28000") or "password authentication failed" in text:
        return PermanentError(
            f"cannot log in to {where}: the server rejected the credentials. Check the username and password "
            f"in the database Secret. Server said: {detail}",
            reason=Reason.AUTHENTICATION_FAILED,
        )
    if sqlstate == "3D000" or ("database" in text and "does not exist" in text):
        return PermanentError(
            f"cannot connect to {where}: the database does not exist. Server said: {detail}",
            reason=Reason.DATABASE_NOT_FOUND,
        )
    if any(sign in text for sign in _CERTIFICATE_REJECTED):
        ca = "the CA in the database Secret's sslrootcert key" if settings.ssl_root_cert else "no CA (sslrootcert)"
        return PermanentError(
            f"cannot connect to {where}: the server's certificate was not accepted with sslMode "
            f"{settings.ssl_mode} and {ca} ({detail}). Put the CA that signed the server's certificate in the "
            "Secret's sslrootcert key; with verify-full the certificate must also name the host cellar connects to "
            "(spec.database.host or the Secret's host). To encrypt without verifying, set spec.database.sslMode to "
            "require",
            reason=Reason.CERTIFICATE_REJECTED,
        )
    if sqlstate in _PERMANENT_SQLSTATES:
        return PermanentError(f"cannot connect to {where}: {detail}", reason=Reason.DATABASE_ACCESS_DENIED)
    return ConnectionFailed(
        f"cannot reach {where}: {detail}. Check the host and port, that the server is running, and any "
        f"NetworkPolicy between this Pod and the database"
    )


def lost_connection(error: BaseException) -> ConnectionFailed | None:
    """A connection that died under a run (a failover, pg_terminate_backend, a network cut) as the
    retryable failure it is, rather than an unexpected error; None for anything else."""
    if isinstance(error, psycopg.OperationalError) and (
        isinstance(error, psycopg.errors.AdminShutdown | psycopg.errors.CrashShutdown)
        or error.sqlstate is None
        or str(error.sqlstate).startswith("08")
    ):
        return connection_failure("the database connection was lost", error)
    return None


def connection_failure(what: str, error: BaseException) -> ConnectionFailed:
    """`what` happened under a run, as the retryable failure it is; the error's text on one line, masked."""
    detail = redact(" ".join(str(error).split()))
    return ConnectionFailed(
        f"{what} during the run ({detail}); what the run had not committed was rolled back, and the next run carries on"
    )


# Lock modes that conflict with ROW EXCLUSIVE, the lock a batch's DELETE and a ledger INSERT take on a table.
_CONFLICTING_WRITE_MODES = ("ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock")


def lock_holders(conn: psycopg.Connection[tuple[object, ...]], relations: Sequence[str]) -> list[str]:
    """The other sessions that hold, or queue ahead for, a lock on `relations` that a writer would wait behind,
    each with the sessions that block it (pg_blocking_pids): what to name when a lock wait timed out. Runs
    in a transaction of its own on an idle connection; an empty list when none is there any more."""
    rows = conn.execute(
        "SELECT l.pid, l.mode, l.granted, l.relation::regclass::text, a.usename, a.application_name, a.state, "
        "       extract(epoch FROM now() - coalesce(a.xact_start, a.query_start))::int, pg_blocking_pids(l.pid) "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'relation' AND l.pid <> pg_backend_pid() AND l.mode = ANY(%s) "
        "  AND l.relation IN (SELECT to_regclass(name) FROM unnest(%s::text[]) AS name) "
        "ORDER BY l.granted DESC, l.pid",
        (list(_CONFLICTING_WRITE_MODES), list(relations)),
    ).fetchall()
    conn.rollback()
    described = []
    for pid, mode, granted, relation, user, application, state, seconds, blockers in rows:
        holding = "holds" if granted else "waits for"
        who = f"pid {pid} (role {user}, application {application or '-'}, {state}, in transaction for {seconds}s)"
        behind = f", itself behind pids {blockers}" if blockers and not granted else ""
        described.append(f"{who} {holding} {mode} on {relation}{behind}")
    return described


def recovery_conflict_failure(error: BaseException) -> RetryableError | None:
    """A statement a hot standby cancelled (or a session it ended) for a conflict with recovery, as the transient
    failure it is; None for anything else."""
    if isinstance(error, psycopg.Error) and RECOVERY_CONFLICT in str(error):
        detail = redact(" ".join(str(error).split()))
        return RetryableError(
            f"the hot standby cancelled the run's statement for a conflict with recovery ({detail}). Set "
            "hot_standby_feedback = on on the standby, or raise its max_standby_streaming_delay; the next run "
            "tries again",
            reason=Reason.STANDBY_CONFLICT,
        )
    return None


def lock_timeout_failure(error: BaseException) -> RetryableError | None:
    """A lock wait that outlived lock_timeout, as the transient failure it is (another session held the lock);
    None for anything else."""
    if isinstance(error, psycopg.errors.LockNotAvailable):
        detail = redact(" ".join(str(error).split()))
        return RetryableError(
            f"a lock the run needed was held by another session past the lock timeout ({detail}); the log names "
            "the sessions that held it. What the run had not committed was rolled back, and the next run carries on",
            reason=Reason.LOCK_TIMEOUT,
        )
    return None


def drop_database(server: DatabaseSettings, name: str, *, wait_seconds: float = 60.0) -> str | None:
    """Drop database `name` on `server` (connected through its maintenance database `postgres`) once no one
    is connected to it; None when it is gone, else why it is still there.

    Without FORCE: terminating other sessions needs membership in their roles or pg_signal_backend, which a
    backup's role rarely has. PostgreSQL itself ends the autovacuum and analyze workers that visit a freshly
    restored database; anything else connected is waited for, up to `wait_seconds`.
    """
    maintenance = replace(server, dbname="postgres")
    deadline = time.monotonic() + wait_seconds
    attempt = 0
    with connect(maintenance, autocommit=True) as conn:
        while True:
            try:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
                return None
            except psycopg.errors.ObjectInUse:
                # Clients only: an autovacuum worker (no role; its backend_type hidden from a role without
                # pg_read_all_stats) is ended by PostgreSQL's DROP DATABASE itself, and only races it.
                sessions = conn.execute(
                    "SELECT pid, usename, coalesce(nullif(application_name, ''), backend_type) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid() AND usesysid IS NOT NULL",
                    (name,),
                ).fetchall()
                connected = ", ".join(f"pid {pid} ({user}, {what or 'a session'})" for pid, user, what in sessions)
                if time.monotonic() >= deadline:
                    if not sessions:
                        return f"it was still in use after {wait_seconds:g}s, by PostgreSQL's own background workers"
                    return f"{len(sessions)} sessions were still connected to it after {wait_seconds:g}s: {connected}"
                attempt += 1
                log.info(
                    "waiting for the sessions connected to a database to leave before dropping it",
                    extra={"database": name, "sessions": connected, "attempt": attempt},
                )
                time.sleep(min(max(0.0, deadline - time.monotonic()), backoff_seconds(attempt, cap=5.0)))
