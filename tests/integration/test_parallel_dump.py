"""Parallel dumps (issue #39): spec.parallelism dumps with `pg_dump --format=directory --jobs=N` through a
staging directory, one object a file; read back by the stock age, zstd and pg_restore -j with no cellar, by
cellar's restore test, DatabaseRestore (pg_restore -j, and select:) and list; a staging volume too small is
refused before anything runs, and one that fills mid-dump fails the run with nothing published; and
spec.databases.parallelism dumps several databases at once, as many as it says (the server sees them together) and
no more."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jobs.backup.backup.directory import CompletionWatch
from tests.conftest import new_database
from tests.harness.stack import LocalStack, wait_for
from tests.integration.backup_helpers import load_sample_data, schema_of, table_contents
from tests.integration.environments import BackupEnv
from tests.integration.processes import start_job
from tests.integration.test_encryption import IDENTITY_SECRET, keypair
from tests.integration.test_globals import superuser
from tests.integration.test_server_backup import checksums, drop_everything, make_server

pytestmark = pytest.mark.integration


def add_large_tables(database: dict[str, Any], count: int = 3, rows: int = 20_000) -> None:
    """Tables big enough that pg_dump's workers share them (a few MiB each)."""
    dsn = " ".join(
        f"{k}={database[v]}"
        for k, v in (
            ("host", "host"),
            ("port", "port"),
            ("dbname", "dbname"),
            ("user", "username"),
            ("password", "password"),
        )
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        for number in range(1, count + 1):
            conn.execute(f"CREATE TABLE big_{number} (id int PRIMARY KEY, body text)")
            conn.execute(
                f"INSERT INTO big_{number} SELECT g, md5(g::text) || repeat(md5(random()::text), 4) "
                f"FROM generate_series(1, {rows}) g"
            )


def objects_under(env: BackupEnv, prefix: str) -> dict[str, bytes]:
    listed = env.s3.list_objects_v2(Bucket=env.bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: env.s3.get_object(Bucket=env.bucket, Key=o["Key"])["Body"].read() for o in listed}


def stock_directory_restore(
    env: BackupEnv, manifest: dict[str, Any], identity: Path | None, work: Path, dsn: str
) -> None:
    """The guide's restore with no cellar: download the folder, `age -d` (an encrypted backup: `identity` given)
    and `zstd -d` each file, `pg_restore -j 2` the directory. Each tool is the stock one."""
    downloaded, directory = work / "downloaded", work / "dump"
    downloaded.mkdir()
    directory.mkdir()
    for key, body in objects_under(env, manifest["dataKey"]).items():
        (downloaded / key.rsplit("/", 1)[-1]).write_bytes(body)
    for file in downloaded.iterdir():
        compressed = directory / file.name.removesuffix(".age")
        if identity is None:
            file.rename(compressed)
        else:
            subprocess.run(["age", "-d", "-i", str(identity), "-o", str(compressed), str(file)], check=True)
        subprocess.run(["zstd", "-d", "-q", "--rm", str(compressed)], check=True)
    restored = subprocess.run(
        ["pg_restore", "-j", "2", "--no-owner", "-d", dsn, str(directory)], capture_output=True, text=True
    )
    assert restored.returncode == 0, restored.stderr


def test_a_parallel_backup_is_a_directory_read_by_stock_tools_and_by_cellar(
    backup_env: BackupEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env, database = backup_env, backup_env.database
    load_sample_data(env.stack, database)
    add_large_tables(database)
    identity_path, identity, public = keypair(tmp_path, "ops")
    env.create_secret(IDENTITY_SECRET, {"identity.txt": identity})
    staging = tmp_path / "staging"
    staging.mkdir()
    env.setup(
        parallelism=3,
        staging={"path": str(staging)},
        encryption={"recipients": [public], "identitySecretRef": {"name": IDENTITY_SECRET, "key": "identity.txt"}},
        verify={"enabled": True},
    )
    assert env.run() == 0
    status = env.status("DatabaseBackup", "orders")
    found = {c["type"]: c for c in status["conditions"]}
    assert found["Verified"]["reason"] == "RestoreTestPassed"
    last = status["lastSuccessfulBackup"]
    assert last["key"].endswith(".dir/")
    manifest = json.loads(env.s3.get_object(Bucket=env.bucket, Key=last["manifestKey"])["Body"].read())
    assert manifest["formatVersion"] == 4
    assert manifest["format"] == "directory"
    names = {f["name"] for f in manifest["files"]}
    assert "toc.dat" in names
    assert len([n for n in names if n.endswith(".dat") and n != "toc.dat"]) >= 6  # a file per table's data
    stored = objects_under(env, manifest["dataKey"])
    assert set(stored) == {f["key"] for f in manifest["files"]}  # every object listed, nothing else
    for described in manifest["files"]:
        body = stored[described["key"]]
        assert described["key"].endswith(".zst.age")
        assert body.startswith(b"age-encryption.org/v1\n")
        assert (hashlib.sha256(body).hexdigest(), len(body)) == (described["sha256"], described["bytesStored"])
    assert sum(f["bytesStored"] for f in manifest["files"]) == manifest["bytesStored"] == last["sizeBytes"]
    # Staging held a window of the dump and is empty again.
    assert [p for p in staging.rglob("*") if p.is_file()] == []

    # With no cellar: the stock age, zstd and pg_restore -j.
    by_hand = f"{database['dbname']}_by_hand"
    with psycopg.connect(env.stack.pg_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{by_hand}" OWNER "{database["username"]}"')
    stock_directory_restore(env, manifest, identity_path, tmp_path, env.on({**database, "dbname": by_hand}).dsn)
    original = table_contents(database)
    assert table_contents(database, by_hand) == original
    assert len(original["public.big_1"]) == 20_000

    # Through a DatabaseRestore with pg_restore -j 2 from the staged directory.
    decryption = {"decryption": {"identitySecretRef": {"name": IDENTITY_SECRET, "key": "identity.txt"}}}
    restored = f"{database['dbname']}_restored"
    env.create_restore("fast", database, restored, parallelism=2, staging={"path": str(staging)}, **decryption)
    assert env.run("restore", name="fast") == 0
    message = env.conditions("DatabaseRestore", "fast")["Succeeded"]["message"]
    assert f"pg_restore --jobs=2 from the directory staged in {staging}" in message
    assert table_contents(database, restored) == original
    assert schema_of(env.stack, database, restored) == schema_of(env.stack, database)
    assert [p for p in staging.rglob("*") if p.is_file()] == []

    # A partial restore (select:) reads the directory's table of contents.
    part = f"{database['dbname']}_part"
    env.create_restore(
        "part", database, part, staging={"path": str(staging)}, select={"tables": ["public.big_2"]}, **decryption
    )
    assert env.run("restore", name="part") == 0
    assert set(table_contents(database, part)) == {"public.big_2"}
    assert table_contents(database, part)["public.big_2"] == original["public.big_2"]

    # Without staging, the restore says what to set before it writes anything.
    env.create_restore("no-staging", database, f"{database['dbname']}_never", **decryption)
    assert env.run("restore", name="no-staging") == 3
    refused = env.conditions("DatabaseRestore", "no-staging")["Succeeded"]
    assert refused["reason"] == "InvalidSpec"
    assert "is a directory dump" in refused["message"]
    assert "spec.staging.path" in refused["message"]
    assert "bytesRead" not in env.status("DatabaseRestore", "no-staging")

    # list shows it, with its files.
    capsys.readouterr()
    assert env.run("list", "-o", "json") == 0
    listed = json.loads(capsys.readouterr().out)["backups"]
    assert listed[0]["files"] == len(manifest["files"])


def test_retention_deletes_every_file_of_a_directory_backup(backup_env: BackupEnv, tmp_path: Path) -> None:
    env = backup_env
    load_sample_data(env.stack, env.database)
    env.setup(parallelism=2, staging={"path": str(tmp_path)}, retention={"keepLast": 1})
    assert env.run() == 0
    first = json.loads(
        env.s3.get_object(
            Bucket=env.bucket, Key=env.status("DatabaseBackup", "orders")["lastSuccessfulBackup"]["manifestKey"]
        )["Body"].read()
    )
    assert objects_under(env, first["dataKey"])
    assert env.run() == 0
    assert objects_under(env, first["dataKey"]) == {}  # every file of the older backup went
    last = env.status("DatabaseBackup", "orders")["lastSuccessfulBackup"]
    assert last["key"] != first["dataKey"]
    assert env.status("DatabaseBackup", "orders")["backupsKept"] == 1


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB filesystem (tmpfs), as a small emptyDir with a sizeLimit would be."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    path = tmp_path / "small"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_staging_that_fills_mid_dump_publishes_nothing_and_a_small_one_is_refused_up_front(
    backup_env: BackupEnv, small_volume: Path, tmp_path: Path
) -> None:
    env, database = backup_env, backup_env.database
    add_large_tables(database, count=2, rows=60_000)  # about 10 MiB a table: more than the volume holds
    env.setup(parallelism=2, staging={"path": str(small_volume)})
    assert env.run() == 3
    failed = env.conditions("DatabaseBackup", "orders")["BackupSucceeded"]
    assert failed["reason"] == "InsufficientSpace"
    assert "staging volume" in failed["message"]
    assert "staging.sizeLimit" in failed["message"]
    assert published(env) == []  # no manifest, no file of the failed run
    assert not [
        k for k in objects_under(env, "") if k.endswith("cellar-owner.json")
    ]  # a failed first run claims nothing
    assert [p for p in small_volume.rglob("*") if p.is_file()] == []  # staging emptied

    # A good backup through a large volume; then the small one is refused before anything runs.
    big = tmp_path / "big"
    big.mkdir()
    replace_spec(env, {"staging": {"path": str(big)}})
    assert env.run() == 0
    before = objects_under(env, "")
    replace_spec(env, {"staging": {"path": str(small_volume)}})
    assert env.run() == 3
    refused = env.conditions("DatabaseBackup", "orders")["BackupSucceeded"]
    assert refused["reason"] == "InsufficientSpace"
    assert "less than the" in refused["message"]
    assert "the newest backup" in refused["message"]
    assert objects_under(env, "") == before  # nothing written, the previous backup kept


def published(env: BackupEnv) -> list[str]:
    """The data objects and manifests in the bucket."""
    return [k for k in objects_under(env, "") if re.search(r"(^|/)(data|manifests)/", k)]


def replace_spec(env: BackupEnv, change: dict[str, Any]) -> None:
    from kubernetes import client

    client.CustomObjectsApi(env.admin_api).patch_namespaced_custom_object(
        "cellar.dev", "v1alpha1", env.namespace, "databasebackups", "orders", {"spec": change}
    )


def test_parallelism_below_one_or_without_staging_is_refused_by_the_api_server(backup_env: BackupEnv) -> None:
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as low:
        backup_env.setup(name="zero", parallelism=0, staging={"path": "/staging"})
    assert "spec.parallelism" in str(low.value.body)
    with pytest.raises(ApiException) as bare:
        backup_env.setup(name="bare", parallelism=2)
    assert "parallelism above 1 needs staging.path" in str(bare.value.body)
    with pytest.raises(ApiException) as databases:
        backup_env.setup(name="dbs", databases={"all": True, "parallelism": 0})
    assert "spec.databases.parallelism" in str(databases.value.body)


def test_several_databases_are_dumped_at_once(backup_env: BackupEnv, tmp_path: Path) -> None:
    tag = f"par{uuid.uuid4().hex[:6]}"
    roles, databases = make_server(backup_env.stack, tag)
    source = superuser(backup_env.stack, "postgres")
    try:
        env = backup_env.on(source)
        names = databases[:3]
        env.setup(databases={"names": names, "parallelism": 2}, verify={"enabled": True})
        assert env.run() == 0
        last = env.status("DatabaseBackup", "orders")["lastSuccessfulBackup"]
        assert last["databases"] == names  # the manifest keeps the order asked, whichever ended first
        assert last["verified"] is True
        manifest = json.loads(env.s3.get_object(Bucket=env.bucket, Key=last["manifestKey"])["Body"].read())
        dumps = {d["database"]: d for d in manifest["databases"]}
        assert {t["name"]: t["rows"] for t in dumps[f"{tag}_app"]["tables"]} == {"customers": 300, "notes": 900}
        before = {name: checksums(source, name) for name in names}

        # And as directories, two databases at once, each with pg_dump -j 2.
        replace_spec(env, {"parallelism": 2, "staging": {"path": str(tmp_path)}})
        assert env.run() == 0
        last = env.status("DatabaseBackup", "orders")["lastSuccessfulBackup"]
        manifest = json.loads(env.s3.get_object(Bucket=env.bucket, Key=last["manifestKey"])["Body"].read())
        assert all(d["format"] == "directory" for d in manifest["databases"])
        drop_everything(env.stack, [], names)
        env.create_restore("all", source, "postgres", databases=names, parallelism=2, staging={"path": str(tmp_path)})
        assert env.run("restore", name="all") == 0
        assert {name: checksums(source, name) for name in names} == before
    finally:
        drop_everything(backup_env.stack, roles, databases)


HELD = "FAILPOINT backup.dump-streaming"


class DumpSessions:
    """Which of `databases` have a pg_dump session on the server, sampled from start() to stop()
    (pg_stat_activity: cellar names pg_dump's sessions cellar-backup-pg_dump)."""

    def __init__(self, server_dsn: str, databases: list[str]) -> None:
        self.server_dsn = server_dsn
        self.databases = databases
        self.samples: list[frozenset[str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def now(self, conn: psycopg.Connection[Any] | None = None) -> frozenset[str]:
        query = (
            "SELECT datname FROM pg_stat_activity WHERE application_name = 'cellar-backup-pg_dump' "
            "AND datname = ANY(%s)"
        )
        if conn is None:
            with psycopg.connect(self.server_dsn, autocommit=True) as own:
                return self.now(own)
        return frozenset(str(row[0]) for row in conn.execute(query, (self.databases,)).fetchall())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> int:
        """The most databases seen dumping at once."""
        self._stop.set()
        self._thread.join(timeout=60)
        assert self.samples, "no sample was taken"
        return max(len(sample) for sample in self.samples)

    def _sample(self) -> None:
        with psycopg.connect(self.server_dsn, autocommit=True) as conn:
            while not self._stop.wait(0.02):
                self.samples.append(self.now(conn))


@pytest.mark.parametrize("at_once", [1, 2])
def test_databases_parallelism_dumps_that_many_databases_at_once_and_never_more(
    backup_env: BackupEnv, tmp_path: Path, at_once: int
) -> None:
    """Each dump holds at its first bytes (a failpoint) until the test lets them go: with
    databases.parallelism N, N dumps of different databases are held together, each pg_dump in its COPY on the
    server, and the server never sees more than N at once; the backup then lists and restores every database."""
    tag = f"ovl{uuid.uuid4().hex[:6]}"
    names = [f"{tag}_{letter}" for letter in "abc"]
    source = superuser(backup_env.stack, "postgres")
    with psycopg.connect(backup_env.stack.pg_dsn(), autocommit=True) as conn:
        for name in names:
            conn.execute(f"CREATE DATABASE {name}")
    try:
        for name in names:
            add_large_tables({**source, "dbname": name}, count=1)  # a few MiB: pg_dump blocks on its full pipe
        before = {name: checksums(source, name) for name in names}
        env = backup_env.on(source)
        env.setup(databases={"names": names, "parallelism": at_once})
        sessions = DumpSessions(env.stack.pg_dsn(), names)
        sessions.start()
        try:
            release = tmp_path / "release"
            failpoint = f"backup.dump-streaming=wait-for:{release}"
            job = start_job("jobs.backup", env.kubeconfig, env.namespace, "orders", failpoint=failpoint)
            try:
                job.wait_for_line(HELD)
                wait_for(
                    f"{at_once} dumps held at once",
                    lambda: job.count(HELD) == at_once and len(sessions.now()) == at_once,
                    None,
                    timeout=120,
                )
            finally:
                release.touch()  # a failed wait above must not leave the run held for ever
            assert job.wait(timeout=600) == 0, job.communicate()[1][-2000:]
        finally:
            most = sessions.stop()
        assert most == at_once

        last = env.status("DatabaseBackup", "orders")["lastSuccessfulBackup"]
        assert last["databases"] == names
        manifest = json.loads(env.s3.get_object(Bucket=env.bucket, Key=last["manifestKey"])["Body"].read())
        assert {d["database"]: [t["rows"] for t in d["tables"]] for d in manifest["databases"]} == {
            name: [20_000] for name in names
        }
        drop_everything(env.stack, [], names)
        env.create_restore("all", source, "postgres", databases=names)
        assert env.run("restore", name="all") == 0
        assert {name: checksums(source, name) for name in names} == before
    finally:
        drop_everything(backup_env.stack, [], names)


def test_a_file_is_complete_once_no_process_of_the_tree_holds_it_and_its_size_held(tmp_path: Path) -> None:
    """The rule the uploads follow, against real processes: a file a grandchild holds open is never taken; one
    closed is taken at the second poll that finds it unchanged."""
    directory = tmp_path / "dump"
    directory.mkdir()
    (directory / "closed.dat").write_bytes(b"x" * 100)
    held = directory / "held.dat"
    script = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        '\'import sys; f = open(sys.argv[1], "ab"); f.write(b"y"); f.flush(); print("open", flush=True); '
        "sys.stdin.readline(); f.close()', sys.argv[1]], stdin=sys.stdin, stdout=sys.stdout)\n"
        "sys.exit(child.wait())\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(held)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    assert parent.stdin is not None
    try:
        assert parent.stdout.readline().strip() == "open"  # the grandchild holds held.dat open
        watch = CompletionWatch(directory, parent.pid)
        assert watch.complete() == []  # first sight of closed.dat: not yet
        assert watch.complete() == [directory / "closed.dat"]
        (directory / "toc.dat").write_bytes(b"t")
        assert directory / "held.dat" not in watch.complete() + watch.complete()
        assert directory / "toc.dat" not in watch.complete()  # toc.dat only after pg_dump exits
        parent.stdin.write("\n")
        parent.stdin.flush()
        assert parent.wait(timeout=30) == 0
        watch.complete()
        assert directory / "held.dat" in watch.complete()
    finally:
        if parent.poll() is None:
            parent.terminate()
            parent.wait(timeout=10)


def test_every_file_of_a_directory_backup_is_locked_and_retention_keeps_it(
    backup_env: BackupEnv, tmp_path: Path
) -> None:
    from botocore.exceptions import ClientError

    from tests.integration.test_object_lock import versions, with_locked_bucket

    env = with_locked_bucket(backup_env)
    load_sample_data(env.stack, env.database)
    env.setup(
        storage=env.storage_spec,
        parallelism=2,
        staging={"path": str(tmp_path)},
        retention={"keepLast": 1, "incompleteAfter": "1s"},
    )
    assert env.run() == 0
    first = env.status("DatabaseBackup", "orders")["lastSuccessfulBackup"]
    files = versions(env, first["key"])
    assert len(files) >= 3
    for listed in files:
        head = env.s3.head_object(Bucket=env.bucket, Key=listed["Key"], VersionId=listed["VersionId"])
        assert head["ObjectLockMode"] == "GOVERNANCE"
        with pytest.raises(ClientError):
            env.s3.delete_object(Bucket=env.bucket, Key=listed["Key"], VersionId=listed["VersionId"])
    # keepLast 1 lets the first backup go; its files' locks hold it, and the run says so.
    assert env.run() == 0
    status = env.status("DatabaseBackup", "orders")
    assert "by object lock" in status["lastRun"]["message"]
    assert status["backupsKept"] == 2
    assert {v["Key"] for v in versions(env, first["key"])} == {v["Key"] for v in files}


@pytest.mark.parametrize("major", [14, 18])
def test_a_parallel_backup_on_the_oldest_and_newest_majors_restores_with_their_tools(
    major: int,
    pg_servers: Callable[[int], LocalStack],
    matrix_client_tools: str,
    monkeypatch: pytest.MonkeyPatch,
    backup_env: BackupEnv,
    tmp_path: Path,
) -> None:
    """pg_dump -j needs a 9.3 server (synchronized snapshots on a standby from 10): every major cellar supports has
    it, so none is refused; the oldest and the newest dump and restore in parallel with their own tools."""
    monkeypatch.setenv("CELLAR_PG_BINDIR", matrix_client_tools)
    server = pg_servers(major)
    database = new_database(server)
    env = backup_env.on(database)
    load_sample_data(server, database)
    add_large_tables(database, count=2, rows=5_000)
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute(TRICKY_TABLES)  # counted in the files of these majors' pg_dump; the restore test compares
    env.setup(parallelism=2, staging={"path": str(tmp_path)}, verify={"enabled": True})
    assert env.run() == 0
    status = env.status("DatabaseBackup", "orders")
    assert status["lastSuccessfulBackup"]["key"].endswith(".dir/")
    assert f"pg_dump {major}." in status["lastRun"]["message"]
    assert env.conditions("DatabaseBackup", "orders")["Verified"]["reason"] == "RestoreTestPassed"
    manifest = json.loads(
        env.s3.get_object(Bucket=env.bucket, Key=status["lastSuccessfulBackup"]["manifestKey"])["Body"].read()
    )
    counts = {t["name"]: t["rows"] for t in manifest["tables"]}
    assert [counts[t] for t in ("tricky", "lone", "nothing", "animal", "big_1")] == [8, 2, 0, 3, 5_000]
    restored = f"{database['dbname']}_j2"
    env.create_restore("back", database, restored, parallelism=2, staging={"path": str(tmp_path)})
    assert env.run("restore", name="back") == 0
    assert table_contents(database, restored) == table_contents(database)


# Values COPY text must escape, and a lone `\.` (COPY's end-of-data marker when unescaped) as a row of its own.
TRICKY_TABLES = """
CREATE TABLE tricky (id int, body text);
INSERT INTO tricky VALUES (1, E'two\\nlines'), (2, E'a\\ttab'), (3, E'back\\\\slash'), (4, '\\.'),
    (5, E'\\\\.\\n\\\\.\\n'), (6, ''), (7, NULL), (8, E'\\r\\n\\\\.');
CREATE TABLE lone (body text);
INSERT INTO lone VALUES (''), ('\\.');
CREATE TABLE nothing (id int);
CREATE TABLE skipped (id int);
INSERT INTO skipped SELECT generate_series(1, 5);
CREATE TABLE measured (id int, body text) PARTITION BY RANGE (id);
CREATE TABLE measured_low PARTITION OF measured FOR VALUES FROM (0) TO (100);
CREATE TABLE measured_high PARTITION OF measured FOR VALUES FROM (100) TO (1000);
INSERT INTO measured SELECT g, E'row\\n' || g FROM generate_series(1, 250) g;
CREATE TABLE animal (id int);
CREATE TABLE dog (name text) INHERITS (animal);
INSERT INTO animal VALUES (1);
INSERT INTO dog VALUES (2, E'rex\\n\\\\.'), (3, 'fido');
"""
SCANNED = ("tricky", "lone", "nothing", "measured_low", "measured_high", "animal", "dog")


def scans(dsn: str) -> dict[str, int]:
    """Sequential scans of each table so far (a fresh session: the statistics are read anew)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT relname, seq_scan + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = ANY(%s)",
            (list(SCANNED),),
        ).fetchall()
    return {str(name): int(count) for name, count in rows}


def test_a_parallel_backup_counts_the_rows_in_its_files_not_by_reading_the_tables_again(
    backup_env: BackupEnv, tmp_path: Path
) -> None:
    """The manifest's counts are the rows pg_dump wrote, counted in its files: exact whatever the values hold, and
    what the stock pg_restore brings back; each table is read once, by pg_dump (no count(*) beside it)."""
    env, database = backup_env, backup_env.database
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute(TRICKY_TABLES)
    before = scans(env.dsn)  # nothing has read the new tables (inserts are no scans)
    identity_path, identity, public = keypair(tmp_path, "ops")
    env.create_secret(IDENTITY_SECRET, {"identity.txt": identity})
    staging = tmp_path / "staging"
    staging.mkdir()
    env.setup(
        parallelism=2,
        staging={"path": str(staging)},
        dump={"excludeTableData": ["public.skipped"]},
        encryption={"recipients": [public], "identitySecretRef": {"name": IDENTITY_SECRET, "key": "identity.txt"}},
        verify={"enabled": True},
    )
    assert env.run() == 0
    assert env.conditions("DatabaseBackup", "orders")["Verified"]["reason"] == "RestoreTestPassed"
    last = env.status("DatabaseBackup", "orders")["lastSuccessfulBackup"]
    manifest = json.loads(env.s3.get_object(Bucket=env.bucket, Key=last["manifestKey"])["Body"].read())
    counts = {f"{t['schema']}.{t['name']}": t["rows"] for t in manifest["tables"]}

    # pg_dump read each table once; the backup's own count(*) would have been a second scan.
    wait_for("pg_dump's scans in the statistics", lambda: all(scans(env.dsn)[t] > before[t] for t in SCANNED), None)
    assert {t: scans(env.dsn)[t] - before[t] for t in SCANNED} == dict.fromkeys(SCANNED, 1)

    with psycopg.connect(env.dsn) as conn:
        expected = {
            f"public.{name}": int(conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0])  # type: ignore[index]
            for name in SCANNED
        }
    assert (expected["public.tricky"], expected["public.lone"], expected["public.animal"]) == (8, 2, 3)
    # count_rows' list: plain tables and partitions (not the partitioned parent), the excluded one with 0 rows;
    # an inheritance parent counts its children's rows as count(*) does.
    assert counts == {**expected, "public.skipped": 0}
    assert [(t["schema"], t["name"]) for t in manifest["tables"]] == sorted(
        ("public", name.removeprefix("public.")) for name in counts
    )
    assert manifest["countsInDumpSnapshot"] is True

    # The stock pg_restore brings back the rows the manifest counted.
    by_hand = f"{database['dbname']}_counted"
    with psycopg.connect(env.stack.pg_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{by_hand}" OWNER "{database["username"]}"')
    restored_dsn = env.on({**database, "dbname": by_hand}).dsn
    stock_directory_restore(env, manifest, identity_path, tmp_path, restored_dsn)
    with psycopg.connect(restored_dsn) as conn:
        restored = {
            name: int(conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0])  # type: ignore[index]
            for name in counts
        }
    assert restored == counts
    assert table_contents(database, by_hand)["public.tricky"] == table_contents(database)["public.tricky"]
