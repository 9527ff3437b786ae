"""Choosing what a partial restore takes from pg_restore's table of contents. The listing is real output of
`pg_restore -l -v` (PostgreSQL 15) for a schema `sales` with orders (identity key, an index, a trigger, a
comment, a grant, a foreign key to public.customers), items (a serial key and a foreign key to orders) and
a view over orders."""

from __future__ import annotations

from pathlib import Path

from jobs.backup.toc import Selection, missing_names, parse_toc, select_entries

LISTING = (Path(__file__).parent / "data" / "toc_pg15.txt").read_text()


def chosen(selection: Selection) -> list[str]:
    return [
        f"{e.description} {e.rest.rsplit(' ', 1)[0]}" for e in select_entries(parse_toc(LISTING), selection).entries
    ]


def test_the_listing_is_read_with_its_dependencies() -> None:
    entries = {e.dump_id: e for e in parse_toc(LISTING)}
    assert entries[3374].description == "TABLE DATA"
    assert entries[3383].description == "SEQUENCE OWNED BY"
    assert entries[3226].description == "FK CONSTRAINT"
    assert entries[3226].depends_on == [220, 3222, 218]
    assert entries[3227].is_of("sales", "orders")
    assert not entries[3226].is_of("sales", "orders")


def test_one_table_comes_with_what_belongs_to_it_and_nothing_of_other_tables() -> None:
    assert chosen(Selection(tables=(("sales", "orders"),))) == [
        "TABLE sales orders",
        "COMMENT sales TABLE orders",
        "ACL sales TABLE orders",
        "SEQUENCE sales orders_id_seq",  # its identity
        "TABLE DATA sales orders",
        "SEQUENCE SET sales orders_id_seq",
        "CONSTRAINT sales orders orders_pkey",
        "INDEX sales orders_customer",
        "TRIGGER sales orders orders_touch",
        "FK CONSTRAINT sales orders orders_customer_fkey",  # its own foreign key; items' to it stays out
    ]


def test_a_serial_key_brings_its_sequence_owned_by_and_default() -> None:
    names = chosen(Selection(tables=(("sales", "items"),)))
    assert "SEQUENCE sales items_id_seq" in names
    assert "SEQUENCE OWNED BY sales items_id_seq" in names
    assert "DEFAULT sales items id" in names
    assert "FK CONSTRAINT sales items items_order_id_fkey" in names
    assert not any("orders" in name and "items" not in name for name in names)


def test_without_data_only_definitions() -> None:
    names = chosen(Selection(tables=(("sales", "orders"),), data=False))
    assert "TABLE sales orders" in names
    assert not any(name.startswith(("TABLE DATA", "SEQUENCE SET")) for name in names)


def test_a_whole_schema_comes_with_its_views_and_functions() -> None:
    selected = select_entries(parse_toc(LISTING), Selection(schemas=("sales",)))
    names = [f"{e.description} {e.rest.rsplit(' ', 1)[0]}" for e in selected.entries]
    assert names[0] == "SCHEMA - sales"
    assert "FUNCTION sales touch()" in names
    assert "VIEW sales big" in names
    assert not any(" public " in f" {name} " for name in names)
    assert selected.tables == [("sales", "big"), ("sales", "items"), ("sales", "orders")]  # the view too
    assert selected.schemas == ["sales"]


def test_names_the_backup_does_not_hold_are_reported() -> None:
    entries = parse_toc(LISTING)
    selection = Selection(schemas=("sales", "billing"), tables=(("sales", "orders"), ("public", "invoices")))
    assert missing_names(entries, selection) == ["table public.invoices", "schema billing"]


def test_foreign_keys_to_tables_left_behind_are_known() -> None:
    selected = select_entries(parse_toc(LISTING), Selection(tables=(("sales", "orders"),)))
    assert selected.foreign_keys_needing() == {3225: [("public", "customers")]}
    without = selected.without({3225})
    assert [e.dump_id for e in without.entries] == [e.dump_id for e in selected.entries if e.dump_id != 3225]
    both = select_entries(parse_toc(LISTING), Selection(tables=(("sales", "orders"), ("public", "customers"))))
    assert both.foreign_keys_needing() == {}
