"""Restoring part of a backup (DatabaseRestore spec.select) against the real servers: a table dropped by
mistake comes back alone into the live database, with its indexes, constraints and view, and nothing else
there is touched; a restore that would overwrite refuses up front; names the backup lacks are refused."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.integration.backup_helpers import load_sample_data, table_contents
from tests.integration.environments import BackupEnv


def restore_into_live(env: BackupEnv, name: str, **spec: Any) -> int:
    """A DatabaseRestore of the newest backup into the backed-up database itself, and its run."""
    env.create_restore(name, env.database, env.database["dbname"], createDatabase=False, **spec)
    return env.run("restore", name=name)


def test_a_dropped_table_comes_back_alone_into_the_live_database(backup_env: BackupEnv) -> None:
    env = backup_env
    load_sample_data(env.stack, env.database)
    env.setup()
    assert env.run() == 0
    before = table_contents(env.database)
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        indexes = conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'orders' ORDER BY 1").fetchall()
        # A change since the backup, to a row no order references: the restore must not undo it.
        conn.execute(
            "DELETE FROM public.everything WHERE id = (SELECT min(id) FROM public.everything e WHERE NOT EXISTS "
            "(SELECT FROM sales.orders o WHERE o.everything_id = e.id))"
        )
        conn.execute("DROP TABLE sales.orders CASCADE")  # the mistake; the view on it goes too

    selection = {"tables": ["sales.orders", "sales.recent"]}
    assert restore_into_live(env, "orders-back", select=selection) == 0
    succeeded = env.conditions("DatabaseRestore", "orders-back")["Succeeded"]
    assert "sales.orders, sales.recent" in succeeded["message"]
    after = table_contents(env.database)
    assert after["sales.orders"] == before["sales.orders"]
    # The rest of the live database is as it was: the row deleted since the backup stays deleted.
    assert len(after["public.everything"]) == len(before["public.everything"]) - 1
    with psycopg.connect(env.dsn) as conn:
        assert conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'orders' ORDER BY 1").fetchall() == (
            indexes
        )
        assert conn.execute("SELECT count(*) FROM sales.recent").fetchone() is not None
        foreign_keys = conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'sales.orders'::regclass AND contype = 'f'"
        ).fetchone()
        assert foreign_keys == (1,)

    # Again: the table is there now, so the restore refuses before writing anything.
    assert restore_into_live(env, "orders-again", select=selection) == 3
    refused = env.conditions("DatabaseRestore", "orders-again")["Succeeded"]
    assert refused["reason"] == "TableExists"
    assert "table sales.orders" in refused["message"]
    assert "spec.clean" in refused["message"]
    assert table_contents(env.database) == after

    # A name the backup does not hold.
    assert restore_into_live(env, "nope", select={"tables": ["sales.invoices"]}) == 3
    refused = env.conditions("DatabaseRestore", "nope")["Succeeded"]
    assert refused["reason"] == "InvalidSpec"
    assert "holds no table sales.invoices" in refused["message"]


def test_a_schema_without_its_rows_into_a_new_database(backup_env: BackupEnv) -> None:
    env = backup_env
    load_sample_data(env.stack, env.database)
    env.setup()
    assert env.run() == 0
    target = f"{env.database['dbname']}_sales"
    env.create_restore("sales-only", env.database, target, select={"schemas": ["sales"], "data": False})
    assert env.run("restore", name="sales-only") == 0
    # Its foreign key to public.everything, which this restore does not create, is left out, and said so.
    message = env.conditions("DatabaseRestore", "sales-only")["Succeeded"]["message"]
    assert "left out foreign key sales orders orders_everything_id_fkey (it references public.everything)" in message
    restored = table_contents(env.database, target)
    assert restored == {"sales.orders": []}  # the schema's table, empty; nothing of public or "Mixed Case"
    with psycopg.connect(env.on({**env.database, "dbname": target}).dsn) as conn:
        assert conn.execute("SELECT to_regclass('sales.recent') IS NOT NULL").fetchone() == (True,)
        assert conn.execute("SELECT to_regprocedure('sales.double(integer)') IS NOT NULL").fetchone() == (True,)


def test_a_partial_restore_of_a_damaged_backup_writes_nothing(backup_env: BackupEnv) -> None:
    # pg_restore may commit a partial restore before the end of the stream, so the whole object's
    # checksum is checked before it starts.
    env = backup_env
    load_sample_data(env.stack, env.database)
    env.setup()
    assert env.run() == 0
    key = env.status("DatabaseBackup", "orders")["lastSuccessfulBackup"]["key"]
    stored = bytearray(env.s3.get_object(Bucket=env.bucket, Key=key)["Body"].read())
    stored[-100] ^= 0xFF  # near the end: past every table's data pg_restore would need
    env.s3.put_object(Bucket=env.bucket, Key=key, Body=bytes(stored))
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute('DROP TABLE "Mixed Case"."Weird ""Name"""')
    assert restore_into_live(env, "weird-back", select={"tables": ['Mixed Case.Weird "Name"']}) == 3
    assert env.conditions("DatabaseRestore", "weird-back")["Succeeded"]["reason"] == "ChecksumMismatch"
    with psycopg.connect(env.dsn) as conn:
        found = conn.execute(
            "SELECT to_regclass(quote_ident(%s) || '.' || quote_ident(%s))", ("Mixed Case", 'Weird "Name"')
        )
        assert found.fetchone() == (None,)
