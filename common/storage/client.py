"""The boto3 client behind ObjectStore, built from the resource's settings. Private to this package: the jobs
use the store's verbs (common.storage.store), which translate every failure."""

from __future__ import annotations

import contextlib
import os
import tempfile
import weakref
from typing import TYPE_CHECKING, Any, Literal

import boto3
from botocore.config import Config

from common.secrets import StorageCredentials
from common.storage.errors import RETRY_ATTEMPTS, log_retryable_failure
from common.storage_spec import StorageSpec

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = Any


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def build_client(spec: StorageSpec, credentials: StorageCredentials, *, concurrency: int = 16) -> S3Client:
    """A boto3 S3 client for AWS, MinIO, Ceph RGW or IBM COS, configured from the spec.

    `concurrency`: the most requests the caller makes at once. The client keeps that many connections
    open; with fewer, each request beyond them opens a connection, closes it afterwards, and urllib3
    logs "Connection pool is full, discarding connection" for it.
    """
    checksum_mode: Literal["when_supported", "when_required"] = (
        "when_required" if spec.checksum_when_required else "when_supported"
    )
    config = Config(
        region_name=spec.region,
        s3={"addressing_style": "path" if spec.force_path_style else "auto"},
        retries={"max_attempts": RETRY_ATTEMPTS, "mode": "standard"},
        request_checksum_calculation=checksum_mode,
        response_checksum_validation=checksum_mode,
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=concurrency,
    )
    verify: bool | str | None = None
    if spec.insecure_skip_tls_verify:
        verify = False
    elif credentials.ca_bundle_pem:
        # botocore reads the CA from a file, when it opens connections: the file lives as long as the client.
        with tempfile.NamedTemporaryFile("w", prefix="cellar-s3-ca-", suffix=".pem", delete=False) as ca:
            ca.write(credentials.ca_bundle_pem)
        verify = ca.name
    session = boto3.session.Session()
    client = session.client(
        "s3",
        endpoint_url=spec.endpoint,
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
        aws_session_token=credentials.session_token,
        config=config,
        verify=verify,
    )
    client.meta.events.register_last("needs-retry.s3", log_retryable_failure)
    if isinstance(verify, str):
        weakref.finalize(client, _remove, verify)  # at the client's end, or the interpreter's
    return client
