"""cellar's own short, flat list of errors.

Every error carries the reason (common.reasons) it records in status; the reason decides the exit
code, and exactly one place (`common.runtime`) turns an exception into it. The classes group reasons
for callers that catch them (a PermanentError never carries a retryable reason). Messages are written
for the person who has to fix the problem: what went wrong and what to do about it.
"""

from __future__ import annotations

from common.reasons import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PERMANENT,
    EXIT_RETRYABLE,
    EXIT_USAGE,
    Reason,
)

__all__ = ["EXIT_INTERRUPTED", "EXIT_OK", "EXIT_PERMANENT", "EXIT_RETRYABLE", "EXIT_USAGE", "Reason"]


class CellarError(Exception):
    """Base of every error cellar raises on purpose. Its reason (common.reasons) gives the exit code."""

    reason: Reason = Reason.INTERNAL_ERROR
    # The exit code every reason of this class must have (None: any failure).
    exit_class: int | None = None

    def __init__(self, message: str, *, reason: Reason | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        if not self.reason.failure or self.exit_class not in (None, self.reason.exit_code):
            raise TypeError(f"{type(self).__name__} cannot carry reason {self.reason} (exit {self.reason.exit_code})")

    @property
    def exit_code(self) -> int:
        return self.reason.exit_code

    def __str__(self) -> str:
        return self.message


class UsageError(CellarError):
    """The command line or environment is wrong (missing --name, unreadable kubeconfig)."""

    exit_class = EXIT_USAGE
    reason = Reason.USAGE_ERROR


class PermanentError(CellarError):
    """Retrying will not help until a person changes something."""

    exit_class = EXIT_PERMANENT


class InvalidSpec(PermanentError):
    """The custom resource's spec, or a Secret it references, is unusable."""

    reason = Reason.INVALID_SPEC


class NotFound(PermanentError):
    reason = Reason.NOT_FOUND


class Forbidden(PermanentError):
    reason = Reason.FORBIDDEN


class RetryableError(CellarError):
    """A transient failure that outlived its retries; the Job's backoffLimit may run it again."""

    exit_class = EXIT_RETRYABLE


class ConnectionFailed(RetryableError):
    reason = Reason.CONNECTION_FAILED


class Interrupted(CellarError):
    """SIGTERM arrived (deadline, eviction, node drain); the work was rolled back."""

    exit_class = EXIT_INTERRUPTED
    reason = Reason.INTERRUPTED


# ---- failures of the bytes and the tools, raised where they are found and caught by reason


class InjectedFailure(RetryableError):
    """A test's failpoint (common.failpoints) failed the run on purpose."""

    reason = Reason.INJECTED_FAILURE


class DecryptionFailed(PermanentError):
    """No identity given opens the object, or none was given for an encrypted one."""

    reason = Reason.DECRYPTION_FAILED


class VerificationFailed(PermanentError):
    """What the store holds, or what was read back, is not what was written."""

    reason = Reason.VERIFICATION_FAILED


class DumpFailed(CellarError):
    """pg_dump exited non-zero; nothing was published."""

    reason = Reason.DUMP_FAILED


class RecoveryConflict(DumpFailed):
    """A hot standby cancelled the dump, or its row counts, because replay had to remove rows they read
    (SQLSTATE 40001, "conflict with recovery"); another try may get through."""


class BackupUnsound(PermanentError):
    """The backup itself is bad (not the server or the tools): it must no longer count as a backup."""


class ChecksumMismatch(BackupUnsound):
    reason = Reason.CHECKSUM_MISMATCH


class RestoreFailed(PermanentError):
    reason = Reason.RESTORE_FAILED


class RowCountMismatch(BackupUnsound):
    reason = Reason.ROW_COUNT_MISMATCH


# ---- the archive's


class ForeignKeyBlocked(PermanentError):
    reason = Reason.FOREIGN_KEY_BLOCKED


class InsufficientPrivilege(PermanentError):
    reason = Reason.INSUFFICIENT_PRIVILEGE


class CommitInDoubt(RetryableError):
    reason = Reason.CONNECTION_FAILED

    def __init__(self, batch_id: str, detail: str) -> None:
        super().__init__(
            f"the connection died during COMMIT of batch {batch_id} ({detail}); the next run reads the "
            "ledger to learn whether it committed and cleans up accordingly"
        )
        self.batch_id = batch_id


class SnapshotUnrecorded(RetryableError):
    """The catalog committed a batch's snapshot, then its PostgreSQL transaction failed: its rows are back in the
    table. The run stops (taking them again would append them twice); the next run deletes them."""

    reason = Reason.SNAPSHOT_UNRECORDED
