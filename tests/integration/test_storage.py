"""The streaming writer against a real S3 server (MinIO)."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from common.errors import PermanentError
from common.secrets import StorageCredentials
from common.spec import SpecReader
from common.storage import MIN_PART_SIZE, ObjectStore, open_store
from common.storage_spec import StorageSpec
from tests.harness.stack import S3_ACCESS_KEY, S3_SECRET_KEY, LocalStack


def _store(stack: LocalStack, bucket: str, concurrency: int | None = None, **overrides: Any) -> ObjectStore:
    spec = StorageSpec.parse(
        SpecReader(
            {
                "bucket": bucket,
                "endpoint": stack.s3_endpoint,
                "forcePathStyle": True,
                "partSizeMiB": 5,
                "credentials": {"accessKeyId": {"name": "s", "key": "a"}, "secretAccessKey": {"name": "s", "key": "b"}},
                **overrides,
            },
            "spec.storage",
        )
    )
    credentials = StorageCredentials(S3_ACCESS_KEY, S3_SECRET_KEY, None, None)
    if concurrency is None:
        return open_store(spec, credentials)
    return open_store(spec, credentials, concurrency=concurrency)


def _chunks(total: int, chunk: int = 1_000_003) -> Any:
    # Odd-sized chunks so part boundaries never line up with writes.
    produced = 0
    while produced < total:
        size = min(chunk, total - produced)
        yield os.urandom(size)
        produced += size


@pytest.mark.parametrize("checksum_mode", ["WhenSupported", "WhenRequired"])
def test_multipart_stream_round_trips_with_matching_sha256(
    stack: LocalStack, bucket: str, s3_admin: Any, checksum_mode: str
) -> None:
    store = _store(stack, bucket, requestChecksum=checksum_mode)
    expected = hashlib.sha256()
    total = 3 * MIN_PART_SIZE + 12345
    with store.open_upload("stream.bin") as upload:
        for chunk in _chunks(total):
            expected.update(chunk)
            upload.write(chunk)
        result = upload.complete()
    assert result.parts == 4
    assert result.size == total
    assert result.sha256 == expected.hexdigest()
    downloaded = s3_admin.get_object(Bucket=bucket, Key="stream.bin")["Body"].read()
    assert hashlib.sha256(downloaded).hexdigest() == result.sha256


def test_small_stream_is_one_put(stack: LocalStack, bucket: str, s3_admin: Any) -> None:
    store = _store(stack, bucket)
    with store.open_upload("small.bin") as upload:
        upload.write(b"hello")
        result = upload.complete()
    assert (result.parts, result.size) == (1, 5)
    assert s3_admin.get_object(Bucket=bucket, Key="small.bin")["Body"].read() == b"hello"
    assert not s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_failure_mid_stream_leaves_no_object_and_no_multipart_upload(
    stack: LocalStack, bucket: str, s3_admin: Any
) -> None:
    store = _store(stack, bucket)

    class DumpDiedError(Exception):
        pass

    def stream_then_fail() -> None:
        with store.open_upload("broken.bin") as upload:
            for index, chunk in enumerate(_chunks(4 * MIN_PART_SIZE)):
                upload.write(chunk)
                if index == 15:
                    # Three parts are on the server by now, in an upload that is in progress.
                    assert upload.bytes_written > 2 * MIN_PART_SIZE
                    assert len(s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1
                    raise DumpDiedError("pg_dump exited 1")

    with pytest.raises(DumpDiedError):
        stream_then_fail()
    listing = s3_admin.list_objects_v2(Bucket=bucket)
    uploads = s3_admin.list_multipart_uploads(Bucket=bucket)
    print(f"after the failure: objects={listing.get('KeyCount')} multipart uploads={len(uploads.get('Uploads', []))}")
    assert listing.get("KeyCount") == 0
    assert not uploads.get("Uploads")


def test_missing_bucket_is_a_clear_permanent_error(stack: LocalStack) -> None:
    store = _store(stack, "no-such-bucket-here")
    with pytest.raises(PermanentError, match="the bucket does not exist"):
        store.check_access()


def test_wrong_keys_are_reported_without_the_secret(stack: LocalStack, bucket: str) -> None:
    spec = StorageSpec.parse(
        SpecReader(
            {
                "bucket": bucket,
                "endpoint": stack.s3_endpoint,
                "forcePathStyle": True,
                "credentials": {"accessKeyId": {"name": "s", "key": "a"}, "secretAccessKey": {"name": "s", "key": "b"}},
            },
            "spec.storage",
        )
    )
    from common.redact import register_secret

    register_secret("wrong-secret-key-value")
    store = open_store(spec, StorageCredentials("wrong-id", "wrong-secret-key-value", None, None))
    with pytest.raises(PermanentError) as raised:
        store.check_access()
    assert "check the access keys" in str(raised.value)
    assert "wrong-secret-key-value" not in str(raised.value)


def test_stale_uploads_under_the_data_directory_are_aborted_and_no_others(
    stack: LocalStack, bucket: str, s3_admin: Any
) -> None:
    from datetime import UTC, datetime, timedelta

    from jobs.backup.backup.retention import abort_stale_uploads
    from jobs.backup.catalog import DATA_DIR

    store = _store(stack, bucket, prefix="team")
    ours = [store.key(DATA_DIR, f"killed-{n}.dump") for n in range(3)]
    theirs = ["team/other/upload.bin", "elsewhere/data/x.dump"]
    for key in ours + theirs:
        s3_admin.create_multipart_upload(Bucket=bucket, Key=key)
    abort_stale_uploads(store, datetime.now(UTC) + timedelta(minutes=1))  # all of them count as stale
    left = sorted(u["Key"] for u in s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads", []))
    assert left == sorted(theirs)
    fresh = store.key(DATA_DIR, "running.dump")
    s3_admin.create_multipart_upload(Bucket=bucket, Key=fresh)
    abort_stale_uploads(store, datetime.now(UTC) - timedelta(hours=1))  # a run's upload of a minute ago stays
    left = sorted(u["Key"] for u in s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads", []))
    assert left == sorted([*theirs, fresh])


def _put_at_once(store: ObjectStore, count: int) -> None:
    """`count` PUTs released together, each big enough (4 MiB) to be in flight while the others start."""
    body = os.urandom(4 * 1024 * 1024)
    start = threading.Barrier(count)

    def put(number: int) -> None:
        start.wait()
        store.put_bytes(f"at-once/{number}", body, content_type="application/octet-stream")

    with ThreadPoolExecutor(max_workers=count) as pool:
        list(pool.map(put, range(count)))


def _discarded(caplog: pytest.LogCaptureFixture) -> int:
    return sum("Connection pool is full" in record.getMessage() for record in caplog.records)


def test_a_client_keeps_a_connection_for_each_request_it_makes_at_once(
    stack: LocalStack, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="urllib3")
    at_once = 24
    _put_at_once(_store(stack, bucket), at_once)
    assert _discarded(caplog) > 0, "the default pool of 16 should have been too small for 24 at once"
    caplog.clear()

    _put_at_once(_store(stack, bucket, concurrency=at_once), at_once)
    assert _discarded(caplog) == 0
