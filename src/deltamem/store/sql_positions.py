"""The followed sources' positions in a SQL store: one ``source_positions`` row per source.

    class SQLiteStore(SqlSourcePositions, SqlStore): ...   # a store mixes these methods in

Written once for SQLite and PostgreSQL; invariant as in ``deltamem.store.positions``: each write is one ``_write()``,
which inside ``transaction()`` is a savepoint of the enclosing transaction, so it commits with the table writes.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from deltamem.store.positions import SourcePositions
from deltamem.store.sql_dialect import Dialect


class SqlSourcePositions(SourcePositions):
    """``SourcePositions`` for a SQL store, whose ``_write()`` and ``_read()`` it uses."""

    dialect: Dialect
    _write: Callable[[], AbstractContextManager[Any]]
    _read: Callable[..., list[tuple]]

    def get_source_position(self, source: str) -> str | None:
        found = self._read("SELECT position FROM source_positions WHERE source = ?", (source,), None)
        return found[0][0] if found else None

    def put_source_position(self, source: str, position: str | None) -> None:
        sql = self.dialect.sql
        with self._write() as conn:
            if position is None:
                conn.execute(sql("DELETE FROM source_positions WHERE source = ?"), (source,))
            else:
                conn.execute(sql("INSERT INTO source_positions VALUES (?, ?) ON CONFLICT (source) DO UPDATE SET "
                                 "position = excluded.position"), (source, position))
