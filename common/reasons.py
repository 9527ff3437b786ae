"""Every reason cellar writes into a condition or an Event, declared once with what it means.

A failure's reason decides the run's exit code (so the Job's podFailurePolicy) and nothing else does:
one reason is never retryable in one place and permanent in another. The documents' tables of reasons are
this list: the user guide's table (`python -m common.reasons`) and docs/monitoring.md's list by exit code
(`python -m common.reasons --by-exit-code`); a test compares both.
"""

from __future__ import annotations

import sys
from enum import StrEnum

EXIT_OK = 0
EXIT_RETRYABLE = 1
EXIT_USAGE = 2
EXIT_PERMANENT = 3
# 128 + SIGTERM, what a shell reports for a process ended by SIGTERM: the Job retries it.
EXIT_INTERRUPTED = 143

_CLASS_NAMES = {
    EXIT_OK: "not a failure",
    EXIT_RETRYABLE: "retryable (1)",
    EXIT_USAGE: "usage (2)",
    EXIT_PERMANENT: "permanent (3)",
    EXIT_INTERRUPTED: "interrupted (143)",
}


class Reason(StrEnum):
    """A condition or Event reason: its CamelCase name, the exit code of a run that fails with it, and
    what it means to the person reading `kubectl describe`."""

    exit_code: int
    meaning: str

    def __new__(cls, value: str, exit_code: int, meaning: str) -> Reason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.exit_code = exit_code
        member.meaning = meaning
        return member

    # ---- progress and outcomes that are not failures
    RUNNING = "Running", EXIT_OK, "a run is under way"
    STARTED = "Started", EXIT_OK, "a run began (Event)"
    COMPLETED = "Completed", EXIT_OK, "the run finished and did what it was asked"
    DRY_RUN_COMPLETED = "DryRunCompleted", EXIT_OK, "a dry run checked everything it would use; nothing was written"
    NOTHING_TO_ARCHIVE = "NothingToArchive", EXIT_OK, "no row was old enough to archive"
    WAITING_FOR_STANDBY = "WaitingForStandby", EXIT_OK, "batches wait while a standby replays too far behind"
    STANDBY_BEHIND = "StandbyBehind", EXIT_OK, "rows were due, but a standby stayed behind for the whole run"
    LOCK_HELD = "LockHeld", EXIT_OK, "another run archives this table now; this one stepped aside"
    INDEX_MISSING = "IndexMissing", EXIT_OK, "a large table has no index on the timestamp column (Warning Event)"
    UNARCHIVED = "Unarchived", EXIT_OK, "archived rows were loaded back (Event)"
    MAINTAINED = (
        "Maintained",
        EXIT_OK,
        "an Iceberg table's small files were compacted, old snapshots expired and orphan files deleted (Event)",
    )
    RESTORE_TEST_PASSED = "RestoreTestPassed", EXIT_OK, "a backup restored and every table's row count matched"
    STALE = "Stale", EXIT_OK, "the newest good backup is older than staleAfter"
    NO_BACKUP = "NoBackup", EXIT_OK, "no complete backup is in storage yet"
    SUSPENDED = (
        "Suspended",
        EXIT_OK,
        "the resource is suspended (annotation cellar.dev/suspended, kubectl cellar suspend); the run did nothing",
    )

    # ---- failures a retry may cure
    CONNECTION_FAILED = "ConnectionFailed", EXIT_RETRYABLE, "the database could not be reached, or the connection died"
    STORAGE_UNAVAILABLE = "StorageUnavailable", EXIT_RETRYABLE, "the object store could not be reached"
    UPLOAD_FAILED = "UploadFailed", EXIT_RETRYABLE, "the object store failed a request (5xx, throttling, timeout)"
    KUBERNETES_UNAVAILABLE = "KubernetesUnavailable", EXIT_RETRYABLE, "the API server kept failing a request"
    STATUS_CONFLICT = "StatusConflict", EXIT_RETRYABLE, "the resource's status kept changing under the run"
    TOO_MANY_CONNECTIONS = (
        "TooManyConnections",
        EXIT_RETRYABLE,
        "the server stayed at max_connections for as long as the run waited for a connection",
    )
    LOCK_TIMEOUT = (
        "LockTimeout",
        EXIT_RETRYABLE,
        "another session held a lock the run needed past spec.lockTimeout, try after try; the log names it",
    )
    STANDBY_CONFLICT = (
        "StandbyConflict",
        EXIT_RETRYABLE,
        "a hot standby kept cancelling the dump for conflicts with recovery; see hot_standby_feedback",
    )
    CATALOG_UNAVAILABLE = (
        "CatalogUnavailable",
        EXIT_RETRYABLE,
        "the Iceberg catalog (spec.iceberg.catalog) could not be reached, or failed a request",
    )
    CATALOG_CONFLICT = (
        "CatalogConflict",
        EXIT_RETRYABLE,
        "the Iceberg table kept changing under the run's commits (other writers), try after try",
    )
    SNAPSHOT_UNRECORDED = (
        "SnapshotUnrecorded",
        EXIT_RETRYABLE,
        "an Iceberg snapshot committed but its batch's transaction did not; the next run deletes its rows",
    )
    DUMP_FAILED = "DumpFailed", EXIT_RETRYABLE, "pg_dump exited with an error (its message follows)"
    INJECTED_FAILURE = "InjectedFailure", EXIT_RETRYABLE, "a test's failpoint failed the run on purpose"
    INTERNAL_ERROR = "InternalError", EXIT_RETRYABLE, "an unexpected error; the message and the logs say where"

    # ---- failures that need a person
    INVALID_SPEC = (
        "InvalidSpec",
        EXIT_PERMANENT,
        "the spec or a Secret it names is unusable; the message names the field",
    )
    NOT_FOUND = "NotFound", EXIT_PERMANENT, "the resource (or one it names) does not exist"
    FORBIDDEN = (
        "Forbidden",
        EXIT_PERMANENT,
        "the ServiceAccount lacks a permission; the message names verb and resource",
    )
    API_REJECTED = "ApiRejected", EXIT_PERMANENT, "the API server refused a request as invalid"
    AUTHENTICATION_FAILED = "AuthenticationFailed", EXIT_PERMANENT, "the database rejected the username or password"
    DATABASE_NOT_FOUND = "DatabaseNotFound", EXIT_PERMANENT, "the database named in the Secret does not exist"
    DATABASE_ACCESS_DENIED = "DatabaseAccessDenied", EXIT_PERMANENT, "the role may not connect to the database"
    CERTIFICATE_REJECTED = (
        "CertificateRejected",
        EXIT_PERMANENT,
        "TLS verification of the database server failed: the CA in sslrootcert or the host does not match",
    )
    BUCKET_NOT_FOUND = "BucketNotFound", EXIT_PERMANENT, "the bucket (or Azure container) does not exist"
    STORAGE_CERTIFICATE_REJECTED = (
        "StorageCertificateRejected",
        EXIT_PERMANENT,
        "TLS verification of the S3 endpoint failed: name the CA of its certificate in spec.storage.endpointCA",
    )
    STORAGE_ACCESS_DENIED = (
        "StorageAccessDenied",
        EXIT_PERMANENT,
        "the object store refused the credentials (keys, SAS token, workload identity)",
    )
    UPLOAD_REJECTED = (
        "UploadRejected",
        EXIT_PERMANENT,
        "the object store refused a request as invalid, or it is too big",
    )
    DELETE_REFUSED = (
        "DeleteRefused",
        EXIT_PERMANENT,
        "the object store refused to delete a file maintenance no longer needs; the catalog is consistent, the "
        "file stays until a run may delete it",
    )
    PREFIX_IN_USE = (
        "PrefixInUse",
        EXIT_PERMANENT,
        "another resource owns the storage prefix (cellar-owner.json); the message says how to hand it over",
    )
    OBJECT_LOCK_DISABLED = (
        "ObjectLockDisabled",
        EXIT_PERMANENT,
        "spec.storage.objectLock is set, but the bucket was not created with object lock",
    )
    CATALOG_ACCESS_DENIED = (
        "CatalogAccessDenied",
        EXIT_PERMANENT,
        "the Iceberg catalog (its database, or the REST catalog) refused the credentials or the privileges it needs",
    )
    CATALOG_CERTIFICATE_REJECTED = (
        "CatalogCertificateRejected",
        EXIT_PERMANENT,
        "TLS verification of the Iceberg REST catalog failed: name its CA in spec.iceberg.catalog.rest.caBundle",
    )
    ICEBERG_TABLE_MISMATCH = (
        "IcebergTableMismatch",
        EXIT_PERMANENT,
        "the Iceberg table exists with another schema or partitioning than the archived table's",
    )
    TOOL_MISSING = "ToolMissing", EXIT_PERMANENT, "no pg_dump or pg_restore where cellar looks for them"
    PG_DUMP_TOO_OLD = "PgDumpTooOld", EXIT_PERMANENT, "every pg_dump installed is older than the server"
    PG_RESTORE_TOO_OLD = "PgRestoreTooOld", EXIT_PERMANENT, "no pg_restore installed reads the backup's format"
    TARGET_TOO_OLD = "TargetTooOld", EXIT_PERMANENT, "a parallel restore cannot reach a server that old"
    COUNT_FAILED = "CountFailed", EXIT_PERMANENT, "counting a table's rows in the dump's snapshot failed"
    TARGET_EXISTS = "TargetExists", EXIT_PERMANENT, "createDatabase: the target database exists already"
    TABLE_EXISTS = (
        "TableExists",
        EXIT_PERMANENT,
        "a partial restore would overwrite a table or schema the target has; set clean to replace it",
    )
    INSUFFICIENT_SPACE = (
        "InsufficientSpace",
        EXIT_PERMANENT,
        "the staging volume has less free space than the dump needs (or filled up mid-dump); nothing was published "
        "or restored",
    )
    BACKUP_NOT_FOUND = "BackupNotFound", EXIT_PERMANENT, "no complete backup matches what the restore asks for"
    CHECKSUM_MISMATCH = "ChecksumMismatch", EXIT_PERMANENT, "the stored object is not what its manifest describes"
    DECRYPTION_FAILED = (
        "DecryptionFailed",
        EXIT_PERMANENT,
        "an encrypted backup: no identity was given, or none given is one of its recipients",
    )
    RESTORE_FAILED = "RestoreFailed", EXIT_PERMANENT, "pg_restore exited with an error (its message follows)"
    ROW_COUNT_MISMATCH = "RowCountMismatch", EXIT_PERMANENT, "a restore test counted other rows than the manifest"
    INVALID_MANIFEST = "InvalidManifest", EXIT_PERMANENT, "a manifest in the bucket cannot be read"
    UNSUPPORTED_MANIFEST = "UnsupportedManifest", EXIT_PERMANENT, "a manifest is newer than this cellar reads"
    SCHEMA_MISMATCH = (
        "SchemaMismatch",
        EXIT_PERMANENT,
        "the table's columns changed in a way its archive cannot follow, or rows cannot go back as archived",
    )
    VERIFICATION_FAILED = "VerificationFailed", EXIT_PERMANENT, "an archived object read back differs from its rows"
    ENCODING_FAILED = "EncodingFailed", EXIT_PERMANENT, "a value cannot be stored as its column's Parquet type"
    FOREIGN_KEY_BLOCKED = "ForeignKeyBlocked", EXIT_PERMANENT, "other tables reference this one with ON DELETE CASCADE"
    INSUFFICIENT_PRIVILEGE = (
        "InsufficientPrivilege",
        EXIT_PERMANENT,
        "the role lacks a privilege; the message names the GRANT",
    )

    # ---- the command line
    USAGE_ERROR = "UsageError", EXIT_USAGE, "bad flags, no resource name, or an unreadable kubeconfig"

    # ---- SIGTERM
    INTERRUPTED = "Interrupted", EXIT_INTERRUPTED, "SIGTERM (deadline, eviction, drain): the work was rolled back"

    @property
    def failure(self) -> bool:
        return self.exit_code != EXIT_OK


def markdown_table() -> str:
    """The user guide's table of reasons."""
    rows = ["| reason | exit code of a run failing with it | meaning |", "|---|---|---|"]
    rows += [f"| `{r.value}` | {_CLASS_NAMES[r.exit_code]} | {r.meaning} |" for r in Reason]
    return "\n".join(rows) + "\n"


def by_exit_code() -> str:
    """docs/monitoring.md's short list: the reasons of each exit code, by name."""
    lines = []
    for code, label in _CLASS_NAMES.items():
        names = ", ".join(f"`{r.value}`" for r in Reason if r.exit_code == code)
        lines.append(f"- {label[0].upper()}{label[1:]}: {names}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(by_exit_code() if sys.argv[1:] == ["--by-exit-code"] else markdown_table())
