"""One object store of each provider for the store suites (test_stores.py): S3 on MinIO, Azure Blob Storage on
Azurite, Google Cloud Storage on fake-gcs-server. Each gives the spec.storage block and Secret a user would
write, cellar's own store over it (to look at what the jobs wrote), and a client no one here wrote that reads
what cellar wrote: boto3 for S3, the Azure CLI for Azure, gsutil for GCS."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.secrets import StorageCredentials
from common.spec import SpecReader
from common.storage import ObjectStore, open_store
from common.storage_spec import StorageSpec
from tests.harness.emulators import AZURITE_ACCOUNT, AZURITE_KEY, Azurite, FakeGcs
from tests.harness.stack import S3_ACCESS_KEY, S3_SECRET_KEY, LocalStack, s3_client

PROVIDERS = ("S3", "AzureBlob", "GCS")
SECRET = "cellar-object-storage"  # the name the jobs' Roles may read (tests/harness/chart-values.yaml)


@dataclass
class Provider:
    name: str
    bucket: str  # the S3 bucket, Azure container or GCS bucket, made for this test
    spec: dict[str, Any]  # spec.storage
    secret: dict[str, str]  # what the Secret `cellar-object-storage` holds
    credentials: StorageCredentials
    download_foreign: Callable[[str, Path], None]  # key -> a file, by a client no one here wrote
    with_endpoint: Callable[[str], dict[str, Any]]  # spec.storage through another endpoint (a fault proxy)

    def store(self, spec: dict[str, Any] | None = None) -> ObjectStore:
        """cellar's own store over the test's bucket, as the jobs open it."""
        parsed = StorageSpec.parse(SpecReader(spec or self.spec, "spec.storage"))
        return open_store(parsed, self.credentials)


def s3_provider(stack: LocalStack) -> Provider:
    bucket = f"cellar-{uuid.uuid4().hex[:12]}"
    admin = s3_client(stack.s3_endpoint)
    admin.create_bucket(Bucket=bucket)

    def spec_at(endpoint: str) -> dict[str, Any]:
        return {
            "bucket": bucket,
            "prefix": "test",
            "endpoint": endpoint,
            "forcePathStyle": True,
            "partSizeMiB": 5,
            "credentials": {
                "accessKeyId": {"name": SECRET, "key": "AWS_ACCESS_KEY_ID"},
                "secretAccessKey": {"name": SECRET, "key": "AWS_SECRET_ACCESS_KEY"},
            },
        }

    def download(key: str, path: Path) -> None:
        admin.download_file(bucket, key, str(path))

    return Provider(
        "S3",
        bucket,
        spec_at(stack.s3_endpoint),
        {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY},
        StorageCredentials(S3_ACCESS_KEY, S3_SECRET_KEY, None, None),
        download,
        spec_at,
    )


def azure_provider(azurite: Azurite) -> Provider:
    container = f"cellar-{uuid.uuid4().hex[:12]}"
    azurite.service().create_container(container)

    def spec_at(endpoint: str) -> dict[str, Any]:
        return {
            "provider": "AzureBlob",
            "prefix": "test",
            "partSizeMiB": 5,
            "azureBlob": {
                "account": AZURITE_ACCOUNT,
                "container": container,
                "endpoint": endpoint,
                "credentials": {"accountKey": {"name": SECRET, "key": "AZURE_STORAGE_KEY"}},
            },
        }

    def download(key: str, path: Path) -> None:
        azurite.az("storage", "blob", "download", "-c", container, "-n", key, "-f", str(path), "--no-progress")

    return Provider(
        "AzureBlob",
        container,
        spec_at(azurite.endpoint),
        {"AZURE_STORAGE_KEY": AZURITE_KEY},
        StorageCredentials(None, None, None, None, azure_account_key=AZURITE_KEY),
        download,
        lambda endpoint: spec_at(f"{endpoint}/{AZURITE_ACCOUNT}"),
    )


def gcs_provider(fake_gcs: FakeGcs) -> Provider:
    bucket = f"cellar-{uuid.uuid4().hex[:12]}"
    fake_gcs.client().create_bucket(bucket)

    def spec_at(endpoint: str) -> dict[str, Any]:
        return {
            "provider": "GCS",
            "prefix": "test",
            "partSizeMiB": 5,
            "gcs": {"bucket": bucket, "endpoint": endpoint, "credentials": {"anonymous": True}},
        }

    def download(key: str, path: Path) -> None:
        fake_gcs.gsutil("-q", "cp", f"gs://{bucket}/{key}", str(path))

    return Provider(
        "GCS",
        bucket,
        spec_at(fake_gcs.endpoint),
        {"unused": "the emulator takes no credentials"},
        StorageCredentials(None, None, None, None),
        download,
        spec_at,
    )
