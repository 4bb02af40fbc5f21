"""PostgreSQL's spelling of the SQL stores' shared statements (``deltamem.store.sql_dialect``).

    POSTGRES.sql("SELECT def FROM table_defs WHERE name = ?")   # "SELECT def FROM table_defs WHERE name = %s"
"""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Json, Jsonb

from deltamem.store.base import CallCost
from deltamem.store.sql_dialect import Connection, Dialect, dumps, dumps_in_order


class PostgresDialect(Dialect):
    """psycopg's ``%s`` placeholders, jsonb columns (read back decoded by the pool's loader), ``ON CONFLICT`` upserts
    and ``= ANY(array)`` lists. Invariant: the shared SQL has no literal ``?`` or ``%`` of its own, so ``sql`` only
    rewrites placeholders."""

    chunk = 1 << 62  # one array parameter: no limit to chunk under

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def encode(self, value: Any) -> Any:
        return Jsonb(value, dumps=dumps)

    def encode_in_order(self, value: Any) -> Any:
        # json, not jsonb: jsonb would sort the keys.
        return Json(value, dumps=dumps_in_order)

    def decode(self, stored: Any) -> Any:
        return stored

    def cost(self, calls: Any, prompt: Any, output: Any, seconds: Any) -> CallCost:
        # SUM of an integer column is numeric (Decimal) in PostgreSQL.
        return CallCost(int(calls), int(prompt), int(output), float(seconds))

    def executemany(self, conn: Any, sql: str, rows: list[tuple]) -> None:
        if rows:  # a psycopg connection has no executemany: a cursor's
            with conn.cursor() as cursor:
                cursor.executemany(self.sql(sql), rows)

    def upsert(self, table: str, columns: str, key: str) -> str:
        names = columns.split(", ")
        keys = key.split(", ")
        updates = ", ".join(f"{name} = excluded.{name}" for name in names if name not in keys)
        return (f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * len(names))}) "
                f"ON CONFLICT ({key}) DO UPDATE SET {updates}")

    def insert_or_ignore(self, table: str, count: int) -> str:
        return f"INSERT INTO {table} VALUES ({', '.join(['%s'] * count)}) ON CONFLICT DO NOTHING"

    def in_list(self, column: str, values: list[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(%s)", [list(values)]

    def in_long_list(self, column: str, values: list[Any]) -> tuple[str, list[Any]]:
        return self.in_list(column, values)  # one array parameter, however long

    def insert_keys(self, conn: Any, table: str, keys: list[Any]) -> None:
        if keys:  # one statement for all of them
            conn.execute(f"INSERT INTO {table} SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING", (keys,))

    def insert_id(self, conn: Connection, sql: str, params: Any) -> int:
        found = conn.execute(self.sql(sql) + " RETURNING id", params).fetchone()
        assert found is not None, "store: an INSERT ... RETURNING returns a row"
        return found[0]


POSTGRES = PostgresDialect()
