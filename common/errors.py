"""cellar's own short, flat list of errors.

Every error carries the condition `reason` it records in status and the exit code it maps to, so
exactly one place (`common.runtime`) turns an exception into an exit code. Messages are written for
the person who has to fix the problem: what went wrong and what to do about it.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RETRYABLE = 1
EXIT_USAGE = 2
EXIT_PERMANENT = 3
# 128 + SIGTERM, what a shell reports for a process ended by SIGTERM: the Job retries it.
EXIT_INTERRUPTED = 143


class CellarError(Exception):
    """Base of every error cellar raises on purpose."""

    exit_code = EXIT_RETRYABLE
    reason = "Failed"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason

    def __str__(self) -> str:
        return self.message


class UsageError(CellarError):
    """The command line or environment is wrong (missing --name, unreadable kubeconfig)."""

    exit_code = EXIT_USAGE
    reason = "UsageError"


class PermanentError(CellarError):
    """Retrying will not help until a person changes something."""

    exit_code = EXIT_PERMANENT


class InvalidSpec(PermanentError):
    """The custom resource's spec, or a Secret it references, is unusable."""

    reason = "InvalidSpec"


class NotFound(PermanentError):
    reason = "NotFound"


class Forbidden(PermanentError):
    reason = "Forbidden"


class RetryableError(CellarError):
    """A transient failure that outlived its retries; the Job's backoffLimit may run it again."""

    exit_code = EXIT_RETRYABLE


class ConnectionFailed(RetryableError):
    reason = "ConnectionFailed"


class Interrupted(CellarError):
    """SIGTERM arrived (deadline, eviction, node drain); the work was rolled back."""

    exit_code = EXIT_INTERRUPTED
    reason = "Interrupted"
