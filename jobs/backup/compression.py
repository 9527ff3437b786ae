"""Streaming compressors and decompressors for the dump: zstd (multi-threaded), gzip, none."""

from __future__ import annotations

import os
import zlib
from typing import Protocol

import zstandard

from jobs.backup.settings import Compression

ZSTD_JOB_SIZE = 2 * 1024 * 1024


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class Decompressor(Protocol):
    def decompress(self, data: bytes) -> bytes: ...


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return data

    def decompress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class _Gzip:
    def __init__(self, level: int) -> None:
        self._inner = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: a gzip member, gunzip reads it

    def compress(self, data: bytes) -> bytes:
        return self._inner.compress(data)

    def flush(self) -> bytes:
        return self._inner.flush()


class _Zstd:
    def __init__(self, level: int, workers: int) -> None:
        threads = workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
        # threads=1 would still spawn a worker; 0 compresses on the calling thread. Multi-threaded zstd
        # holds several jobs of 4 windows each in flight; small jobs bound that memory (docs/design.md).
        workers = threads if threads and threads > 1 else 0
        parameters = zstandard.ZstdCompressionParameters.from_level(
            level, threads=workers, job_size=ZSTD_JOB_SIZE if workers else 0
        )
        self._inner = zstandard.ZstdCompressor(compression_params=parameters)
        self._stream = self._inner.compressobj()

    def compress(self, data: bytes) -> bytes:
        return bytes(self._stream.compress(data))

    def flush(self) -> bytes:
        return bytes(self._stream.flush())


def compressor_for(compression: Compression) -> Compressor:
    if compression.algorithm == "zstd":
        return _Zstd(compression.level, compression.workers)
    if compression.algorithm == "gzip":
        return _Gzip(compression.level)
    return _Identity()


def decompressor_for(algorithm: str) -> Decompressor:
    if algorithm == "zstd":
        return zstandard.ZstdDecompressor().decompressobj()
    if algorithm == "gzip":
        return zlib.decompressobj(31)
    if algorithm == "none":
        return _Identity()
    raise ValueError(f"unknown compression {algorithm!r}")
