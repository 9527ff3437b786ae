"""The backup manifest across formats (one database, several), and spec.databases as parsed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from common.errors import InvalidSpec, PermanentError
from jobs.backup.backup.databases import dump_key_name
from jobs.backup.catalog import DatabaseDump, DumpFile, Manifest, TableCount
from jobs.backup.settings import DatabaseChoice, parse_backup_spec

BASE: dict[str, Any] = {
    "database": {"secretRef": {"name": "db"}},
    "storage": {
        "bucket": "backups",
        "credentials": {"accessKeyId": {"name": "s", "key": "id"}, "secretAccessKey": {"name": "s", "key": "key"}},
    },
}


def manifest(dumps: list[DatabaseDump], *, server_wide: bool) -> Manifest:
    return Manifest(
        backup_id="20261129T000000Z-abc",
        dumps=dumps,
        server_version="17.1",
        pg_dump_version="pg_dump 17.1",
        start_time="2026-11-29T00:00:00Z",
        end_time="2026-11-29T00:01:00Z",
        compression="zstd",
        compression_level=1,
        generation=1,
        resource="ns/n",
        run_id="abc",
        server_wide=server_wide,
    )


def dump(name: str, size: int) -> DatabaseDump:
    return DatabaseDump(name, f"data/{name}", size * 3, size, f"sha-{name}", [TableCount("public", "t", size)])


def test_a_one_database_manifest_keeps_the_format_older_cellars_read() -> None:
    one = manifest([dump("app", 10)], server_wide=False)
    body = json.loads(one.to_bytes())
    assert body["formatVersion"] == 1
    top = (body["dataKey"], body["database"], body["sha256"], body["bytesStored"])
    assert top == ("data/app", "app", "sha-app", 10)
    assert "databases" not in body
    again = Manifest.read(one.to_bytes(), "m")
    assert again.dumps == one.dumps
    assert not again.server_wide


def test_a_server_wide_manifest_lists_every_database() -> None:
    several = manifest([dump("app", 10), dump("billing", 5)], server_wide=True)
    body = json.loads(several.to_bytes())
    assert body["formatVersion"] == 3
    assert [d["database"] for d in body["databases"]] == ["app", "billing"]
    assert "dataKey" not in body
    again = Manifest.read(several.to_bytes(), "m")
    assert again.server_wide
    assert again.bytes_stored == 15
    assert again.object_keys == ["data/app", "data/billing"]
    view = again.for_database("billing")
    assert (view.data_key, view.bytes_stored, view.dump.sha256) == ("data/billing", 5, "sha-billing")
    with pytest.raises(ValueError, match="holds 2 databases"):
        _ = again.dump


def test_a_newer_format_is_refused_with_what_to_do() -> None:
    body = json.loads(manifest([dump("app", 1)], server_wide=True).to_bytes())
    body["formatVersion"] = 5
    with pytest.raises(PermanentError, match="upgrade cellar"):
        Manifest.read(json.dumps(body).encode(), "m")


def test_dump_keys_quote_what_a_database_name_may_hold() -> None:
    assert dump_key_name("id", "app") == "id.db.app.pgdump"
    assert dump_key_name("id", "a/b c") == "id.db.a%2Fb%20c.pgdump"
    assert dump_key_name("id", "a/b") != dump_key_name("id", "a%2Fb")


def test_spec_databases() -> None:
    assert parse_backup_spec(BASE).databases is None
    parsed = parse_backup_spec({**BASE, "databases": {"all": True, "exclude": ["tmp_*"]}}).databases
    assert parsed == DatabaseChoice((), True, ("tmp_*",))
    assert parse_backup_spec({**BASE, "databases": {"names": ["a", "b"]}}).databases == DatabaseChoice(("a", "b"))


@pytest.mark.parametrize(
    ("databases", "message"),
    [
        ({}, "set either names"),
        ({"names": ["a"], "all": True}, "set either names"),
        ({"names": ["a"], "exclude": ["b"]}, "only applies with all"),
        ({"names": ["a", "a"]}, "named twice"),
        ({"names": "a"}, "list of non-empty strings"),
    ],
)
def test_bad_spec_databases_name_the_field(databases: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message) as raised:
        parse_backup_spec({**BASE, "databases": databases})
    assert "spec.databases" in str(raised.value)


def directory_dump(name: str) -> DatabaseDump:
    prefix = f"data/{name}.dir/"
    files = (
        DumpFile("3001.dat", f"{prefix}3001.dat.zst", 900, 300, "sha-3001"),
        DumpFile("toc.dat", f"{prefix}toc.dat.zst", 90, 30, "sha-toc"),
    )
    return DatabaseDump(name, prefix, 990, 330, "", [TableCount("public", "t", 7)], files=files)


def test_a_directory_dump_lists_every_file_and_needs_format_4() -> None:
    one = manifest([directory_dump("app")], server_wide=False)
    body = json.loads(one.to_bytes())
    assert body["formatVersion"] == 4
    assert body["format"] == "directory"
    assert [f["name"] for f in body["files"]] == ["3001.dat", "toc.dat"]
    assert body["files"][0] == {
        "name": "3001.dat",
        "key": "data/app.dir/3001.dat.zst",
        "bytesRaw": 900,
        "bytesStored": 300,
        "sha256": "sha-3001",
    }
    again = Manifest.read(one.to_bytes(), "m")
    assert again.dumps == one.dumps
    assert again.dump.directory
    # Retention deletes, and the inventory checks, every file's object, not the prefix.
    assert again.object_keys == ["data/app.dir/3001.dat.zst", "data/app.dir/toc.dat.zst"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"key": "data/other.dir/3001.dat.zst"}, "not under the dump's directory"),
        ({"name": "../toc.dat"}, "not a plain name"),
        ({"name": ""}, "not a plain name"),
    ],
)
def test_a_manifest_naming_files_outside_its_directory_is_damaged(change: dict[str, str], message: str) -> None:
    body = json.loads(manifest([directory_dump("app")], server_wide=False).to_bytes())
    body["files"][0].update(change)
    with pytest.raises(PermanentError, match=message) as raised:
        Manifest.read(json.dumps(body).encode(), "m")
    assert raised.value.reason == "InvalidManifest"


def test_spec_parallelism() -> None:
    settings = parse_backup_spec({**BASE, "parallelism": 4, "staging": {"path": "/staging"}})
    assert (settings.parallelism, settings.staging_path, settings.directory) == (4, "/staging", True)
    assert not parse_backup_spec(BASE).directory
    choice = parse_backup_spec({**BASE, "databases": {"all": True, "parallelism": 3}}).databases
    assert choice is not None
    assert choice.parallelism == 3


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"parallelism": 2}, "spec.parallelism: pg_dump --jobs writes a directory.*spec.staging.path"),
        ({"parallelism": 0, "staging": {"path": "/s"}}, "spec.parallelism"),
        ({"parallelism": 2, "staging": {"path": "staging"}}, "must be an absolute path"),
        ({"databases": {"all": True, "parallelism": 0}}, "spec.databases.parallelism"),
    ],
)
def test_bad_parallelism_names_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        parse_backup_spec({**BASE, **spec})
