"""Every store cellar writes to, through the same jobs: S3 (MinIO), Azure Blob Storage (Azurite) and Google Cloud
Storage (fake-gcs-server). Each suite runs against each: the store's verbs, an encrypted backup with retention,
list and restores (streamed, staged, partial) read back by a client no one here wrote and stock
`age | zstd | pg_restore`, a whole server with its roles, an archive and its unarchive read by DuckDB, killed
runs that leave nothing half-written, and each provider's failures as cellar's reasons."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from common.errors import Forbidden, PermanentError
from common.reasons import Reason
from common.storage import ObjectStore
from tests.harness.faults import FaultProxy, Request, Respond
from tests.harness.stack import LocalStack, wait_for
from tests.integration.archive_helpers import dsn, ids_in_table, setup_archive
from tests.integration.backup_helpers import load_sample_data, table_contents
from tests.integration.environments import ArchiveEnv, BackupEnv
from tests.integration.processes import run_until_failpoint
from tests.integration.providers import PROVIDERS, SECRET, Provider, azure_provider, gcs_provider, s3_provider
from tests.integration.test_encryption import IDENTITY_SECRET, keypair, stock_restore
from tests.integration.test_globals import superuser
from tests.integration.test_server_backup import catalog, checksums, drop_everything, make_server

INCOMPLETE_AFTER = timedelta(seconds=2)


@pytest.fixture(params=PROVIDERS, ids=["s3", "azure", "gcs"])
def provider(request: pytest.FixtureRequest, stack: LocalStack) -> Provider:
    if request.param == "AzureBlob":
        return azure_provider(request.getfixturevalue("azurite"))
    if request.param == "GCS":
        return gcs_provider(request.getfixturevalue("fake_gcs"))
    return s3_provider(stack)


@pytest.fixture
def on_store(provider: Provider, backup_env: BackupEnv) -> BackupEnv:
    """The backup test's world with its storage in `provider`'s store (the Secret holds that store's key)."""
    backup_env.create_secret(SECRET, provider.secret)
    return dataclasses.replace(backup_env, storage_spec=provider.spec)


@pytest.fixture
def archive_on_store(provider: Provider, archive_env: ArchiveEnv) -> ArchiveEnv:
    archive_env.create_secret(SECRET, provider.secret)
    return dataclasses.replace(archive_env, storage_spec=provider.spec)


def keys_under(store: ObjectStore, *parts: str) -> list[str]:
    return sorted(o.key for o in store.list_objects(store.key(*parts) + "/"))


def wait_until_older(store: ObjectStore, key: str, age: timedelta) -> None:
    """Until the store says `key` was written more than `age` ago (its clock, not a sleep)."""

    def older() -> bool:
        written = next(o.last_modified for o in store.list_objects(key) if o.key == key)
        return datetime.now(UTC) - written > age + timedelta(seconds=1)

    wait_for(f"{key} to grow {age} old", older, None, timeout=age.total_seconds() + 60)


def test_the_store_verbs_on_the_real_service(provider: Provider) -> None:
    store = provider.store()
    store.check_access()
    body = os.urandom(13 * 1024 * 1024 + 17)  # three 5 MiB parts, blocks or chunks
    with store.open_upload(store.key("big.bin")) as upload:
        assert keys_under(store) == []
        for offset in range(0, len(body), 1 << 20):
            upload.write(body[offset : offset + (1 << 20)])
        result = upload.complete()
    assert (result.size, result.sha256, result.parts) == (len(body), hashlib.sha256(body).hexdigest(), 3)
    assert b"".join(store.read_chunks(store.key("big.bin"), 1 << 20)) == body
    assert store.get_range(store.key("big.bin"), 7, 100) == body[7:107]
    assert store.stat(store.key("big.bin")).size == len(body)

    # An upload left without complete() leaves no object behind.
    upload = store.open_upload(store.key("aborted.bin"))
    upload.write(os.urandom(11 * 1024 * 1024))  # two parts sent, one buffered
    upload.__exit__(RuntimeError, RuntimeError("stopped"), None)
    assert keys_under(store) == [store.key("big.bin")]

    store.put_verified(store.key("small.parquet"), b"x" * 1000, hashlib.sha256(b"x" * 1000).hexdigest())
    assert store.get_bytes(store.key("small.parquet")) == b"x" * 1000

    # Conditional writes: one writer wins the creation, and an update needs the version read.
    owner = store.key("owner.json")
    assert store.get_if_exists(owner) is None
    assert store.put_if(owner, b'{"v": 1}', etag=None) is True
    assert store.put_if(owner, b'{"v": 2}', etag=None) is False
    found = store.get_if_exists(owner)
    assert found is not None
    assert found[0] == b'{"v": 1}'
    assert store.put_if(owner, b'{"v": 3}', etag=found[1]) is True
    assert store.put_if(owner, b'{"v": 4}', etag=found[1]) is False
    assert store.get_bytes(owner) == b'{"v": 3}'

    listed = {o.key: o.size for o in store.list_objects(store.key() + "/")}
    assert listed == {store.key("big.bin"): len(body), store.key("small.parquet"): 1000, owner: 8}
    assert store.delete(owner) is None
    assert store.delete(owner) is None  # deleting what is gone is no error
    assert store.get_if_exists(owner) is None


def test_an_encrypted_backup_is_kept_listed_restored_and_read_by_stock_tools(
    provider: Provider, on_store: BackupEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env, database = on_store, on_store.database
    store = provider.store()
    load_sample_data(env.stack, database)
    identity_path, identity, public = keypair(tmp_path, "ops")
    env.create_secret(IDENTITY_SECRET, {"identity.txt": identity})
    crashed = store.key("data", "crashed-long-ago.pgdump.zst.age")
    store.put_bytes(crashed, b"partial")
    wait_until_older(store, crashed, INCOMPLETE_AFTER)
    env.setup(
        encryption={"recipients": [public]},
        retention={"keepLast": 1, "incompleteAfter": f"{INCOMPLETE_AFTER.seconds}s"},
    )
    assert env.run() == 0
    assert env.run() == 0  # keepLast 1: the first backup goes
    status = env.status("DatabaseBackup", "orders")
    backup = status["lastSuccessfulBackup"]
    assert status["backupsKept"] == 1
    assert keys_under(store, "data") == [backup["key"]]  # the crashed run's leftover is gone too
    assert keys_under(store, "manifests") == [backup["manifestKey"]]
    capsys.readouterr()
    assert env.run("list", "-o", "json") == 0
    listed = json.loads(capsys.readouterr().out)["backups"]
    assert [b["key"] for b in listed] == [backup["key"]]

    # The provider's own client downloads the object; stock age, zstd and pg_restore restore it.
    downloaded = tmp_path / "backup.pgdump.zst.age"
    provider.download_foreign(backup["key"], downloaded)
    assert hashlib.sha256(downloaded.read_bytes()).hexdigest() == backup["sha256"]
    by_stock_tools = f"{database['dbname']}_stock"
    with psycopg.connect(env.stack.pg_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {by_stock_tools} OWNER {database['username']}")
    stock_restore(identity_path, downloaded, env.dsn.replace(database["dbname"], by_stock_tools))
    source = table_contents(database)
    assert table_contents(database, by_stock_tools) == source

    decryption = {"identitySecretRef": {"name": IDENTITY_SECRET, "key": "identity.txt"}}
    streamed, staged = f"{database['dbname']}_streamed", f"{database['dbname']}_staged"
    env.create_restore("streamed", database, streamed, decryption=decryption)
    assert env.run("restore", name="streamed") == 0
    assert table_contents(database, streamed) == source
    (tmp_path / "staging").mkdir()
    env.create_restore(
        "staged", database, staged, decryption=decryption, parallelism=2, staging={"path": str(tmp_path / "staging")}
    )
    assert env.run("restore", name="staged") == 0
    assert table_contents(database, staged) == source

    # One table dropped by mistake comes back alone into the live database.
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE sales.orders CASCADE")
    env.create_restore(
        "one-table",
        database,
        database["dbname"],
        createDatabase=False,
        decryption=decryption,
        select={"tables": ["sales.orders", "sales.recent"]},
    )
    assert env.run("restore", name="one-table") == 0
    assert table_contents(database) == source


def test_a_whole_server_with_its_roles_comes_back(provider: Provider, on_store: BackupEnv) -> None:
    server = on_store.stack
    tag = f"st{uuid.uuid4().hex[:6]}"
    roles, databases = make_server(server, tag)
    kept = databases[:3]
    source = superuser(server, "postgres")
    try:
        env = on_store.on(source)
        env.setup(databases={"names": kept}, globals={"enabled": True}, verify={"enabled": True})
        assert env.run() == 0
        last = env.status("DatabaseBackup", "orders")["lastSuccessfulBackup"]
        assert sorted(last["databases"]) == sorted(kept)
        assert last["verified"] is True  # the restore test read it back from the store
        before = catalog(source, roles, kept), {name: checksums(source, name) for name in kept}

        drop_everything(server, roles, databases)
        env.create_restore("rebuild", source, "postgres", globals=True, databases=kept)
        assert env.run("restore", name="rebuild") == 0
        assert (catalog(source, roles, kept), {name: checksums(source, name) for name in kept}) == before
    finally:
        drop_everything(server, roles, databases)


ORDERS = """
CREATE TABLE orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, note text, amount numeric(12,2));
INSERT INTO orders SELECT g, now() - interval '400 days' + g * interval '1 hour', 'old ' || g, g * 1.5
FROM generate_series(1, 1500) g;
INSERT INTO orders SELECT 1000000 + g, now(), 'new', 0 FROM generate_series(1, 10) g;
"""


def test_an_archive_and_its_unarchive(provider: Provider, archive_on_store: ArchiveEnv, tmp_path: Path) -> None:
    env, database = archive_on_store, archive_on_store.database
    store = provider.store()
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute(ORDERS)
        before = [r[0] for r in conn.execute("SELECT x::text FROM orders x WHERE id < 1000000 ORDER BY id")]
    setup_archive(env, batch={"rows": 400, "parallelism": 1})
    # Killed between its uploads and its COMMIT: objects no ledger row describes, which the next run removes.
    job = run_until_failpoint("jobs.archive", env.kubeconfig, env.namespace, "orders", "archive.before-commit")
    job.send_signal(signal.SIGKILL)
    job.wait()
    leftovers = keys_under(store, "public.orders")
    assert leftovers
    assert len(ids_in_table(database)) == 1510  # the batch rolled back

    assert env.run() == 0
    assert ids_in_table(database) == set(range(1000001, 1000011))
    archived = keys_under(store, "public.orders")
    assert set(archived).isdisjoint(leftovers)
    with psycopg.connect(dsn(database)) as conn:
        recorded = {r[0] for r in conn.execute("SELECT object_key FROM cellar.archive_ledger")}
    assert recorded == set(archived)
    assert archived
    assert all(key.endswith(".parquet") for key in archived)
    manifests = [json.loads(store.get_bytes(key)) for key in keys_under(store, "_cellar_manifests", "public.orders")]
    assert sum(m["rows"] for m in manifests) == 1500

    # DuckDB reads the files the provider's own client downloaded, partitions included.
    lake = tmp_path / "lake"
    for key in archived:
        (lake / key).parent.mkdir(parents=True, exist_ok=True)
        provider.download_foreign(key, lake / key)
    count, total = duckdb.connect().execute(
        f"SELECT count(*), sum(amount) FROM read_parquet('{lake}/test/public.orders/*/*.parquet', hive_partitioning=1)"
    ).fetchone() or (0, 0)
    assert (count, str(total)) == (1500, str(sum(g * 1.5 for g in range(1, 1501))) + "0")

    assert env.run("unarchive", "--from", "2000-01-01", "--to", "2100-01-01") == 0
    with psycopg.connect(dsn(database)) as conn:
        assert [r[0] for r in conn.execute("SELECT x::text FROM orders_unarchived x ORDER BY id")] == before


def test_killed_backups_leave_nothing_half_written_and_retention_clears_them(
    provider: Provider, on_store: BackupEnv
) -> None:
    env = on_store
    store = provider.store()
    with psycopg.connect(env.dsn, autocommit=True) as conn:  # about 12 MiB of dump: several parts
        conn.execute(
            "CREATE TABLE blobs AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS body "
            "FROM generate_series(1, 200000) g"
        )
    env.setup(
        compression={"algorithm": "none"}, retention={"keepLast": 3, "incompleteAfter": f"{INCOMPLETE_AFTER.seconds}s"}
    )
    # Killed while the dump streams: no object shows (S3 keeps an open multipart upload, Azure uncommitted
    # blocks, GCS an unfinished session; none is an object).
    job = run_until_failpoint("jobs.backup", env.kubeconfig, env.namespace, "orders", "backup.dump-streaming")
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert keys_under(store, "data") == []
    # Killed after the object, before its manifest: an orphan the next runs see, and delete once it is old.
    job = run_until_failpoint("jobs.backup", env.kubeconfig, env.namespace, "orders", "backup.before-manifest")
    job.send_signal(signal.SIGKILL)
    job.wait()
    (orphan,) = keys_under(store, "data")
    assert keys_under(store, "manifests") == []
    wait_until_older(store, orphan, INCOMPLETE_AFTER)
    for upload in store.pending_uploads(store.key("data") + "/"):
        assert upload.initiated < datetime.now(UTC)  # S3 lists the killed upload; the retention below aborts it
    assert env.run() == 0
    kept = env.status("DatabaseBackup", "orders")["lastSuccessfulBackup"]["key"]
    assert keys_under(store, "data") == [kept]
    if provider.name == "S3":
        assert store.pending_uploads(store.key("data") + "/") == []


def storage_error(provider: Provider, status: int, code: str) -> Respond:
    """An error answer in the provider's own format."""
    if provider.name == "AzureBlob":
        body = f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{code}</Message></Error>'
        return Respond(status, body.encode(), (("Content-Type", "application/xml"), ("x-ms-error-code", code)))
    if provider.name == "GCS":
        error = {"error": {"code": status, "message": code, "errors": [{"reason": code, "message": code}]}}
        return Respond(status, json.dumps(error).encode(), (("Content-Type", "application/json"),))
    body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{code}</Message></Error>'
    return Respond(status, body.encode(), (("Content-Type", "application/xml"),))


THROTTLED = {"S3": (503, "SlowDown"), "AzureBlob": (503, "ServerBusy"), "GCS": (429, "rateLimitExceeded")}


@pytest.fixture
def proxy(provider: Provider) -> Iterator[FaultProxy]:
    upstream = provider.spec.get("endpoint") or (provider.spec.get("azureBlob") or provider.spec["gcs"])["endpoint"]
    server = FaultProxy(upstream.removesuffix("/devstoreaccount1")).start()
    yield server
    server.stop()


def test_throttling_is_retried_and_the_backup_is_whole(
    provider: Provider, on_store: BackupEnv, proxy: FaultProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    env = on_store
    load_sample_data(env.stack, env.database)
    status, code = THROTTLED[provider.name]

    def every_third(request: Request) -> Respond | None:
        return storage_error(provider, status, code) if request.number % 3 == 0 and request.number < 30 else None

    proxy.script = every_third
    env.setup(storage=provider.with_endpoint(proxy.url))
    assert env.run() == 0
    retried = [line for line in capsys.readouterr().out.splitlines() if "storage request failed; retrying" in line]
    assert len(proxy.faults()) >= 3
    assert len(retried) >= len(proxy.faults())
    env.create_restore("after-throttling", env.database, f"{env.database['dbname']}_back")
    assert env.run("restore", name="after-throttling") == 0
    assert table_contents(env.database, f"{env.database['dbname']}_back") == table_contents(env.database)


DENIED = {"S3": (403, "AccessDenied"), "AzureBlob": (403, "AuthenticationFailed"), "GCS": (403, "forbidden")}


def test_a_missing_bucket_and_refused_credentials_are_cellars_reasons(
    provider: Provider, on_store: BackupEnv, proxy: FaultProxy
) -> None:
    env = on_store
    missing = dict(provider.spec)
    block = {"AzureBlob": "azureBlob", "GCS": "gcs"}.get(provider.name)
    if block is None:
        missing["bucket"] = "no-such-bucket-here"
    else:
        missing[block] = {**missing[block], ("container" if block == "azureBlob" else "bucket"): "no-such-bucket-here"}
    with pytest.raises(PermanentError) as raised:
        provider.store(missing).check_access()
    assert raised.value.reason == Reason.BUCKET_NOT_FOUND
    assert "no-such-bucket-here" in str(raised.value)

    status, code = DENIED[provider.name]
    proxy.script = lambda request: storage_error(provider, status, code)
    with pytest.raises(Forbidden) as refused:
        provider.store(provider.with_endpoint(proxy.url)).check_access()
    assert refused.value.reason == Reason.STORAGE_ACCESS_DENIED

    env.setup(storage=missing)
    assert env.run() == 3
    failed = env.conditions("DatabaseBackup", "orders")["BackupSucceeded"]
    assert failed["reason"] == "BucketNotFound"
    assert "no-such-bucket-here" in failed["message"]


def test_a_wrong_azure_account_key_is_refused_by_azurite(
    azurite: Any, backup_env: BackupEnv, create_secret: Callable[[str, dict[str, str]], None]
) -> None:
    """Azurite checks Shared Key signatures: a wrong key is the service's own refusal, not a scripted one."""
    provider = azure_provider(azurite)
    wrong = "A" * 86 + "=="
    create_secret(SECRET, {"AZURE_STORAGE_KEY": wrong})
    env = dataclasses.replace(backup_env, storage_spec=provider.spec)
    env.setup()
    assert env.run() == 3
    failed = env.conditions("DatabaseBackup", "orders")["BackupSucceeded"]
    assert failed["reason"] == "StorageAccessDenied"
    assert "account key" in failed["message"]
    assert wrong not in json.dumps(env.status("DatabaseBackup", "orders"))


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ({"provider": "AzureBlob", "prefix": "p"}, "azureBlob is set exactly when provider is AzureBlob"),
        (
            {
                "provider": "AzureBlob",
                "azureBlob": {
                    "account": "acme1",
                    "container": "backups",
                    "credentials": {"accountKey": {"name": "a", "key": "k"}, "workloadIdentity": True},
                },
            },
            "set exactly one of accountKey, sasToken, workloadIdentity",
        ),
        (
            {"provider": "GCS", "gcs": {"bucket": "b-1", "credentials": {"anonymous": True}}},
            "credentials.anonymous needs endpoint",
        ),
        ({"provider": "S3", "prefix": "p"}, "provider S3 needs bucket and credentials"),
    ],
)
def test_the_api_server_refuses_a_storage_block_that_cannot_work(
    backup_env: BackupEnv, storage: dict[str, Any], message: str
) -> None:
    from kubernetes.client import ApiException

    with pytest.raises(ApiException) as refused:
        backup_env.setup(storage=storage)
    assert refused.value.status == 422
    assert message in str(refused.value.body)


def test_a_container_sas_token_backs_up_and_restores_and_a_narrow_one_is_refused(
    azurite: Any, backup_env: BackupEnv, create_secret: Callable[[str, dict[str, str]], None]
) -> None:
    """The SAS a platform team hands out instead of the account key, checked by Azurite as by Azure."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from tests.harness.emulators import AZURITE_ACCOUNT, AZURITE_KEY

    provider = azure_provider(azurite)

    def sas(**allowed: bool) -> str:
        return generate_container_sas(
            AZURITE_ACCOUNT,
            provider.bucket,
            account_key=AZURITE_KEY,
            permission=ContainerSasPermissions(**allowed),
            expiry=datetime.now(UTC) + timedelta(hours=1),
        )

    full = sas(read=True, add=True, create=True, write=True, delete=True, list=True)
    create_secret(SECRET, {"AZURE_SAS_TOKEN": full})
    storage = dict(provider.spec)
    storage["azureBlob"] = {
        **storage["azureBlob"],
        "credentials": {"sasToken": {"name": SECRET, "key": "AZURE_SAS_TOKEN"}},
    }
    env = dataclasses.replace(backup_env, storage_spec=storage)
    load_sample_data(env.stack, env.database)
    env.setup()
    assert env.run() == 0
    env.create_restore("with-sas", env.database, f"{env.database['dbname']}_sas")
    assert env.run("restore", name="with-sas") == 0
    assert table_contents(env.database, f"{env.database['dbname']}_sas") == table_contents(env.database)
    assert full not in json.dumps(env.status("DatabaseBackup", "orders"))

    create_secret(SECRET, {"AZURE_SAS_TOKEN": sas(read=True, list=True)})  # cannot write
    assert env.run() == 3
    failed = env.conditions("DatabaseBackup", "orders")["BackupSucceeded"]
    assert failed["reason"] == "StorageAccessDenied"
    assert "SAS" in failed["message"]
