"""PyIceberg's PyArrow FileIO on S3, as cellar opens it: one request a file where PyIceberg's makes four.

PyIceberg's own S3 file system uploads every file, however small, as a multipart upload (create, one part,
complete: three requests, and an object store assembles the parts), then asks the store for the file's size
(a HEAD). An archive batch writes one data file a partition, so those requests were most of the object store's
work and a quarter of the job's time. Here the file system opens its streams lazily (PyArrow's
`allow_delayed_open`: a file smaller than one part is a single PUT), and each file written remembers how many
bytes it wrote, so nothing asks the store for its size.

The file system is cellar's S3 settings (region, endpoint, addressing, keys) passed to PyArrow directly; PyIceberg
loads this class by its name (the `py-io-impl` property), with the properties iceberg.py's `file_io_properties`
sets.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from pyarrow.fs import FileSystem, S3FileSystem
from pyiceberg.io import (
    AWS_ACCESS_KEY_ID,
    AWS_REGION,
    AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN,
    S3_ACCESS_KEY_ID,
    S3_ENDPOINT,
    S3_FORCE_VIRTUAL_ADDRESSING,
    S3_REGION,
    S3_SECRET_ACCESS_KEY,
    S3_SESSION_TOKEN,
)
from pyiceberg.io.pyarrow import PyArrowFile, PyArrowFileIO

CA_FILE = "cellar.s3.ca-file"  # a PEM file of the CAs to trust (the storage's endpointCA), when it has one


class S3FileIO(PyArrowFileIO):
    """PyArrowFileIO whose S3 file system writes small files in one PUT and whose output files know their size."""

    def _initialize_s3_fs(self, netloc: str | None) -> FileSystem:
        # PyIceberg's hook for making the S3 file system; netloc (the bucket) needs nothing of its own here.
        properties = self.properties

        def first(*names: str) -> str | None:
            return next((properties[name] for name in names if properties.get(name)), None)

        options: dict[str, Any] = {
            "access_key": first(S3_ACCESS_KEY_ID, AWS_ACCESS_KEY_ID),
            "secret_key": first(S3_SECRET_ACCESS_KEY, AWS_SECRET_ACCESS_KEY),
            "session_token": first(S3_SESSION_TOKEN, AWS_SESSION_TOKEN),
            "region": first(S3_REGION, AWS_REGION),
            "endpoint_override": properties.get(S3_ENDPOINT),
            "force_virtual_addressing": properties.get(S3_FORCE_VIRTUAL_ADDRESSING, "false").lower() == "true",
            "allow_delayed_open": True,
        }
        if properties.get(CA_FILE):
            options["tls_ca_file_path"] = properties[CA_FILE]
        return S3FileSystem(**{name: value for name, value in options.items() if value is not None})

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
