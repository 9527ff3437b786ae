"""Every type of the archive's type matrix (test_archive_types.EVERY_TYPE) through an Iceberg table: the Iceberg
types the design lists, written in small batches and compacted by the run's maintenance, read by DuckDB's iceberg
extension, and back into PostgreSQL equal, value by value."""

from __future__ import annotations

from tests.integration.archive_helpers import ids_in_table
from tests.integration.environments import ArchiveEnv
from tests.integration.iceberg_helpers import (
    duckdb_over_minio,
    iceberg_catalog,
    metadata_location,
    setup_iceberg_archive,
)
from tests.integration.test_archive_types import EVERY_TYPE, rows


def test_every_type_archives_into_iceberg_reads_in_duckdb_and_unarchives_equal(archive_env: ArchiveEnv) -> None:
    import psycopg

    from tests.integration.archive_helpers import dsn

    env = archive_env
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute(EVERY_TYPE)
    before = rows(env.database, "things")
    # Batches of 8 rows: seven files in the one partition Auto chooses for 51 rows (a year), which the maintenance
    # at the run's end reads and writes again as one, so every value below is read from the compaction's file.
    setup_iceberg_archive(env, table="things", name="things", batch={"rows": 8, "parallelism": 1})
    assert env.run(name="things") == 0
    assert ids_in_table(env.database, "things") == {5000}
    maintained = env.status("TableArchive", "things")["lastMaintenance"]
    assert (maintained["filesRewritten"], maintained["filesWritten"]) == (7, 1)

    schema = iceberg_catalog(env).load_table(("public", "things")).schema()
    types = {field.name: str(field.field_type) for field in schema.fields}
    assert types["id"] == "long"
    assert types["created_at"] == "timestamptz"
    assert types["nothing"] == "string"
    assert types["count"] == "string"  # a domain: its text, as in Parquet
    assert types["grid"].startswith("list<list<int>")  # two dimensions, two lists
    assert types["place"].startswith("struct<")
    assert types["deep"] == "string"  # a composite holding a composite: its exact text
    assert types["price"] == "string"  # money, as PostgreSQL prints it

    found = (
        duckdb_over_minio(env)
        .execute(
            "SELECT grid[2][1], matrix[1][1][2], cube[2][2], place.x, info.amount "
            f"FROM iceberg_scan('{metadata_location(env, table='things')}') WHERE id = 7"
        )
        .fetchone()
    )
    assert found == (-7, float("inf"), "new\nline, {braces}", 7.0, "7.007")

    assert env.run("unarchive", "--from", "2000-01-01", "--to", "2100-01-01", name="things") == 0
    assert rows(env.database, "things_unarchived") == before[:-1]  # the recent row never left
