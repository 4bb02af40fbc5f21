"""The PostgreSQL store's catalog writes, with the invariants of ``deltamem.store.sqlite_catalog``.

    create_table_def(conn, TableDef("docs", "id"))   # inside the store's write transaction

A name is one table or one view, never two definitions; every change to ``table_defs`` or ``view_defs`` (bar
``applied_version`` and the baselines) bumps ``meta.catalog_version`` in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.types.json import Json, Jsonb

from deltamem.errors import AlreadyExists, CatalogChanged, NoTable
from deltamem.store.base import TableDef
from deltamem.store.sqlite_catalog import describe_table


def dumps(value: Any) -> str:
    """Sorted-key JSON, as the SQLite store writes it; NaN and Infinity refused, as JSON has neither."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def jsonb(value: Any) -> Jsonb:
    return Jsonb(value, dumps=dumps)


def bump_catalog_version(conn: psycopg.Connection) -> None:
    """Count one catalog change (the caller's transaction)."""
    conn.execute("INSERT INTO meta VALUES ('catalog_version', '1') ON CONFLICT (name) DO UPDATE SET "
                 "value = (meta.value::bigint + 1)::text")


def get_table_def(conn: psycopg.Connection, name: str) -> TableDef | None:
    found = conn.execute("SELECT def FROM table_defs WHERE name = %s", (name,)).fetchone()
    return None if found is None else TableDef.from_json(found[0])


def create_table_def(conn: psycopg.Connection, table: TableDef) -> None:
    """Create ``table``, or do nothing when the store has that very definition; ``AlreadyExists`` otherwise."""
    if conn.execute("SELECT 1 FROM view_defs WHERE name = %s", (table.name,)).fetchone():
        raise AlreadyExists(f'"{table.name}" is already a view (created by another process?)')
    stored = get_table_def(conn, table.name)
    if stored == table:
        return
    if stored is not None:
        raise AlreadyExists(f'Table "{table.name}" exists with another definition (created by another process?): '
                            f"{describe_table(stored)}; drop it first, or pick another name")
    conn.execute("INSERT INTO table_defs VALUES (%s, %s)", (table.name, jsonb(table.to_json())))
    bump_catalog_version(conn)


def save_table_defs(conn: psycopg.Connection, table_defs: Sequence[TableDef], checked: Sequence[TableDef]) -> None:
    """Check that the store still has each of ``checked``, then save ``table_defs`` (see ``sqlite_catalog``)."""
    for expected in checked:
        stored = get_table_def(conn, expected.name)
        if stored is None:
            raise NoTable(f'Table "{expected.name}" does not exist (dropped by another process?); nothing was '
                          "committed")
        if stored != expected:
            raise CatalogChanged(f'Table "{expected.name}" was changed by another process after this write was '
                                 f"checked: it is now {describe_table(stored)}; nothing was committed, write again")
    for table in table_defs:
        if get_table_def(conn, table.name) != table:
            conn.execute("INSERT INTO table_defs VALUES (%s, %s) ON CONFLICT (name) DO UPDATE SET def = excluded.def",
                         (table.name, jsonb(table.to_json())))
            bump_catalog_version(conn)


def create_view_def(conn: psycopg.Connection, name: str, plan: dict[str, Any], *, replace: bool) -> None:
    """Create view ``name`` with ``plan`` (see ``Store.put_view_def``): a no-op for the stored plan, ``AlreadyExists``
    for a table's name or another plan, unless ``replace``."""
    if conn.execute("SELECT 1 FROM table_defs WHERE name = %s", (name,)).fetchone():
        raise AlreadyExists(f'"{name}" is already a table (created by another process?)')
    found = conn.execute("SELECT def FROM view_defs WHERE name = %s", (name,)).fetchone()
    if found is not None and found[0] == plan:
        return
    if found is not None and not replace:
        raise AlreadyExists(f'View "{name}" exists with another definition (created by another process?); pick a new '
                            "name")
    # json, not jsonb: in the plan's own key order, which every process then shows (EXPLAIN, SHOW).
    conn.execute("INSERT INTO view_defs (name, def) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE SET def = "
                 "excluded.def", (name, Json(plan, dumps=lambda v: json.dumps(v, separators=(",", ":"),
                                                                             allow_nan=False))))
    bump_catalog_version(conn)
