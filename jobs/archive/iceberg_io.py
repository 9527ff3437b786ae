"""The Iceberg table's FileIO on S3: PyIceberg's PyArrowFileIO, with every file written by cellar's own S3 client in
one verified PUT, and the endpoint verified with spec.storage.endpointCA where one is set.

The writes: PyIceberg's S3 filesystem (PyArrow's) uploads every file, however small, as a multipart upload (create,
one part, complete: three requests, the parts assembled by the store), then asks the store for the file's size (a
HEAD); and each stream open at once holds about 14 MB, so a pool writing six files held 90 MB more than Parquet
mode's uploads of the same files. Here a file is encoded into memory and, when complete, sent by the archive's
S3 client as one PUT with its SHA-256 (`S3Store.put_verified`: the store checks it; encryption, storage class and
object lock as for every object cellar writes), and knows its size. A file whose writing fails is never sent.
The metadata files are read the same way, each in one GET; data files are read through PyArrow's filesystem,
except by readers of whole files (`whole_file_reads`: compaction, a crashed run's snapshot), which read each in one GET
too, so that the filesystem (AWS's SDK under it holds 10 MB once started) never starts in an archive run.

The CA: PyIceberg 0.12 has no property for one, though S3FileSystem takes a CA file (`tls_ca_file_path`). PyIceberg
makes a FileIO from the catalog's properties at every load of the table (archive, unarchive and maintenance alike),
and curl reads the file at each new connection: so the file is written once per process per bundle, readable by
this user only, into a directory of its own, and removed when the process ends. It replaces the system's CA bundle
file; Arrow still consults the system's CA directory (a global option pyarrow sets from Python's default verify
paths on Linux), which S3FileSystem's constructor cannot override. Nor can it skip verification (only the `s3://`
URI form, `FileSystem.from_uri`, takes tls_verify_certificates, and it carries no session token or virtual
addressing): insecureSkipTLSVerify is refused for Iceberg archives (settings.py).

PyIceberg loads `S3FileIO` by its name (the `py-io-impl` property iceberg_catalog.py's `file_io_properties` sets), and
only with string properties: the client is registered in this process (`register_store`) and named by `STORE`.
"""

from __future__ import annotations

import atexit
import collections
import hashlib
import io
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any

import pyarrow as pa
from pyarrow.fs import FileSystem, S3FileSystem
from pyiceberg.io.pyarrow import PyArrowFile, PyArrowFileIO

CA_FILE = "cellar.s3.ca-file"  # a PEM file of the CAs to trust: the storage's endpointCA, written by ca_file()
STORE = "cellar.s3.store"  # the S3Store (register_store) that writes the table's files

_lock = threading.Lock()
_files: dict[str, str] = {}  # sha256 of a bundle: its file
_directory: list[str] = []  # made on first use, removed at exit
_stores: dict[str, Any] = {}  # STORE's value: the S3Store
# The manifest lists this process wrote last, by location: each commit's fast append reads its parent's, which the
# run's previous commit wrote (files are never rewritten, so the bytes sent are the bytes stored).
_written_lists: collections.OrderedDict[str, bytes] = collections.OrderedDict()
KEPT_LISTS = 4
MANIFEST_LIST_PREFIX = "snap-"  # a manifest list's file name: snap-<snapshot id>-<attempt>-<uuid>.avro


def register_store(store: Any) -> str:
    """The value of the STORE property that names `store` in this process."""
    token = uuid.uuid4().hex
    with _lock:
        _stores[token] = store
    return token


def ca_file(pem: str) -> str:
    """The path of a file holding `pem` (0600, in a 0700 directory of this process's), written on first use."""
    digest = hashlib.sha256(pem.encode()).hexdigest()
    with _lock:
        if digest in _files:
            return _files[digest]
        if not _directory:
            _directory.append(tempfile.mkdtemp(prefix="cellar-iceberg-ca-"))  # mode 0700
            atexit.register(shutil.rmtree, _directory[0], ignore_errors=True)
        path = os.path.join(_directory[0], f"{digest[:16]}.pem")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(pem)
        _files[digest] = path
        return path


class S3FileIO(PyArrowFileIO):
    """PyArrowFileIO whose files are written, and whose metadata files are read, by cellar's S3 client (STORE), and
    whose S3 filesystem, for reading data files, trusts `CA_FILE` where set. The filesystem starts only when a data
    file is read (unarchive, maintenance, a crashed run's snapshot): AWS's SDK under it holds 10 MB once started."""

    def _initialize_s3_fs(self, netloc: str | None) -> FileSystem:
        configured = super()._initialize_s3_fs(netloc)
        if not self.properties.get(CA_FILE):
            return configured
        # S3FileSystem's pickled state is its constructor's keyword arguments (how PyArrow unpickles it): the same
        # filesystem PyIceberg configured from the properties, made again with the CA file added.
        _, (options,) = configured.__reduce__()
        return S3FileSystem(**{**options, "tls_ca_file_path": self.properties[CA_FILE]})

    def _store_file(self, location: str, kind: type[_StoreFile]) -> _StoreFile | None:
        scheme, netloc, path = self.parse_location(location, self.properties)
        store = _stores.get(self.properties.get(STORE, ""))
        if store is None or netloc != store.bucket:  # a table another tool placed in another bucket
            return None
        return kind(location, path, lambda: self.fs_by_scheme(scheme, netloc), store)

    def new_output(self, location: str) -> PyArrowFile:
        file = self._store_file(location, UploadedFile)  # not `or`: a file's truth is its length, a request
        return super().new_output(location) if file is None else file

    def new_input(self, location: str) -> PyArrowFile:
        # Metadata files (the table's metadata, manifest lists, manifests) are read whole, as PyIceberg reads them;
        # data files keep Arrow's ranged reads (a query reads a Parquet file's footer and the columns it needs).
        file = self._store_file(location, WholeFile) if location.endswith(METADATA_SUFFIXES) else None
        return super().new_input(location) if file is None else file

    def whole_input(self, location: str) -> PyArrowFile:
        """The file at `location`, read whole in one GET by cellar's client where it is in the archive's bucket."""
        file = self._store_file(location, WholeFile)
        return super().new_input(location) if file is None else file


METADATA_SUFFIXES = (".metadata.json", ".avro")


class _WholeFileReads:
    """A FileIO's reading side for a reader of every byte of its files (whole_file_reads)."""

    def __init__(self, io: S3FileIO) -> None:
        self.properties = io.properties
        self.new_input = io.whole_input


def whole_file_reads(io: Any) -> Any:
    """`io` for ArrowScan and for reading data files whole: where it is the archive's S3FileIO, each file is read in
    one GET by cellar's client, not through Arrow's S3 filesystem (which holds 10 MB once started and reads a file
    in ranges, which pays only for a reader of some of its columns). Any other FileIO is returned as it is."""
    return _WholeFileReads(io) if isinstance(io, S3FileIO) else io


class _StoreFile(PyArrowFile):
    """A PyArrowFile in the archive's bucket, with cellar's client at hand and Arrow's filesystem made only when a
    method of PyArrowFile needs it."""

    def __init__(self, location: str, path: str, filesystem: Callable[[], FileSystem], store: Any) -> None:
        self._make_filesystem = filesystem
        self._made: FileSystem | None = None
        super().__init__(location=location, path=path, fs=None)
        self.store = store
        self.key = path.split("/", 1)[1]  # the path is <bucket>/<key>

    @property
    def _filesystem(self) -> FileSystem:
        if self._made is None:
            self._made = self._make_filesystem()
        return self._made

    @_filesystem.setter
    def _filesystem(self, value: FileSystem | None) -> None:
        self._made = value


class WholeFile(_StoreFile):
    """A file read whole in one GET by cellar's client (a manifest list this process wrote: from memory)."""

    def open(self, seekable: bool = True) -> Any:
        with _lock:
            written = _written_lists.get(self.location)
        return io.BytesIO(self.store.get_bytes(self.key) if written is None else written)


class UploadedFile(_StoreFile):
    """A PyArrowFile written into memory and sent in one verified PUT once complete; it knows its length."""

    def __init__(self, location: str, path: str, filesystem: Callable[[], FileSystem], store: Any) -> None:
        super().__init__(location, path, filesystem, store)
        self.written: int | None = None

    def create(self, overwrite: bool = False) -> Any:
        if not overwrite and self.exists():
            raise FileExistsError(f"Cannot create file, already exists: {self.location}")
        return _Upload(self)

    def __len__(self) -> int:
        return self.written if self.written is not None else super().__len__()


class _Upload:
    """The file's bytes as they are written; close() sends them. Leaving a `with` block by an exception sends
    nothing. The pieces are kept as written where they cannot change (bytes, an Arrow buffer: a data file arrives
    whole as one) and joined once at the end, so a file is held twice at most, not three times."""

    def __init__(self, file: UploadedFile) -> None:
        self._file = file
        self._pieces: list[bytes | pa.Buffer] = []
        self._size = 0
        self._closed = False

    def write(self, data: Any) -> int:
        piece = data if isinstance(data, (bytes, pa.Buffer)) else bytes(data)
        self._pieces.append(piece)
        self._size += len(piece)
        return len(piece)

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        pieces, self._pieces = self._pieces, []
        body = pieces[0] if len(pieces) == 1 and isinstance(pieces[0], bytes) else b"".join(pieces)
        del pieces
        self._file.store.put_verified(self._file.key, body, hashlib.sha256(body).hexdigest())
        self._file.written = len(body)
        if self._file.key.rsplit("/", 1)[-1].startswith(MANIFEST_LIST_PREFIX):
            with _lock:
                _written_lists[self._file.location] = body
                while len(_written_lists) > KEPT_LISTS:
                    _written_lists.popitem(last=False)

    def __enter__(self) -> _Upload:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if error is None:
            self.close()
        else:
            self._closed = True
