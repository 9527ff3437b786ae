from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

import pytest

from common.errors import InvalidSpec, UsageError
from common.invocation import add_invocation_arguments, resolve_invocation
from common.secrets import resolve_database
from common.spec import DatabaseSpec, SpecReader, parse_duration
from common.storage_spec import StorageSpec


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("26h", timedelta(hours=26)),
        ("400d", timedelta(days=400)),
        ("2w", timedelta(weeks=2)),
        ("1h30m", timedelta(minutes=90)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text, "spec.x") == expected


@pytest.mark.parametrize("text", ["", "1y", "h", "1.5h", "10", "-1d", "1d "])
def test_bad_durations_name_the_field(text: str) -> None:
    with pytest.raises(InvalidSpec, match=r"^spec\.retention\.maxAge: .* is not a duration; write it like"):
        parse_duration(text, "spec.retention.maxAge")


def _database_spec(**overrides: Any) -> DatabaseSpec:
    return DatabaseSpec.parse(SpecReader({"secretRef": {"name": "db"}, **overrides}, "spec.database"))


def test_database_from_cloudnativepg_style_secret() -> None:
    settings = resolve_database(
        _database_spec(),
        {"host": "pg-rw", "port": "5433", "dbname": "app", "username": "app", "password": "pw", "user": "x"},
    )
    assert (settings.host, settings.port, settings.dbname, settings.user, settings.password) == (
        "pg-rw",
        5433,
        "app",
        "app",
        "pw",
    )
    assert settings.ssl_mode == "prefer"
    assert "pw" not in settings.describe()


def test_database_from_uri_and_spec_overrides() -> None:
    settings = resolve_database(
        _database_spec(dbname="other", sslMode="require"), {"uri": "postgresql://app:p%40ss@pg-rw:5432/app"}
    )
    assert (settings.host, settings.dbname, settings.user, settings.password, settings.ssl_mode) == (
        "pg-rw",
        "other",
        "app",
        "p@ss",
        "require",
    )


def test_zalando_style_secret_needs_host_from_the_spec() -> None:
    with pytest.raises(InvalidSpec, match='Secret "db" lacks host, dbname'):
        resolve_database(_database_spec(), {"username": "u", "password": "p"})
    settings = resolve_database(_database_spec(host="acid-main", dbname="app"), {"username": "u", "password": "p"})
    assert settings.port == 5432


def test_database_spec_errors() -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.database\.secretRef: required"):
        DatabaseSpec.parse(SpecReader({}, "spec.database"))
    with pytest.raises(InvalidSpec, match=r"spec\.database\.sslMode: 'maybe' is not one of disable"):
        _database_spec(sslMode="maybe")
    with pytest.raises(InvalidSpec, match="key port is not a TCP port number"):
        resolve_database(
            _database_spec(), {"host": "h", "dbname": "d", "username": "u", "password": "p", "port": "http"}
        )


STORAGE = {
    "bucket": "backups",
    "credentials": {"accessKeyId": {"name": "s", "key": "id"}, "secretAccessKey": {"name": "s", "key": "key"}},
}


def test_storage_defaults() -> None:
    spec = StorageSpec.parse(SpecReader(STORAGE, "spec.storage"))
    assert (spec.region, spec.prefix, spec.max_parts, spec.part_size, spec.checksum_when_required) == (
        "us-east-1",
        "",
        10000,
        8 * 1024 * 1024,
        False,
    )
    assert [r.name for r in spec.secret_refs()] == ["s", "s"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bucket": "Bad_Bucket"}, r"spec\.storage\.bucket: 'Bad_Bucket' does not match"),
        ({"credentials": {}}, r"spec\.storage\.credentials: set both accessKeyId and secretAccessKey"),
        ({"serverSideEncryption": {"algorithm": "AES256", "kmsKeyId": "k"}}, "only allowed with algorithm aws:kms"),
        ({"endpoint": "minio:9000"}, "must be an http:// or https:// URL"),
        ({"endpointCA": {"name": "ca", "key": "ca.crt"}, "insecureSkipTLSVerify": True}, "exclude each other"),
        ({"maxParts": 0}, r"spec\.storage\.maxParts: 0 is below the minimum 1"),
        ({"partSizeMiB": 2}, r"spec\.storage\.partSizeMiB: 2 is below the minimum 5"),
        ({"forcePathStyle": "yes"}, r"spec\.storage\.forcePathStyle: must be true or false"),
    ],
)
def test_storage_errors_name_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        StorageSpec.parse(SpecReader({**STORAGE, **change}, "spec.storage"))


def test_iam_role_needs_no_keys() -> None:
    spec = StorageSpec.parse(SpecReader({"bucket": "b-1", "credentials": {"inheritFromIAMRole": True}}, "s"))
    assert spec.inherit_from_iam_role
    assert spec.secret_refs() == []


AZURE = {
    "provider": "AzureBlob",
    "prefix": "team/orders",
    "azureBlob": {
        "account": "acme1",
        "container": "backups",
        "credentials": {"accountKey": {"name": "az", "key": "k"}},
    },
}
GCS = {
    "provider": "GCS",
    "gcs": {"bucket": "acme_backups", "credentials": {"serviceAccountKey": {"name": "gcs", "key": "key.json"}}},
}


def test_azure_and_gcs_specs_read_their_blocks() -> None:
    azure = StorageSpec.parse(SpecReader(AZURE, "spec.storage"))
    assert (azure.provider, azure.bucket, azure.prefix) == ("AzureBlob", "backups", "team/orders")
    assert azure.azure_blob is not None
    assert azure.azure_blob.endpoint == "https://acme1.blob.core.windows.net"
    assert [(r.name, r.field) for r in azure.secret_refs()] == [("az", "spec.storage.azureBlob.credentials.accountKey")]
    gcs = StorageSpec.parse(SpecReader(GCS, "spec.storage"))
    assert (gcs.provider, gcs.bucket, gcs.gcs and gcs.gcs.endpoint) == ("GCS", "acme_backups", None)
    assert [r.name for r in gcs.secret_refs()] == ["gcs"]
    # What the API server fills in for S3's fields (their defaults) is no setting of another provider.
    defaulted = {**GCS, "region": "us-east-1", "forcePathStyle": False, "maxParts": 10000, "partSizeMiB": 16}
    assert StorageSpec.parse(SpecReader(defaulted, "spec.storage")).part_size == 16 * 1024 * 1024
    identity = {**GCS, "gcs": {"bucket": "b-1", "credentials": {"workloadIdentity": True, "anonymous": False}}}
    assert StorageSpec.parse(SpecReader(identity, "spec.storage")).secret_refs() == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {**AZURE, "bucket": "backups"},
            r"spec\.storage\.bucket: not a setting of provider AzureBlob; its settings go in",
        ),
        ({**AZURE, "region": "eu-west-1"}, r"spec\.storage\.region: not a setting of provider AzureBlob"),
        ({**AZURE, "objectLock": {"mode": "Governance", "retainFor": "7d"}}, "immutability polic"),
        ({**AZURE, "gcs": GCS["gcs"]}, r"spec\.storage\.gcs: not a setting of provider AzureBlob"),
        ({**STORAGE, "gcs": GCS["gcs"]}, r"spec\.storage\.gcs: only with provider: GCS"),
        ({"provider": "AzureBlob"}, r"spec\.storage\.azureBlob: required"),
        ({**AZURE, "provider": "Azure"}, r"'Azure' is not one of S3, AzureBlob, GCS"),
        (
            {**AZURE, "azureBlob": {**AZURE["azureBlob"], "account": "Acme-1"}},  # type: ignore[dict-item]
            r"azureBlob\.account: 'Acme-1' does not match",
        ),
        (
            {**AZURE, "azureBlob": {"account": "acme1", "container": "c-1", "credentials": {}}},
            r"azureBlob\.credentials: set exactly one of accountKey, sasToken, workloadIdentity \(found none\)",
        ),
        (
            {
                **AZURE,
                "azureBlob": {
                    "account": "acme1",
                    "container": "c-1",
                    "credentials": {"accountKey": {"name": "a", "key": "k"}, "workloadIdentity": True},
                },
            },
            r"set exactly one of .* \(found accountKey, workloadIdentity\)",
        ),
        ({**GCS, "gcs": {"bucket": "b-1", "credentials": {"anonymous": True}}}, r"anonymous: only with .*endpoint"),
        ({**GCS, "gcs": {"bucket": "b-1", "endpoint": "gcs:4443", "credentials": {"anonymous": True}}}, "http://"),
    ],
)
def test_provider_errors_name_the_field_and_the_fix(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        StorageSpec.parse(SpecReader(spec, "spec.storage"))


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_invocation_arguments(parser)
    return parser.parse_args(list(argv))


def test_invocation_from_flags_then_env() -> None:
    assert resolve_invocation(_args("--name", "a", "--namespace", "n"), {}).name == "a"
    invocation = resolve_invocation(_args(), {"CELLAR_RESOURCE_NAME": "b", "CELLAR_NAMESPACE": "m"})
    assert (invocation.name, invocation.namespace, invocation.dry_run) == ("b", "m", False)
    assert resolve_invocation(_args("--name", "x"), {"POD_NAMESPACE": "from-downward-api"}).namespace == (
        "from-downward-api"
    )


def test_invocation_errors_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="pass --name or set CELLAR_RESOURCE_NAME"):
        resolve_invocation(_args("--namespace", "n"), {})
    with pytest.raises(UsageError, match="is not a valid Kubernetes name"):
        resolve_invocation(_args("--name", "Bad_Name", "--namespace", "n"), {})


POSITIVE_DURATIONS = [
    ("DatabaseBackup", ("staleAfter",)),
    ("DatabaseBackup", ("retention", "incompleteAfter")),
    ("DatabaseBackup", ("retention", "maxAge")),
    ("DatabaseBackup", ("storage", "objectLock", "retainFor")),
    ("TableArchive", ("maxRunTime",)),
]
ZERO_MEANS_SOMETHING = [
    ("lockTimeout", "lock_timeout"),
    ("statementTimeout", "statement_timeout"),
    ("olderThan", "older_than"),
]


def _spec(kind: str, path: tuple[str, ...], value: str) -> dict[str, Any]:
    storage: dict[str, Any] = {"bucket": "some-bucket", "credentials": {"inheritFromIAMRole": True}}
    spec: dict[str, Any] = {"database": {"secretRef": {"name": "db"}}, "storage": storage}
    if kind == "TableArchive":
        spec.update(table={"name": "orders"}, timestampColumn="created_at", olderThan="30d")
    if path[-1] == "retainFor":
        storage["objectLock"] = {"mode": "Governance"}
    place = spec
    for key in path[:-1]:
        place = place.setdefault(key, {})
    place[path[-1]] = value
    return spec


def _parse(kind: str, spec: dict[str, Any]) -> Any:
    from jobs.archive.settings import parse_archive_spec
    from jobs.backup.settings import parse_backup_spec

    return parse_archive_spec(spec) if kind == "TableArchive" else parse_backup_spec(spec)


@pytest.mark.parametrize(("kind", "path"), POSITIVE_DURATIONS)
@pytest.mark.parametrize("zero", ["0s", "0d", "0h0m"])
def test_a_zero_duration_where_zero_means_nothing_is_refused_naming_the_field(
    kind: str, path: tuple[str, ...], zero: str
) -> None:
    with pytest.raises(InvalidSpec, match=rf"^spec\.{'.'.join(path)}: must be more than 0s"):
        _parse(kind, _spec(kind, path, zero))
    assert _parse(kind, _spec(kind, path, "1s")) is not None


@pytest.mark.parametrize(("field", "attribute"), ZERO_MEANS_SOMETHING)
def test_a_zero_duration_where_zero_has_a_meaning_is_kept(field: str, attribute: str) -> None:
    """Was: `lockTimeout: 0s` (PostgreSQL's "no timeout") silently became the default 5s."""
    settings = _parse("TableArchive", _spec("TableArchive", (field,), "0s"))
    assert getattr(settings, attribute) == timedelta(0)
    assert _parse("TableArchive", _spec("TableArchive", ("batch", "pause"), "0s")).pause == timedelta(0)


def test_durations_left_out_take_their_defaults() -> None:
    archive = _parse("TableArchive", _spec("TableArchive", ("filter",), "true"))
    assert (archive.lock_timeout, archive.statement_timeout, archive.max_run_time) == (
        timedelta(seconds=5),
        timedelta(seconds=60),
        timedelta(hours=1),
    )
    backup = _parse("DatabaseBackup", _spec("DatabaseBackup", ("dump",), {}))  # type: ignore[arg-type]
    assert (backup.stale_after, backup.retention.incomplete_after) == (timedelta(hours=26), timedelta(hours=24))
