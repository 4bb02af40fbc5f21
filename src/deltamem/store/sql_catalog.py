"""A SQL store's catalog writes: the one truth about tables and views for every process on the store.

    create_table_def(SQLITE, conn, TableDef("docs", "id"))   # inside the store's write transaction

Written once for SQLite and PostgreSQL; the ``Dialect`` argument supplies placeholders and JSON encoding.

Invariants: a name is one table or one view, never both, and never two definitions: a CREATE that finds the name
taken by anything but its very definition raises ``AlreadyExists`` and writes nothing (the catalog is never
upserted). A table's definition changes after its creation only from "no columns yet" to the columns inferred from
its first row, and only when the writer checked that row against "no columns yet" (``save_table_defs``). Every change
to ``table_defs`` or ``view_defs`` (bar ``applied_version`` and the baselines) bumps ``meta.catalog_version`` in the
same transaction, so a process whose cached catalog has the store's number has the store's catalog.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deltamem.errors import AlreadyExists, CatalogChanged, NoTable
from deltamem.store.base import TableDef
from deltamem.store.sql_dialect import Connection, Dialect


def get_catalog_version(conn: Connection) -> int:
    found = conn.execute("SELECT value FROM meta WHERE name = 'catalog_version'").fetchone()
    return 0 if found is None else int(found[0])


def bump_catalog_version(conn: Connection) -> None:
    """Count one catalog change (the caller's transaction)."""
    conn.execute("INSERT INTO meta VALUES ('catalog_version', '1') ON CONFLICT (name) DO UPDATE SET "
                 "value = CAST(CAST(meta.value AS BIGINT) + 1 AS TEXT)")


def get_table_def(dialect: Dialect, conn: Connection, name: str) -> TableDef | None:
    found = conn.execute(dialect.sql("SELECT def FROM table_defs WHERE name = ?"), (name,)).fetchone()
    return None if found is None else TableDef.from_json(dialect.decode(found[0]))


def create_table_def(dialect: Dialect, conn: Connection, table: TableDef) -> None:
    """Create ``table``, or do nothing when the store has that very definition; ``AlreadyExists`` otherwise."""
    if conn.execute(dialect.sql("SELECT 1 FROM view_defs WHERE name = ?"), (table.name,)).fetchone():
        raise AlreadyExists(f'"{table.name}" is already a view (created by another process?)')
    stored = get_table_def(dialect, conn, table.name)
    if stored == table:
        return
    if stored is not None:
        raise AlreadyExists(f'Table "{table.name}" exists with another definition (created by another process?): '
                            f"{describe_table(stored)}; drop it first, or pick another name")
    conn.execute(dialect.sql("INSERT INTO table_defs VALUES (?, ?)"), (table.name, dialect.encode(table.to_json())))
    bump_catalog_version(conn)


def save_table_defs(dialect: Dialect, conn: Connection, table_defs: Sequence[TableDef],
                    checked: Sequence[TableDef]) -> None:
    """Check that the store still has each of ``checked``, then save ``table_defs`` (created, or replacing their
    stored definitions): ``NoTable`` or ``CatalogChanged`` when a checked table was dropped or changed meanwhile."""
    for expected in checked:
        stored = get_table_def(dialect, conn, expected.name)
        if stored is None:
            raise NoTable(f'Table "{expected.name}" does not exist (dropped by another process?); nothing was '
                          "committed")
        if stored != expected:
            raise CatalogChanged(f'Table "{expected.name}" was changed by another process after this write was '
                                 f"checked: it is now {describe_table(stored)}; nothing was committed, write again")
    for table in table_defs:
        if get_table_def(dialect, conn, table.name) != table:
            conn.execute(dialect.sql("INSERT INTO table_defs VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET "
                                     "def = excluded.def"), (table.name, dialect.encode(table.to_json())))
            bump_catalog_version(conn)


def create_view_def(dialect: Dialect, conn: Connection, name: str, plan: dict[str, Any], *, replace: bool) -> None:
    """Create view ``name`` with ``plan`` (see ``Store.put_view_def``): a no-op for the stored plan, ``AlreadyExists``
    for a table's name or another plan, unless ``replace``."""
    if conn.execute(dialect.sql("SELECT 1 FROM table_defs WHERE name = ?"), (name,)).fetchone():
        raise AlreadyExists(f'"{name}" is already a table (created by another process?)')
    found = conn.execute(dialect.sql("SELECT def FROM view_defs WHERE name = ?"), (name,)).fetchone()
    if found is not None and dialect.decode(found[0]) == plan:
        return
    if found is not None and not replace:
        raise AlreadyExists(f'View "{name}" exists with another definition (created by another process?); pick a new '
                            "name")
    # In the plan's own key order, not sorted: every process then shows (EXPLAIN, SHOW) the order its author wrote.
    conn.execute(dialect.sql("INSERT INTO view_defs (name, def) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET "
                             "def = excluded.def"), (name, dialect.encode_in_order(plan)))
    bump_catalog_version(conn)


def describe_table(table: TableDef) -> str:
    """``key 'id', columns (id int, text text)``: what a conflict message shows of a definition."""
    columns = table.describe_columns()
    return f"key {table.key!r}, {columns if table.columns is None else 'columns ' + columns}"
