"""ObjectStore over a fake boto3 client, the seam the store is built on (as KubeTransport is for the Kubernetes
client): each verb's request, and every failure of the store leaving as one of cellar's reasons."""

from __future__ import annotations

import ast
import base64
import gc
import hashlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from common.errors import CellarError, ConnectionFailed, Forbidden, RetryableError, VerificationFailed
from common.reasons import Reason
from common.secrets import StorageCredentials
from common.spec import SpecReader
from common.storage.client import build_client
from common.storage.s3 import S3Store
from common.storage_spec import StorageSpec

REPO = Path(__file__).resolve().parents[2]
SPEC = StorageSpec.parse(
    SpecReader(
        {
            "bucket": "bucket",
            "prefix": "p",
            "endpoint": "http://127.0.0.1:9",
            "credentials": {"accessKeyId": {"name": "s", "key": "a"}, "secretAccessKey": {"name": "s", "key": "b"}},
        },
        "spec.storage",
    )
)


def client_error(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


class Body:
    def __init__(self, chunks: list[bytes], fail_after: int | None = None) -> None:
        self.chunks, self.fail_after = chunks, fail_after

    def read(self) -> bytes:
        return b"".join(self.chunks)

    def iter_chunks(self, size: int) -> Iterator[bytes]:
        for number, chunk in enumerate(self.chunks):
            if number == self.fail_after:
                raise ReadTimeoutError(endpoint_url="http://127.0.0.1:9")
            yield chunk


class Pages:
    def __init__(self, pages: list[dict[str, Any]], error: Exception | None) -> None:
        self.pages, self.error = pages, error

    def paginate(self, **_: Any) -> Iterator[dict[str, Any]]:
        if self.error is not None:
            raise self.error
        yield from self.pages


class FakeClient:
    """What the store asks of boto3's S3 client, recorded; `fail` makes an operation raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail: dict[str, Exception] = {}
        self.body = Body([b"abc", b"def"])
        self.uploads: list[dict[str, Any]] = []
        self.head: dict[str, Any] = {}

    def _call(self, name: str, arguments: dict[str, Any]) -> None:
        self.calls.append((name, arguments))
        if name in self.fail:
            raise self.fail[name]

    def get_object(self, **arguments: Any) -> dict[str, Any]:
        self._call("get_object", arguments)
        return {"Body": self.body, "ETag": '"e"'}

    def put_object(self, **arguments: Any) -> dict[str, Any]:
        self._call("put_object", arguments)
        return {"ChecksumSHA256": arguments.get("ChecksumSHA256")}

    def head_object(self, **arguments: Any) -> dict[str, Any]:
        self._call("head_object", arguments)
        return self.head

    def abort_multipart_upload(self, **arguments: Any) -> None:
        self._call("abort_multipart_upload", arguments)

    def get_paginator(self, name: str) -> Pages:
        self.calls.append((f"paginate {name}", {}))
        return Pages([{"Uploads": self.uploads}], self.fail.get(name))


@pytest.fixture
def client() -> FakeClient:
    return FakeClient()


@pytest.fixture
def store(client: FakeClient) -> S3Store:
    return S3Store(client, SPEC)  # type: ignore[arg-type]


def test_a_ranged_read_asks_for_the_range(store: S3Store, client: FakeClient) -> None:
    assert store.get_range("k", 0, 100) == b"abcdef"
    assert client.calls == [("get_object", {"Bucket": "bucket", "Key": "k", "Range": "bytes=0-99"})]


def test_a_read_cut_short_is_storage_unavailable(store: S3Store, client: FakeClient) -> None:
    client.body = Body([b"abc", b"def", b"ghi"], fail_after=1)
    chunks = store.read_chunks("k", 3)
    assert next(chunks) == b"abc"
    with pytest.raises(ConnectionFailed) as raised:
        next(chunks)
    assert raised.value.reason == Reason.STORAGE_UNAVAILABLE
    assert "s3://bucket/k" in str(raised.value)


def test_a_read_refused_before_the_first_byte_is_access_denied(store: S3Store, client: FakeClient) -> None:
    client.fail["get_object"] = client_error(403, "AccessDenied")
    with pytest.raises(Forbidden) as raised:
        list(store.read_chunks("k", 3))
    assert raised.value.reason == Reason.STORAGE_ACCESS_DENIED


def test_pending_uploads_are_picked_by_key_from_the_whole_listing(store: S3Store, client: FakeClient) -> None:
    started = datetime(2026, 1, 1, tzinfo=UTC)
    client.uploads = [
        {"Key": "p/data/1", "UploadId": "u1", "Initiated": started},
        {"Key": "other/data/2", "UploadId": "u2", "Initiated": started + timedelta(hours=1)},
    ]
    pending = store.pending_uploads("p/data/")
    assert [(u.key, u.upload_id, u.initiated) for u in pending] == [("p/data/1", "u1", started)]
    store.abort_upload(pending[0])
    assert client.calls[-1] == ("abort_multipart_upload", {"Bucket": "bucket", "Key": "p/data/1", "UploadId": "u1"})


@pytest.mark.parametrize(
    ("error", "kind", "reason"),
    [
        (client_error(403, "AccessDenied"), Forbidden, Reason.STORAGE_ACCESS_DENIED),
        (client_error(503, "SlowDown"), RetryableError, Reason.UPLOAD_FAILED),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), ConnectionFailed, Reason.STORAGE_UNAVAILABLE),
    ],
)
def test_a_failed_listing_of_uploads_is_one_of_cellars_reasons(
    store: S3Store, client: FakeClient, error: Exception, kind: type[CellarError], reason: Reason
) -> None:
    """Once an InternalError: retention lists the uploads after a backup was published, past the seam."""
    client.fail["list_multipart_uploads"] = error
    with pytest.raises(kind) as raised:
        store.pending_uploads("p/data/")
    assert raised.value.reason == reason
    assert "multipart uploads of bucket 'bucket'" in str(raised.value)


def test_a_verified_put_sends_the_checksum_and_checks_what_is_stored(store: S3Store, client: FakeClient) -> None:
    body = b"body"
    sha256 = hashlib.sha256(body).hexdigest()
    store.put_verified("k", body, sha256)
    name, arguments = client.calls[-1]
    assert (name, arguments["Body"]) == ("put_object", b"body")
    assert base64.b64decode(arguments["ChecksumSHA256"]).hex() == sha256
    # A store that answers with no checksum is asked with HEAD; an ETag that is not the body's MD5 fails.
    client.put_object = lambda **arguments: {}  # type: ignore[method-assign]
    client.head = {"ContentLength": 4, "ETag": '"0123"'}
    with pytest.raises(VerificationFailed, match="does not match what was uploaded"):
        store.put_verified("k", body, sha256)
    client.head = {"ContentLength": 4, "ETag": f'"{hashlib.md5(body, usedforsecurity=False).hexdigest()}"'}
    store.put_verified("k", body, sha256)
    stored = store.stat("k")
    assert (stored.size, stored.etag, stored.sha256) == (4, hashlib.md5(body, usedforsecurity=False).hexdigest(), None)
    client.fail["head_object"] = client_error(500, "InternalError")
    with pytest.raises(RetryableError):
        store.stat("k")


def test_conditional_writes_and_reads_of_what_may_not_exist(store: S3Store, client: FakeClient) -> None:
    client.fail["put_object"] = client_error(412, "PreconditionFailed")
    assert store.put_if("k", b"{}", etag=None) is False
    assert client.calls[-1][1]["IfNoneMatch"] == "*"
    client.fail["get_object"] = client_error(404, "NoSuchKey")
    assert store.get_if_exists("k") is None


def test_the_ca_file_a_client_needs_goes_with_the_client() -> None:
    credentials = StorageCredentials(
        "id", "secret", None, "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"
    )
    client = build_client(SPEC, credentials)
    path = client._endpoint.http_session._verify  # type: ignore[attr-defined]
    assert isinstance(path, str)
    assert os.path.exists(path)
    del client
    gc.collect()
    assert not os.path.exists(path)


def test_nothing_outside_the_storage_package_reaches_an_sdk() -> None:
    """The seam is closed: no module of common/ or jobs/ imports boto3, botocore or the Azure or Google SDKs, or
    takes the store's client."""
    storage = REPO / "common" / "storage"
    for path in [*(REPO / "common").rglob("*.py"), *(REPO / "jobs").rglob("*.py")]:
        if storage in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(m.split(".")[0] in ("boto3", "botocore", "azure", "google") for m in modules), path
            if isinstance(node, ast.Attribute) and node.attr in ("client", "_client"):
                assert not (isinstance(node.value, ast.Name) and "store" in node.value.id), f"{path}:{node.lineno}"
