"""The archive job. Two allocator settings are made here, before pyarrow loads and before any thread starts.

- Arrow allocates with the C library's allocator: with Arrow's default (mimalloc), the upload threads
  that encode Parquet each kept freed memory, for no measurable speed.
- glibc's malloc gives threads that allocate at once arenas of their own, up to eight per core, and
  memory freed in one arena serves only that arena. The lanes, their publishers and the upload threads
  each touch batches of several MB, so every arena grew to hold a few of them. One arena keeps peak RSS
  (benchmarks/archive_bench.py) well under the archive target; the threads spend their time in
  PostgreSQL, Parquet and uploads, not in malloc, and were no slower for it.

Values set in the environment (ARROW_DEFAULT_MEMORY_POOL, MALLOC_ARENA_MAX) win.
"""

import ctypes
import os

os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

_M_ARENA_MAX = -8  # mallopt parameter, from glibc's malloc.h
MALLOC_ARENAS = 1


def _limit_malloc_arenas() -> None:
    if os.environ.get("MALLOC_ARENA_MAX"):
        return  # glibc read it at start-up
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_ARENA_MAX, MALLOC_ARENAS)
    except (OSError, AttributeError):
        pass  # not glibc (musl, macOS): its allocator has no such setting


_limit_malloc_arenas()
