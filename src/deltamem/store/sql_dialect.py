"""What the SQL stores' shared code asks of a database: the few statements SQLite and PostgreSQL spell differently.

    conn.execute(dialect.sql("SELECT def FROM table_defs WHERE name = ?"), (name,))   # "?" becomes "%s" on PostgreSQL

The shared modules (``sql_store``, ``sql_catalog``, ``sql_coordination``, ``sql_ledger``) write their SQL once, with
``?`` for each parameter, and call a ``Dialect`` for what differs: the placeholder, how a JSON value is written and
read back, upserts, membership in a list, summed numbers, and the id of a row just inserted. ``SQLITE`` is here;
the PostgreSQL dialect is in ``postgres_dialect`` so that the SQLite store never imports psycopg.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from deltamem.store.base import CallCost


class Connection(Protocol):
    """The part of ``sqlite3.Connection`` and ``psycopg.Connection`` the shared code uses."""

    def execute(self, sql: Any, params: Any = ..., /) -> Any: ...


# One encoder each, made once: ``json.dumps`` with options builds an encoder per call, a cost paid per stored value.
_SORTED = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)
_IN_ORDER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> str:
    """Sorted-key JSON, as both stores write it. allow_nan=False: JSON has no NaN or Infinity, and SQLite's
    json_extract rejects them on every later read."""
    return _SORTED.encode(value)


def dumps_in_order(value: Any) -> str:
    """JSON in ``value``'s own key order: a view's plan, which every process then shows (EXPLAIN, SHOW) as its author
    wrote it."""
    return _IN_ORDER.encode(value)


class Dialect:
    """One database's spelling of the shared SQL; as it stands, SQLite's (``SQLITE``). Invariant: ``sql`` maps a
    statement written with ``?`` to one that runs unchanged in meaning; ``encode`` then ``decode`` of a JSON value
    gives back an equal value."""

    # Most list members bound in one statement (SQLite's bound-parameter limit); lists beyond it are read in chunks.
    chunk = 500

    def sql(self, text: str) -> str:
        return text

    def encode(self, value: Any) -> Any:
        """A JSON value as a bound parameter (sorted keys)."""
        return dumps(value)

    def encode_in_order(self, value: Any) -> Any:
        """A JSON value as a bound parameter, in its own key order."""
        return dumps_in_order(value)

    def decode(self, stored: Any) -> Any:
        """A JSON column's value as read back (None for SQL NULL)."""
        return None if stored is None else json.loads(stored)

    def cost(self, calls: Any, prompt: Any, output: Any, seconds: Any) -> CallCost:
        """A ``CallCost`` from the numbers a query summed (as the database returns them)."""
        return CallCost(calls, prompt, output, seconds)

    def executemany(self, conn: Any, sql: str, rows: list[tuple]) -> None:
        """Run ``sql`` (written with ``?``) once per row of ``rows``."""
        conn.executemany(self.sql(sql), rows)

    def upsert(self, table: str, columns: str, key: str) -> str:
        """An INSERT of every one of ``columns`` that replaces the row of the same ``key``."""
        marks = ", ".join("?" * len(columns.split(", ")))
        return f"INSERT OR REPLACE INTO {table} ({columns}) VALUES ({marks})"

    def insert_or_ignore(self, table: str, count: int) -> str:
        """An INSERT of ``count`` values that does nothing where the row's key is taken."""
        return f"INSERT OR IGNORE INTO {table} VALUES ({', '.join('?' * count)})"

    def in_list(self, column: str, values: list[Any]) -> tuple[str, list[Any]]:
        """``column`` is one of ``values``: the condition and its parameters."""
        return f"{column} IN ({','.join('?' * len(values))})", list(values)

    def in_long_list(self, column: str, values: list[Any]) -> tuple[str, list[Any]]:
        """``column`` is one of ``values``, however many: as one JSON parameter (json_each), as a list of them could
        pass SQLite's bound-parameter limit."""
        return f"{column} IN (SELECT value FROM json_each(?))", [json.dumps(values)]

    def insert_keys(self, conn: Any, table: str, keys: list[Any]) -> None:
        """Insert each of ``keys`` into the one-column ``table``, skipping those it has."""
        conn.executemany(f"INSERT OR IGNORE INTO {table} VALUES (?)", [(key,) for key in keys])

    def insert_id(self, conn: Connection, sql: str, params: Any) -> int:
        """Run the INSERT ``sql`` (written with ``?``) and return the id of its row."""
        cursor = conn.execute(self.sql(sql), params)
        assert cursor.lastrowid is not None, "store: an INSERT has a rowid"
        return cursor.lastrowid


SQLITE = Dialect()
