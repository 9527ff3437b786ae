"""What the Iceberg maintenance tests share: the maintenance settings patched into a TableArchive, the table's files
as PyIceberg's metadata references them and as MinIO holds them, and the figures PyIceberg reads."""

from __future__ import annotations

from typing import Any

import pyarrow.compute as pc
from kubernetes import client

from tests.integration.archive_helpers import list_all
from tests.integration.environments import ArchiveEnv
from tests.integration.iceberg_helpers import iceberg_catalog

LOCATION = "test/public.orders/iceberg/"


def set_maintenance(env: ArchiveEnv, name: str = "orders", **fields: Any) -> None:
    """Patch spec.iceberg.maintenance of TableArchive `name` (a merge patch: other fields stay)."""
    client.CustomObjectsApi(env.admin_api).patch_namespaced_custom_object(
        "cellar.dev", "v1alpha1", env.namespace, "tablearchives", name, {"spec": {"iceberg": {"maintenance": fields}}}
    )


def load_orders(env: ArchiveEnv) -> Any:
    return iceberg_catalog(env).load_table(("public", "orders"))


def live_data_files(table: Any) -> list[Any]:
    """The data files of the table's current snapshot, as PyIceberg plans a scan of it."""
    return [task.file for task in table.scan().plan_files()]


def referenced_keys(table: Any, bucket: str) -> set[str]:
    """Every key the table's metadata references: metadata files (current and logged), and each snapshot's
    manifest list, manifests and live data files, read with PyIceberg."""
    paths = {table.metadata_location, *(e.metadata_file for e in table.metadata.metadata_log)}
    for snapshot in table.metadata.snapshots:
        paths.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            paths.add(manifest.manifest_path)
            paths |= {e.data_file.file_path for e in manifest.fetch_manifest_entry(table.io, discard_deleted=True)}
    return {str(p).removeprefix(f"s3://{bucket}/") for p in paths}


def stored_keys(env: ArchiveEnv) -> set[str]:
    return {o["Key"] for o in list_all(env.s3, env.bucket, LOCATION)}


def figures_in_pyiceberg(table: Any, snapshot_id: int | None = None) -> tuple[Any, ...]:
    """count, count of distinct ids, sum, min and max of amount, as PyIceberg reads the table."""
    rows = table.scan(snapshot_id=snapshot_id).to_arrow()
    amounts = rows.column("amount")
    extremes = pc.min_max(amounts)
    return (
        rows.num_rows,
        len(set(rows.column("id").to_pylist())),
        pc.sum(amounts).as_py(),
        extremes["min"].as_py(),
        extremes["max"].as_py(),
    )
