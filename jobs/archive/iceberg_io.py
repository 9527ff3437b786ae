"""The Iceberg table's FileIO on an S3 endpoint whose certificate a private CA signed (spec.storage.endpointCA).

PyIceberg 0.12's PyArrowFileIO builds PyArrow's S3FileSystem from its properties and has no property for a CA,
though S3FileSystem takes a CA file (`tls_ca_file_path`). So `PrivateCaFileIO`, named by the `py-io-impl` property,
builds the filesystem PyIceberg would and adds the file the `CA_FILE` property names. PyIceberg makes a FileIO
from the catalog's properties at every load of the table (archive, unarchive and maintenance alike), and curl reads
the file at each new connection: so the file is written once per process per bundle, readable by this user only,
into a directory of its own, and removed when the process ends.

The file replaces the system's CA bundle file; Arrow still consults the system's CA directory (a global option
pyarrow sets from Python's default verify paths on Linux), which S3FileSystem's constructor cannot override. Nor can
it skip verification (only the `s3://` URI form, `FileSystem.from_uri`, takes tls_verify_certificates or
tls_ca_dir_path, and it carries no session token or virtual addressing): insecureSkipTLSVerify is refused for
Iceberg archives (settings.py).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import threading
from typing import Any

from pyiceberg.io.pyarrow import PyArrowFileIO

CA_FILE = "cellar.s3.ca-file"  # a PEM file of the CAs to trust: the storage's endpointCA, written by ca_file()
FILE_IO = f"{__name__}.PrivateCaFileIO"

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


def endpoint_ca_properties(pem: str) -> dict[str, str]:
    """The FileIO properties that make the table's S3 files trust the endpoint's CA bundle `pem`."""
    return {"py-io-impl": FILE_IO, CA_FILE: ca_file(pem)}


class PrivateCaFileIO(PyArrowFileIO):
    """PyArrowFileIO whose S3 filesystems verify the endpoint with the CA file `CA_FILE` names."""

    def _initialize_s3_fs(self, netloc: str | None) -> Any:
        from pyarrow.fs import S3FileSystem

        configured = super()._initialize_s3_fs(netloc)
        if not self.properties.get(CA_FILE):
            return configured
        # S3FileSystem's pickled state is its constructor's keyword arguments (how PyArrow unpickles it): the same
        # filesystem PyIceberg configured, made again with the CA file added.
        _, (options,) = configured.__reduce__()
        return S3FileSystem(**{**options, "tls_ca_file_path": self.properties[CA_FILE]})
