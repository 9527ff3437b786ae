"""The archive job. Arrow allocates with the C library's allocator here, set before pyarrow loads:
with Arrow's default (mimalloc), the upload threads that encode Parquet each kept freed memory, and the
job's peak RSS in benchmarks/archive_bench.py was about 75 MB higher, for no measurable speed. An
ARROW_DEFAULT_MEMORY_POOL set in the environment wins."""

import os

os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
