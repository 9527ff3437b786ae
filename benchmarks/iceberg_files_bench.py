"""Iceberg data files benchmark: the CPU it takes to turn an archive's batches into files, with no servers.

The archive's rows (the `orders` table archive_bench fills: 8 columns of mixed types, timestamps over four
years), in batches of --batch-rows rows in timestamp order, as the archiver reads them; each batch split into a
file a day. Three writers take turns in each of --rounds rounds, each into its own local directory:

  (p) Parquet mode: each day's rows encoded as Parquet mode encodes a file (encoding.encode) and written out
  (y) PyIceberg's own writer (`write_file`) of the same files into a table with a day partition
  (c) cellar's Iceberg writer (iceberg_writes.DataFileWriter) of the same files into the same kind of table

Each prints the process's CPU seconds (all threads) and wall seconds of its best round, and the ratios against
(p). CPU seconds, not wall, are the figure: on two shared cores a busy neighbour stretches the wall time but not
the work. The end-to-end targets (Iceberg at least 0.9 of Parquet mode's rows per second) are archive_bench's;
this one isolates the part of the difference that is the writing of files. Run:

    .venv/bin/python -m benchmarks.iceberg_files_bench            (--rows 800000 --rounds 3 by default)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from jobs.archive.encoding import encode
from jobs.archive.iceberg_writes import DataFileWriter


def orders(rows: int) -> pa.Table:
    """`rows` rows like archive_bench's `orders`, in timestamp order, spread over four years."""
    ids = pa.array(range(rows), pa.int64())
    start = datetime(2021, 1, 1, tzinfo=UTC)
    step = timedelta(days=1460) / rows
    return pa.table(
        {
            "id": ids,
            "created_at": pa.array([start + step * n for n in range(rows)], pa.timestamp("us", "UTC")),
            "customer": pc.cast(pc.multiply(pc.bit_wise_and(ids, 0xFFFF), 7), pa.int32()),
            "amount": pc.cast(
                pc.divide(pc.cast(pc.bit_wise_and(ids, 0xFFFFF), pa.float64()), 100), pa.decimal128(12, 2)
            ),
            "status": pa.array(["new", "paid", "shipped", "cancelled"] * (rows // 4) + ["new"] * (rows % 4)),
            "note": pc.binary_join_element_wise("order ", pc.cast(ids, pa.string()), " note", ""),
            "payload": pc.binary_join_element_wise('{"n": ', pc.cast(ids, pa.string()), "}", ""),
            "ref": pa.array([str(uuid.UUID(int=n * 7919)) for n in range(rows)]),
        }
    )


def batches(table: pa.Table, batch_rows: int) -> Iterator[pa.Table]:
    for start in range(0, table.num_rows, batch_rows):
        yield table.slice(start, batch_rows)


def days(batch: pa.Table) -> Iterator[pa.Table]:
    """The batch's rows a day at a time (runs of equal days: the batch is in timestamp order)."""
    runs = pc.run_end_encode(pc.floor_temporal(batch.column("created_at").combine_chunks(), unit="day"))
    start = 0
    for end in runs.run_ends.to_pylist():
        yield batch.slice(start, end - start)
        start = end


def parquet_mode(table: pa.Table, batch_rows: int, directory: Path) -> int:
    files = 0
    for batch in batches(table, batch_rows):
        for day in days(batch):
            (directory / f"{files}.parquet").write_bytes(encode(day, "Parquet"))
            files += 1
    return files


def iceberg_table(table: pa.Table, directory: Path) -> Any:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.transforms import DayTransform

    catalog = SqlCatalog("bench", uri=f"sqlite:///{directory}/catalog.db", warehouse=f"file://{directory}")
    catalog.create_namespace("archive")
    created = catalog.create_table("archive.orders", table.schema)
    with created.update_spec() as update:
        update.add_field("created_at", DayTransform(), "created_at_day")
    return catalog.load_table("archive.orders")


def pyiceberg_writer(table: pa.Table, batch_rows: int, directory: Path) -> int:
    from pyiceberg.io.pyarrow import pyarrow_to_schema, write_file
    from pyiceberg.table import WriteTask

    iceberg = iceberg_table(table, directory)
    planner = DataFileWriter(iceberg.metadata)  # only to cut the same files
    schema = pyarrow_to_schema(table.schema, name_mapping=iceberg.schema().name_mapping, format_version=2)
    files = 0
    for batch in batches(table, batch_rows):
        tasks = [
            WriteTask(uuid.uuid4(), number, schema, task.rows.to_batches(), partition_key=task.partition_key)
            for number, task in enumerate(planner._tasks(batch))
        ]
        files += len(list(write_file(iceberg.io, iceberg.metadata, iter(tasks))))
    return files


def cellar_writer(table: pa.Table, batch_rows: int, directory: Path) -> int:
    iceberg = iceberg_table(table, directory)
    writer = DataFileWriter(iceberg.metadata)
    return sum(len(writer.write(iceberg.io, batch)) for batch in batches(table, batch_rows))


def measure(write: Callable[[pa.Table, int, Path], int], table: pa.Table, batch_rows: int) -> tuple[float, float, int]:
    directory = Path(tempfile.mkdtemp(prefix="cellar-files-bench-"))
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        files = write(table, batch_rows, directory)
        return time.process_time() - cpu, time.perf_counter() - wall, files
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=800_000)
    parser.add_argument("--batch-rows", type=int, default=25_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    table = orders(args.rows)
    variants = {
        "(p) Parquet mode": parquet_mode,
        "(y) PyIceberg's writer": pyiceberg_writer,
        "(c) cellar's writer": cellar_writer,
    }
    best: dict[str, tuple[float, float, int]] = {}
    for round_number in range(1, args.rounds + 1):
        for name, write in variants.items():
            cpu, wall, files = measure(write, table, args.batch_rows)
            print(f"round {round_number} {name}: {cpu:.2f} CPU s, {wall:.2f} wall s, {files} files", flush=True)
            if name not in best or cpu < best[name][0]:
                best[name] = (cpu, wall, files)
    baseline = best["(p) Parquet mode"][0]
    print(f"\n{args.rows:,} rows in batches of {args.batch_rows:,}, a file a day; best of {args.rounds} rounds")
    print("| writer | files | CPU s | wall s | CPU over Parquet mode's |\n|---|---:|---:|---:|---:|")
    for name, (cpu, wall, files) in best.items():
        print(f"| {name} | {files} | {cpu:.2f} | {wall:.2f} | {cpu / baseline:.2f} |")


if __name__ == "__main__":
    main()
