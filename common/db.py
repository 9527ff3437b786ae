"""PostgreSQL connections from Secret-provided settings, with failures turned into clear errors."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from datetime import timedelta

import psycopg
from psycopg.conninfo import make_conninfo

from common.errors import ConnectionFailed, PermanentError
from common.reasons import Reason
from common.redact import redact
from common.secrets import DatabaseSettings

# SQLSTATE classes that retrying cannot fix: bad credentials, unknown database, no privilege.
_PERMANENT_SQLSTATES = {"28P01", "28000", "3D000", "42501"}


def libpq_params(settings: DatabaseSettings, *, application_name: str) -> dict[str, str]:
    """Keyword parameters for libpq (psycopg.connect, or PG* variables for pg_dump)."""
    params = {
        "host": settings.host,
        "port": str(settings.port),
        "dbname": settings.dbname,
        "user": settings.user,
        "password": settings.password,
        "sslmode": settings.ssl_mode,
        "connect_timeout": str(settings.connect_timeout),
        "application_name": application_name,
    }
    if settings.ssl_root_cert:
        params["sslrootcert"] = _write_ca_file(settings.ssl_root_cert)
    return params


def libpq_environment(settings: DatabaseSettings, *, application_name: str) -> dict[str, str]:
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
    application_name: str,
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
    try:
        return psycopg.connect(make_conninfo(**params), autocommit=autocommit)
    except psycopg.Error as exc:
        raise translate_connect_error(exc, settings) from None


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
