"""The packaging the images rely on: one wheel, installed into a fresh venv of the system Python the way
the Dockerfiles' build stage does, then run from a read-only copy as an arbitrary UID in group 0 (as
OpenShift's restricted SCC runs it), with only /tmp writable: help, and real jobs against the servers."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.harness.cluster import REPO
from tests.integration.archive_helpers import dsn, ids_in_table
from tests.integration.backup_helpers import conditions, get_status
from tests.integration.environments import BackupEnv

SYSTEM_PYTHON = "/usr/bin/python3"
ARBITRARY_UID = 1000770000  # the kind of UID OpenShift assigns, with GID 0


@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    """A read-only install of the project's wheel in a venv of the system Python."""
    if not Path(SYSTEM_PYTHON).exists():
        raise AssertionError(f"{SYSTEM_PYTHON} missing: apt-get install python3 python3-venv")
    root = Path(tempfile.mkdtemp(prefix="cellar-install-", dir="/tmp"))
    root.chmod(0o755)
    try:
        subprocess.run(
            [
                str(REPO / ".venv/bin/python"),
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "-q",
                "-w",
                str(root / "dist"),
                str(REPO),
            ],
            check=True,
        )
        wheels = list((root / "dist").glob("cellar-*.whl"))
        assert len(wheels) == 1, wheels
        venv = root / "app"
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-compile", f"{wheels[0]}[binary]"], check=True)
        subprocess.run([str(venv / "bin/python"), "-m", "compileall", "-q", str(venv)], check=False)
        for path in [venv, *venv.rglob("*")]:  # read-only for everyone, as in an image layer
            if not path.is_symlink():
                mode = path.stat().st_mode
                path.chmod(
                    mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
                    | stat.S_IRGRP
                    | stat.S_IROTH
                    | (stat.S_IXGRP | stat.S_IXOTH if mode & stat.S_IXUSR else 0)
                )
        yield venv
    finally:
        for path in [root, *root.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | stat.S_IWUSR)
        shutil.rmtree(root, ignore_errors=True)


def run_as_arbitrary_user(argv: list[str], workdir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    def drop() -> None:
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(0)
            os.setuid(ARBITRARY_UID)

    environment = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "PYTHONDONTWRITEBYTECODE": "1",
        "CELLAR_TERMINATION_LOG": str(workdir / "termination-log"),
        **env,
    }
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=environment,
        preexec_fn=drop,
        cwd=workdir,
        check=False,
        timeout=300,
    )


@pytest.fixture
def scratch() -> Iterator[Path]:
    """The emptyDir at /tmp: the only place the job may write."""
    path = Path(tempfile.mkdtemp(prefix="cellar-tmp-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def readable(path: Path, scratch: Path) -> Path:
    copy = scratch / path.name
    shutil.copy(path, copy)
    copy.chmod(0o644)
    return copy


def test_entrypoints_start_and_print_help(installed: Path, scratch: Path) -> None:
    for command, expected in (
        ("cellar-backup", "backup   dump the database"),
        ("cellar-archive", "archive    move the rows"),
        ("kubectl-cellar", "Day-two commands for cellar's backups and archives"),  # kubectl finds it on PATH
    ):
        result = run_as_arbitrary_user([str(installed / "bin" / command), "--help"], scratch)
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout
    assert not any(installed.rglob("__pycache__/*.tmp*"))


def test_backup_and_archive_run_from_the_read_only_install(
    installed: Path, scratch: Path, backup_env: BackupEnv
) -> None:
    namespace, admin_api = backup_env.namespace, backup_env.admin_api
    database, storage_spec = backup_env.database, backup_env.storage_spec
    create_resource, job_kubeconfig = backup_env.create_resource, backup_env.job_kubeconfig
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, note text)")
        conn.execute("INSERT INTO orders SELECT g, now() - interval '90 days', 'x' FROM generate_series(1, 500) g")
    backup_env.setup()
    backup = run_as_arbitrary_user(
        [
            str(installed / "bin/cellar-backup"),
            "--kubeconfig",
            str(readable(job_kubeconfig("backup"), scratch)),
            "--namespace",
            namespace,
            "--name",
            "orders",
        ],
        scratch,
    )
    assert backup.returncode == 0, backup.stdout[-2000:] + backup.stderr[-2000:]
    assert conditions(get_status(admin_api, namespace, "databasebackups", "orders"))["Ready"]["status"] == "True"

    create_resource(
        "TableArchive",
        {
            "metadata": {"name": "orders"},
            "spec": {
                "database": {"secretRef": {"name": "cellar-database"}, "sslMode": "disable"},
                "storage": storage_spec,
                "table": {"name": "orders"},
                "timestampColumn": "created_at",
                "olderThan": "30d",
            },
        },
    )
    archive = run_as_arbitrary_user(
        [
            str(installed / "bin/cellar-archive"),
            "--kubeconfig",
            str(readable(job_kubeconfig("archive"), scratch)),
            "--namespace",
            namespace,
            "--name",
            "orders",
        ],
        scratch,
    )
    assert archive.returncode == 0, archive.stdout[-2000:] + archive.stderr[-2000:]
    assert ids_in_table(database) == set()
    assert (scratch / "termination-log").read_text().startswith("500 rows in 1 batches")
