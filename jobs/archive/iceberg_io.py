"""The Iceberg table's FileIO on S3: PyIceberg's PyArrowFileIO, with one request a file where PyIceberg's makes four,
and the endpoint verified with spec.storage.endpointCA where one is set.

One request a file: PyIceberg's S3 filesystem uploads every file, however small, as a multipart upload (create, one
part, complete: three requests, the parts assembled by the store), then asks the store for the file's size (a
HEAD). An archive batch writes a data file a partition, so those requests were most of the object store's work and
a quarter of the job's time. `S3FileIO` opens PyArrow's streams lazily (`allow_delayed_open`: a file smaller than a
part is one PUT), and each file it writes remembers how many bytes it wrote, so nothing asks its size.

The CA: PyIceberg 0.12 has no property for one, though S3FileSystem takes a CA file (`tls_ca_file_path`). PyIceberg
makes a FileIO from the catalog's properties at every load of the table (archive, unarchive and maintenance alike),
and curl reads the file at each new connection: so the file is written once per process per bundle, readable by
this user only, into a directory of its own, and removed when the process ends. It replaces the system's CA bundle
file; Arrow still consults the system's CA directory (a global option pyarrow sets from Python's default verify
paths on Linux), which S3FileSystem's constructor cannot override. Nor can it skip verification (only the `s3://`
URI form, `FileSystem.from_uri`, takes tls_verify_certificates, and it carries no session token or virtual
addressing): insecureSkipTLSVerify is refused for Iceberg archives (settings.py).

PyIceberg loads `S3FileIO` by its name (the `py-io-impl` property iceberg.py's `file_io_properties` sets).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import threading
from types import TracebackType
from typing import Any

from pyarrow.fs import FileSystem, S3FileSystem
from pyiceberg.io.pyarrow import PyArrowFile, PyArrowFileIO

CA_FILE = "cellar.s3.ca-file"  # a PEM file of the CAs to trust: the storage's endpointCA, written by ca_file()

_lock = threading.Lock()
_files: dict[str, str] = {}  # sha256 of a bundle: its file
_directory: list[str] = []  # made on first use, removed at exit


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
    """PyArrowFileIO whose S3 filesystem writes a small file in one PUT and trusts `CA_FILE` where set, and whose
    output files know their size."""

    def _initialize_s3_fs(self, netloc: str | None) -> FileSystem:
        configured = super()._initialize_s3_fs(netloc)
        # S3FileSystem's pickled state is its constructor's keyword arguments (how PyArrow unpickles it): the same
        # filesystem PyIceberg configured from the properties, made again with cellar's options added.
        _, (options,) = configured.__reduce__()
        options = {**options, "allow_delayed_open": True}
        if self.properties.get(CA_FILE):
            options["tls_ca_file_path"] = self.properties[CA_FILE]
        return S3FileSystem(**options)

    def new_output(self, location: str) -> PyArrowFile:
        scheme, netloc, path = self.parse_location(location, self.properties)
        return SizedFile(location=location, path=path, fs=self.fs_by_scheme(scheme, netloc))


class SizedFile(PyArrowFile):
    """A PyArrowFile that counts what it writes, so its length needs no request once written."""

    def __init__(self, location: str, path: str, fs: FileSystem) -> None:
        super().__init__(location=location, path=path, fs=fs)
        self.written: int | None = None

    def create(self, overwrite: bool = False) -> Any:
        return _CountingStream(super().create(overwrite=overwrite), self)

    def __len__(self) -> int:
        return self.written if self.written is not None else super().__len__()


class _CountingStream:
    """The stream PyArrow opened, passed through; on close, the byte count goes to the file it was opened for."""

    def __init__(self, stream: Any, file: SizedFile) -> None:
        self._stream = stream
        self._file = file
        self._count = 0

    def write(self, data: Any) -> int:
        written: int = self._stream.write(data)
        self._count += written
        return written

    def tell(self) -> int:
        return self._count

    def flush(self) -> None:
        self._stream.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return bool(self._stream.closed)

    def close(self) -> None:
        if not self._stream.closed:
            self._stream.close()  # the upload happens here: its size counts only once it succeeded
            self._file.written = self._count

    def __enter__(self) -> _CountingStream:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
