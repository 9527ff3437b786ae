"""Every PostgreSQL type back exactly, against the real server: a table with every kind of column (arrays of any
depth and element, ranges, multiranges, intervals, money, network and bit types, xml, tsvector, composites,
domains, a column NULL in every row) archives, reads in DuckDB (nested lists for arrays), and unarchives to
equal values; arrays no Parquet type stores exactly are refused before the first batch."""

from __future__ import annotations

from pathlib import Path

import duckdb
import psycopg
import pyarrow as pa

from tests.integration.archive_helpers import archived_objects, dsn, ids_in_table, setup_archive
from tests.integration.environments import ArchiveEnv

EVERY_TYPE = r"""
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE point3 AS (x double precision, y double precision, label text);
CREATE TYPE detail AS (amount numeric(12,3), at timestamptz, m mood, ok boolean, n int, f real);
CREATE TYPE nested AS (p point3, tag text);
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE DOMAIN pair AS integer[] CHECK (cardinality(VALUE) = 2);
CREATE TABLE things (
    id bigint PRIMARY KEY, created_at timestamptz NOT NULL,
    grid integer[][], matrix float8[], cube text[], moods mood[], amounts numeric(10,2)[], stamps timestamptz[],
    spans int4range[], period tstzrange, money_spans nummultirange, gap interval, price money,
    host inet, net cidr, mac macaddr, mac8 macaddr8, flags bit(8), bits varbit, doc xml, words tsvector,
    place point3, places point3[], info detail, deep nested, count positive, two pair, nothing text,
    nothing_array integer[]
);
INSERT INTO things
SELECT g, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour',
       ARRAY[[g, NULL], [-g, 2147483647]],
       ARRAY[[[g / 3.0, 'Infinity'], ['NaN', -0.0]], [[1e-300, 1.5], [2.25, NULL]]],
       ARRAY[['a"b', 'c\d'], [NULL, E'new\nline, {braces}']],
       ARRAY['sad', 'happy', NULL]::mood[], ARRAY[1.25, NULL, g]::numeric(10,2)[],
       ARRAY[timestamptz '2024-02-29 12:34:56.789012+00', NULL],
       ARRAY[int4range(g, g + 10), 'empty'::int4range, int4range(NULL, 3)],
       tstzrange('2024-01-01', '2024-02-01', '[)'), nummultirange(numrange(1, 2.5), numrange(10, NULL)),
       interval '1 year 2 months 3 days 04:05:06.789' * g, (g * 1.5)::money,
       ('10.0.' || (g % 250) || '.1/24')::inet, '192.168.0.0/16', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05',
       (g % 256)::bit(8), B'10101', xmlparse(document '<a b="1">t &amp; ' || g || '</a>'),
       to_tsvector('english', 'the quick brown foxes jumped ' || g),
       ROW(g, -g, 'label, "quoted"')::point3, ARRAY[ROW(1, 2, 'x')::point3, NULL],
       CASE g % 5 WHEN 0 THEN NULL WHEN 1 THEN ROW(NULL, NULL, NULL, NULL, NULL, NULL)::detail
            ELSE ROW(g * 1.001, '2024-01-01'::timestamptz + g * interval '1 minute', 'ok', g % 2 = 0, -g,
                     CASE WHEN g % 7 = 0 THEN 'NaN'::real ELSE g / 3.0 END)::detail END,
       ROW(ROW(g, 0, NULL)::point3, 'tag ' || g)::nested,
       g, ARRAY[g, g + 1], NULL, NULL
FROM generate_series(1, 50) g;
INSERT INTO things (id, created_at, grid, cube) VALUES (1000, '2024-06-01', '{}', '{}');  -- empty arrays
INSERT INTO things (id, created_at) VALUES (5000, now());  -- recent: stays
"""


def rows(database: dict[str, str], table: str) -> list[str]:
    with psycopg.connect(dsn(database)) as conn:
        return [str(r[0]) for r in conn.execute(f"SELECT t::text FROM {table} t ORDER BY id").fetchall()]


def test_every_type_archives_reads_in_duckdb_and_unarchives_equal(archive_env: ArchiveEnv) -> None:
    env = archive_env
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute(EVERY_TYPE)
    before = rows(env.database, "things")
    setup_archive(env, table="things", name="things")
    assert env.run(name="things") == 0
    assert ids_in_table(env.database, "things") == {5000}

    objects = archived_objects(env.s3, env.bucket, "public.things")
    schema = next(iter(objects.values())).schema
    assert schema.field("grid").type == pa.list_(pa.list_(pa.int32()))  # two dimensions, two lists
    assert schema.field("matrix").type == pa.list_(pa.list_(pa.list_(pa.float64())))
    assert schema.field("cube").type == pa.list_(pa.list_(pa.string()))
    assert schema.field("moods").type == pa.list_(pa.string())
    assert schema.field("place").type == pa.struct([("x", pa.float64()), ("y", pa.float64()), ("label", pa.string())])
    assert schema.field("info").type.get_field_index("amount") == 0  # a struct; its numeric as exact text
    assert schema.field("deep").type == pa.string()  # a composite holding a composite: its exact text

    local = Path(env.kubeconfig).parent / "lake-types"
    for key in objects:
        target = local / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(env.s3.get_object(Bucket=env.bucket, Key=key)["Body"].read())
    found = (
        duckdb.connect()
        .execute(
            "SELECT grid[2][1], matrix[1][1][2], cube[2][2], place.x, info.amount "
            f"FROM read_parquet('{local}/test/public.things/*/*.parquet') WHERE id = 7"
        )
        .fetchone()
    )
    assert found == (-7, float("inf"), "new\nline, {braces}", 7.0, "7.007")

    assert env.run("unarchive", "--from", "2000-01-01", "--to", "2100-01-01", name="things") == 0
    restored = rows(env.database, "things_unarchived")
    assert restored == before[:-1]  # value by value, as PostgreSQL prints them; the recent row never left


def test_arrays_no_parquet_type_stores_exactly_are_refused_before_the_first_batch(archive_env: ArchiveEnv) -> None:
    env = archive_env
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("CREATE TABLE shapes (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, a integer[])")
        conn.execute(
            "INSERT INTO shapes SELECT g, '2024-01-01'::timestamptz + g * interval '1 day', "
            "CASE WHEN g % 2 = 0 THEN ARRAY[g] ELSE ARRAY[[g], [g]] END FROM generate_series(1, 20) g"
        )
    setup_archive(env, table="shapes", name="shapes")
    assert env.run("--dry-run", name="shapes") == 3
    assert env.run(name="shapes") == 3
    failed = env.conditions("TableArchive", "shapes")["ArchiveSucceeded"]
    assert failed["reason"] == "EncodingFailed"
    assert "1 to 2 dimensions" in failed["message"]
    assert "spec.filter" in failed["message"]
    assert len(ids_in_table(env.database, "shapes")) == 20  # nothing moved

    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute("UPDATE shapes SET a = '[0:0]={1}' WHERE id % 2 = 0")  # subscripts from 0
        conn.execute("UPDATE shapes SET a = ARRAY[id] WHERE id % 2 = 1")
    assert env.run(name="shapes") == 3
    assert "do not start at 1" in env.conditions("TableArchive", "shapes")["ArchiveSucceeded"]["message"]
    assert len(ids_in_table(env.database, "shapes")) == 20


def test_every_type_round_trips_through_gzip_csv_files_too(archive_env: ArchiveEnv) -> None:
    env = archive_env
    with psycopg.connect(dsn(env.database), autocommit=True) as conn:
        conn.execute(EVERY_TYPE)
    before = rows(env.database, "things")
    setup_archive(env, table="things", name="things", format="CSVGzip")
    assert env.run(name="things") == 0
    assert env.run("unarchive", "--from", "2000-01-01", "--to", "2100-01-01", name="things") == 0
    assert rows(env.database, "things_unarchived") == before[:-1]
