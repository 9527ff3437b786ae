"""Restoring as fast as the target allows (DatabaseRestore spec.parallelism): the dump staged on a volume,
its checksum checked, then `pg_restore --jobs`; a volume too small is refused before the download."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.backup_helpers import load_sample_data, schema_of, table_contents
from tests.integration.environments import BackupEnv


def test_a_staged_parallel_restore_equals_the_source(backup_env: BackupEnv, tmp_path: Path) -> None:
    env = backup_env
    load_sample_data(env.stack, env.database)
    env.setup()
    assert env.run() == 0
    staging = tmp_path / "staging"
    staging.mkdir()
    target = f"{env.database['dbname']}_parallel"
    env.create_restore("fast", env.database, target, parallelism=3, staging={"path": str(staging)})
    assert env.run("restore", name="fast") == 0
    message = env.conditions("DatabaseRestore", "fast")["Succeeded"]["message"]
    assert f"pg_restore --jobs=3 from a copy staged in {staging}" in message
    assert table_contents(env.database, target) == table_contents(env.database)
    assert schema_of(env.stack, env.database, target) == schema_of(env.stack, env.database)
    assert list(staging.iterdir()) == []  # the staged copy is gone


@pytest.fixture
def tiny_volume(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs), as a small emptyDir with a sizeLimit would be."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    path = tmp_path / "tiny"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_volume_too_small_is_refused_before_the_download(backup_env: BackupEnv, tiny_volume: Path) -> None:
    env = backup_env
    load_sample_data(env.stack, env.database)
    env.setup()
    assert env.run() == 0
    target = f"{env.database['dbname']}_never"
    env.create_restore("too-small", env.database, target, parallelism=2, staging={"path": str(tiny_volume)})
    assert env.run("restore", name="too-small") == 3
    failed = env.conditions("DatabaseRestore", "too-small")["Succeeded"]
    assert failed["reason"] == "InsufficientSpace"
    assert "free; the staged dump of" in failed["message"]
    assert list(tiny_volume.iterdir()) == []
    status = env.status("DatabaseRestore", "too-small")
    assert "bytesRead" not in status  # nothing was downloaded


def test_parallelism_without_a_volume_is_refused_by_the_api_server(backup_env: BackupEnv) -> None:
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as refused:
        backup_env.create_restore("no-volume", backup_env.database, "x", parallelism=4)
    assert "parallelism above 1 needs staging.path and createDatabase: true" in str(refused.value.body)
