"""Shared set-up for the backup job's integration tests."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import psycopg
from kubernetes import client

from tests.harness.stack import LocalStack

TYPES_SCHEMA = r'''
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE SCHEMA sales;
CREATE SCHEMA "Mixed Case";
CREATE TABLE public.everything (
    id bigserial PRIMARY KEY,
    small smallint, big bigint, num numeric, num_fixed numeric(12, 4), r real, d double precision,
    t text, v varchar(20), b boolean, day date, ts timestamp, tstz timestamptz, u uuid,
    j json, jb jsonb, raw bytea, ints integer[], texts text[], feeling mood, big_text text
);
CREATE TABLE sales.orders (id int PRIMARY KEY, everything_id bigint REFERENCES public.everything(id),
                           placed timestamptz NOT NULL DEFAULT now(), note text);
CREATE INDEX orders_placed ON sales.orders (placed);
CREATE TABLE "Mixed Case"."Weird ""Name""" (k text PRIMARY KEY, v jsonb);
CREATE VIEW sales.recent AS SELECT * FROM sales.orders WHERE placed > now() - interval '1 day';
CREATE FUNCTION sales.double(x int) RETURNS int LANGUAGE sql AS 'SELECT x * 2';
'''

TYPES_DATA = r'''
INSERT INTO public.everything (small, big, num, num_fixed, r, d, t, v, b, day, ts, tstz, u, j, jb, raw, ints, texts,
                               feeling, big_text)
SELECT (g % 30000)::smallint, g::bigint * 1000000007, (g::numeric / 7) ^ 3, round(g / 3.0, 4), g / 3.0, g / 7.0,
       'row ' || g || E' with \\ttab and ''quote'' and ünïcödé', left(md5(g::text), 20), g % 2 = 0,
       date '2020-01-01' + g, timestamp '2020-01-01 00:00:00.123456' + g * interval '1 hour',
       timestamptz '2020-01-01 00:00:00.654321+05' + g * interval '1 minute',
       md5(g::text)::uuid, json_build_object('g', g, 'nested', json_build_array(1, 'two', null)),
       jsonb_build_object('g', g, 'deep', jsonb_build_object('k', repeat('x', g % 50))),
       decode(md5(g::text), 'hex') || '\x00ff'::bytea, ARRAY[g, g + 1, NULL], ARRAY['a', NULL, 'c' || g],
       (ARRAY['sad', 'ok', 'happy'])[g % 3 + 1]::mood, repeat('large text ', 2000 + g % 100)
FROM generate_series(1, 500) g;
INSERT INTO public.everything (small) VALUES (NULL);  -- a row of NULLs
INSERT INTO public.everything (num, r, d) VALUES ('NaN', 'Infinity', '-Infinity');
INSERT INTO sales.orders
  SELECT g, g, timestamptz '2026-01-01' + g * interval '1 second', NULL FROM generate_series(1, 300) g;
INSERT INTO "Mixed Case"."Weird ""Name""" VALUES ('a', '{"x": 1}'), ('b', 'null'), ('c', NULL);
'''


def load_sample_data(stack: LocalStack, database: dict[str, Any]) -> None:
    with psycopg.connect(_dsn(database), autocommit=True) as conn:
        conn.execute(TYPES_SCHEMA)
        conn.execute(TYPES_DATA)


def _dsn(database: dict[str, Any], dbname: str | None = None) -> str:
    return (
        f"host={database['host']} port={database['port']} dbname={dbname or database['dbname']} "
        f"user={database['username']} password={database['password']}"
    )


def table_contents(database: dict[str, Any], dbname: str | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """Every user table's rows, sorted, as text (exact for every type)."""
    contents = {}
    with psycopg.connect(_dsn(database, dbname)) as conn:
        tables = conn.execute(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
        ).fetchall()
        for (table,) in tables:
            rows = conn.execute(f"SELECT t::text FROM {table} t ORDER BY 1").fetchall()
            contents[table] = rows
    return contents


def schema_of(stack: LocalStack, database: dict[str, Any], dbname: str | None = None) -> str:
    result = subprocess.run(
        [
            "pg_dump",
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "-h",
            database["host"],
            "-p",
            str(database["port"]),
            "-U",
            database["username"],
            dbname or database["dbname"],
        ],
        env={"PGPASSWORD": database["password"], "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    # pg_dump 15.14+ wraps its output in \\restrict/\\unrestrict with a random key per run.
    ignored = ("--", "\\restrict", "\\unrestrict")
    return "\n".join(line for line in result.stdout.splitlines() if not line.startswith(ignored))


def setup_backup(
    stack: LocalStack,
    database: dict[str, Any],
    storage_spec: dict[str, Any],
    create_secret: Callable[[str, dict[str, str]], None],
    create_resource: Callable[..., Any],
    name: str = "orders",
    **spec: Any,
) -> dict[str, Any]:
    create_secret("cellar-database", database)
    return create_resource(
        "DatabaseBackup",
        {
            "metadata": {"name": name},
            "spec": {
                "database": {"secretRef": {"name": "cellar-database"}, "sslMode": "disable"},
                "storage": storage_spec,
                **spec,
            },
        },
    )


def run_backup_job(kubeconfig: Any, namespace: str, *args: str, name: str = "orders") -> int:
    from jobs.backup.__main__ import main

    return main([*args, "--kubeconfig", str(kubeconfig), "--namespace", namespace, "--name", name])


def get_status(admin_api: Any, namespace: str, plural: str, name: str) -> dict[str, Any]:
    stored = client.CustomObjectsApi(admin_api).get_namespaced_custom_object(
        "cellar.dev", "v1alpha1", namespace, plural, name
    )
    return dict(stored.get("status") or {})


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions", [])}
