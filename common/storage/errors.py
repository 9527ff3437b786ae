"""Storage failures as cellar's errors. Every boto3 and botocore exception the storage seam meets leaves it as
one of cellar's reasons, with a message that says what to fix; nothing outside this package sees botocore."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, SSLError

from common.errors import CellarError, ConnectionFailed, Forbidden, PermanentError, RetryableError
from common.reasons import Reason
from common.redact import redact

log = logging.getLogger("common.storage")

RETRY_ATTEMPTS = 5
RETRIED_STATUSES = (429, 500, 502, 503, 504)
# What a request to the store raises: an answer (ClientError) or no answer (BotoCoreError).
STORE_ERRORS = (ClientError, BotoCoreError)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


@contextmanager
def translated(action: str, bucket: str, key: str = "") -> Iterator[None]:
    """Run requests to the store; a failure leaves as cellar's error for `action` on s3://bucket/key."""
    try:
        yield
    except STORE_ERRORS as exc:
        raise translate_storage_error(exc, action, bucket, key) from None


def log_retryable_failure(
    response: Any = None, caught_exception: Exception | None = None, attempts: int = 0, operation: Any = None, **_: Any
) -> None:
    """Say in the log what botocore is about to retry (its standard mode retries throttling, 5xx and
    dropped connections up to 5 attempts, with jittered backoff): one line per failed attempt."""
    if caught_exception is not None:
        what = type(caught_exception).__name__
    elif response is not None and int(response[0].status_code) in RETRIED_STATUSES:
        what = f"{response[0].status_code} {(response[1].get('Error') or {}).get('Code', '')}".strip()
    else:
        return
    log.warning(
        "storage request failed; retrying" if attempts < RETRY_ATTEMPTS else "storage request failed; no attempts left",
        extra={"operation": getattr(operation, "name", ""), "attempt": attempts, "of": RETRY_ATTEMPTS, "error": what},
    )


def translate_storage_error(exc: Exception, action: str, bucket: str, key: str = "") -> CellarError:
    """A storage failure as a cellar error whose message says what to fix."""
    where = f"s3://{bucket}/{key}" if key else f"bucket {bucket!r}"
    if isinstance(exc, ClientError):
        code, status = error_code(exc), http_status(exc)
        detail = redact(str(exc.response.get("Error", {}).get("Message", "") or code))
        if code in ("NoSuchBucket",) or (status == 404 and not key):
            return PermanentError(
                f"{action} {where}: the bucket does not exist; create it or fix spec.storage.bucket",
                reason=Reason.BUCKET_NOT_FOUND,
            )
        if (
            code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled")
            or status == 403
        ):
            return Forbidden(
                f"{action} {where}: access denied ({code}: {detail}); check the access keys "
                "in the storage Secret and the bucket policy",
                reason=Reason.STORAGE_ACCESS_DENIED,
            )
        if status >= 500 or code in ("SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError"):
            return RetryableError(
                f"{action} {where}: the store is failing ({code}: {detail})", reason=Reason.UPLOAD_FAILED
            )
        return PermanentError(f"{action} {where}: {code}: {detail}", reason=Reason.UPLOAD_REJECTED)
    if isinstance(exc, BotoCoreError):
        return _unanswered(exc, action, where)
    return RetryableError(f"{action} {where}: {redact(str(exc))}", reason=Reason.UPLOAD_FAILED)


def _unanswered(exc: BotoCoreError, action: str, where: str) -> CellarError:
    """A request the store did not answer: the network's passing failure, or a certificate never accepted."""
    if isinstance(exc, SSLError) and "certificate verify failed" in str(exc):
        # Not a passing failure: every attempt meets the same certificate until the spec or the endpoint changes.
        return PermanentError(
            f"{action} {where}: the S3 endpoint's certificate was not accepted ({redact(str(exc))}). Name the CA "
            "that signed it in spec.storage.endpointCA (a Secret's key), or fix spec.storage.endpoint where it "
            "names another host than the certificate",
            reason=Reason.STORAGE_CERTIFICATE_REJECTED,
        )
    return ConnectionFailed(
        f"{action} {where}: cannot reach the object store: {redact(str(exc))}", reason=Reason.STORAGE_UNAVAILABLE
    )
