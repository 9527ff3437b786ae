"""The Iceberg FileIO's own behaviour over the object-store seam: one verified PUT per complete file, nothing sent
for a file whose writing failed, and a manifest list this process wrote served back without a GET."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest

from jobs.archive import iceberg_io
from jobs.archive.iceberg_io import KEPT_LISTS, S3FileIO, register_store


class RecordingStore:
    """The seam over the object store: what was put, and which keys were fetched."""

    bucket = "archive"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.puts: list[str] = []
        self.gets: list[str] = []

    def put_verified(self, key: str, body: bytes, sha256: str) -> None:
        assert hashlib.sha256(body).hexdigest() == sha256
        self.puts.append(key)
        self.objects[key] = bytes(body)

    def get_bytes(self, key: str) -> bytes:
        self.gets.append(key)
        return self.objects[key]


@pytest.fixture
def store() -> RecordingStore:
    return RecordingStore()


@pytest.fixture
def file_io(store: RecordingStore) -> S3FileIO:
    return S3FileIO({iceberg_io.STORE: register_store(store)})


def _write(file_io: S3FileIO, location: str, *pieces: bytes | pa.Buffer | bytearray) -> None:
    with file_io.new_output(location).create(overwrite=True) as out:
        for piece in pieces:
            out.write(piece)


def test_a_file_is_sent_once_whole_and_knows_its_length(file_io: S3FileIO, store: RecordingStore) -> None:
    output = file_io.new_output("s3://archive/t/data/a.parquet")
    with output.create(overwrite=True) as out:
        out.write(b"PAR1")
        out.write(pa.py_buffer(b"-columns-"))
        out.write(bytearray(b"PAR1"))
        assert out.tell() == 17
        assert store.puts == []  # nothing is sent before the file is complete
    assert store.puts == ["t/data/a.parquet"]
    assert store.objects["t/data/a.parquet"] == b"PAR1-columns-PAR1"
    assert len(output) == 17  # from what was sent, not a HEAD


def test_a_file_whose_writing_fails_is_never_sent(file_io: S3FileIO, store: RecordingStore) -> None:
    def write_then_fail() -> None:
        with file_io.new_output("s3://archive/t/data/b.parquet").create(overwrite=True) as out:
            out.write(b"PAR1")
            raise RuntimeError("encoder failed")

    with pytest.raises(RuntimeError, match="encoder failed"):
        write_then_fail()
    assert store.puts == []


def test_a_manifest_list_written_here_is_read_back_without_a_get(file_io: S3FileIO, store: RecordingStore) -> None:
    listing = "s3://archive/t/metadata/snap-11-1-0c7e.avro"
    manifest = "s3://archive/t/metadata/0c7e-m0.avro"
    _write(file_io, listing, b"list-", b"11")
    _write(file_io, manifest, b"manifest")
    with file_io.new_input(listing).open() as read:
        assert read.read() == b"list-11"
    with file_io.new_input(manifest).open() as read:
        assert read.read() == b"manifest"
    assert store.gets == ["t/metadata/0c7e-m0.avro"]  # the manifest was fetched, the list was not


def test_only_the_last_manifest_lists_are_kept(file_io: S3FileIO, store: RecordingStore) -> None:
    listings = [f"s3://archive/t/metadata/snap-{n}-1-0c7e.avro" for n in range(KEPT_LISTS + 1)]
    for number, location in enumerate(listings):
        _write(file_io, location, f"list-{number}".encode())
    for number, location in enumerate(listings):
        with file_io.new_input(location).open() as read:
            assert read.read() == f"list-{number}".encode()
    assert store.gets == ["t/metadata/snap-0-1-0c7e.avro"]  # the oldest was let go and fetched again


def test_the_runs_own_s3_store_writes_the_tables_files() -> None:
    """The run's S3Store is reused for the table's files rather than a second client made; without one (tools,
    benchmarks) a client of the resource's storage is made."""
    from common.secrets import StorageCredentials
    from common.storage.s3 import S3Store
    from jobs.archive.iceberg_catalog import file_io_properties
    from jobs.archive.settings import parse_archive_spec
    from tests.unit.test_archive_pure import SPEC

    settings = parse_archive_spec({**SPEC, "format": "Iceberg"})
    credentials = StorageCredentials("AK", "SK", None, None)
    store = S3Store.connect(settings.storage, credentials)
    reused = iceberg_io._stores[file_io_properties(settings, credentials, store)[iceberg_io.STORE]]
    assert reused is store
    made = iceberg_io._stores[file_io_properties(settings, credentials)[iceberg_io.STORE]]
    assert isinstance(made, S3Store)
    assert made is not store
    assert made.bucket == store.bucket
