"""Shared set-up for the archive job's integration tests."""

from __future__ import annotations

import io
import json
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest
from kubernetes import client

from jobs.archive.settings import DEFAULT_TUNING, Tuning
from tests.integration.backup_helpers import _dsn
from tests.integration.environments import ArchiveEnv


def dsn(database: dict[str, Any]) -> str:
    return _dsn(database)


def setup_archive(archive_env: ArchiveEnv, table: str = "orders", name: str = "orders", **spec: Any) -> dict[str, Any]:
    """The database Secret and a TableArchive `name` over `table`, in the test's namespace and bucket."""
    archive_env.create_secret("cellar-database", archive_env.database)
    body = {
        "database": {"secretRef": {"name": "cellar-database"}, "sslMode": "disable"},
        "storage": archive_env.storage_spec,
        "table": {"schema": "public", "name": table},
        "timestampColumn": "created_at",
        "olderThan": "30d",
        **spec,
    }
    return dict(archive_env.create_resource("TableArchive", {"metadata": {"name": name}, "spec": body}))


def patch_spec(
    admin_api: Any, namespace: str, spec: dict[str, Any], name: str = "orders", plural: str = "tablearchives"
) -> None:
    """Merge `spec` into a resource's spec (a TableArchive's unless told), as `kubectl patch --type merge` does."""
    client.CustomObjectsApi(admin_api).patch_namespaced_custom_object(
        "cellar.dev",
        "v1alpha1",
        namespace,
        plural,
        name,
        {"spec": spec},
        _content_type="application/merge-patch+json",
    )


def run_archive_job(
    kubeconfig: Any, namespace: str, *args: str, name: str = "orders", tuning: Tuning = DEFAULT_TUNING
) -> int:
    from jobs.archive.__main__ import main

    return main([*args, "--kubeconfig", str(kubeconfig), "--namespace", namespace, "--name", name], tuning=tuning)


def archived_objects(s3_admin: Any, bucket: str, relation: str = "public.orders") -> dict[str, Any]:
    """Every data object of a table in storage, read with pyarrow: key -> table."""
    listing = list_all(s3_admin, bucket, f"test/{relation}/")
    return {
        o["Key"]: pq.read_table(io.BytesIO(s3_admin.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()))
        for o in listing
    }


def list_all(s3_admin: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every object under a prefix (a single ListObjectsV2 call stops at 1,000)."""
    pages = s3_admin.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o for page in pages for o in page.get("Contents", [])]


def manifests(s3_admin: Any, bucket: str, relation: str = "public.orders") -> list[dict[str, Any]]:
    listing = list_all(s3_admin, bucket, f"test/_cellar_manifests/{relation}/")
    return [json.loads(s3_admin.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()) for o in listing]


def ids_in_table(database: dict[str, Any], table: str = "orders") -> set[int]:
    with psycopg.connect(dsn(database)) as conn:
        return {int(r[0]) for r in conn.execute(f'SELECT id FROM "{table}"')}


def json_log_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The JSON log lines the jobs run in this test printed since the last call."""
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
