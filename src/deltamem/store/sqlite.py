"""The embedded default store: one SQLite file in WAL mode.

    >>> store = SQLiteStore(":memory:")
    >>> store.commit([], committed_at=0.0)[0]
    1

One connection is shared by the threads of a process behind a re-entrant lock; every write is one ``BEGIN
IMMEDIATE`` transaction, so several processes on one file serialise on SQLite's own lock (and share views and calls
out through leases and claims: ``deltamem.store.sql_coordination``). ``transaction()`` holds
one such transaction across several calls, and the writes inside it nest as savepoints. ``synchronous=FULL``
makes a commit survive a killed process and a power cut alike.

The store logic is ``deltamem.store.sql_store``'s, shared with PostgreSQL; this module supplies the connection, its
transactions, and the statements SQLite spells its own way.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from deltamem.changes import ERROR_COLUMN, Row, RowKey
from deltamem.store.sql_catalog import get_catalog_version
from deltamem.store.sql_coordination import new_claim_owner
from deltamem.store.sql_dialect import SQLITE, Connection
from deltamem.store.sql_positions import SqlSourcePositions
from deltamem.store.sql_store import BASELINE_COLUMNS, SqlStore
from deltamem.store.sqlite_schema import create_or_upgrade


class SQLiteStore(SqlSourcePositions, SqlStore):
    """A ``Store`` in one SQLite file (``":memory:"`` for a throwaway one). Invariant: ``_writing`` is true exactly
    while the thread holding ``_lock`` has a write transaction open, so a nested write is a savepoint in it."""

    dialect = SQLITE
    row_column = "row"
    view_def_order = "rowid"
    row_id = "rowid"

    def __init__(self, path: str):
        self.path = path
        self.claim_owner = new_claim_owner()
        self._lock = threading.RLock()
        self._writing = False  # a write transaction is open (on the thread holding _lock)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        with self._write() as conn:
            create_or_upgrade(conn, path)

    @contextmanager
    def _write(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock:
            # Nested only inside transaction() on this thread, as the lock is held for a whole transaction: then a
            # savepoint, so that a write that fails still changes nothing while the enclosing block goes on.
            nested = self._writing
            lazy = not durable and not nested  # WAL without fsync: durable with the next durable commit
            if lazy:
                self._conn.execute("PRAGMA synchronous=NORMAL")
            try:
                self._conn.execute("SAVEPOINT nested_write" if nested else "BEGIN IMMEDIATE")
                self._writing = True
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK TO nested_write" if nested else "ROLLBACK")
                    if nested:
                        self._conn.execute("RELEASE nested_write")
                    raise
                finally:
                    self._writing = nested
                self._conn.execute("RELEASE nested_write" if nested else "COMMIT")
            finally:
                if lazy:
                    self._conn.execute("PRAGMA synchronous=FULL")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._write():
            yield

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def get_catalog_version(self) -> int:
        with self._lock:
            return get_catalog_version(self._conn)

    def get_snapshot(self, tables: Sequence[str]) -> tuple[int, dict[str, dict[RowKey, Row]]]:
        with self._lock:
            own = not self._writing  # inside transaction() the reads are one transaction already
            if own:
                self._conn.execute("BEGIN")  # one read transaction: no commit can land between the reads
            try:
                return self.get_latest_version(), {table: self.get_rows(table) for table in tables}
            finally:
                if own:
                    self._conn.execute("COMMIT")

    def _end_incarnation(self, conn: Connection, view: str, version: int) -> None:
        baseline = conn.execute(f"SELECT {BASELINE_COLUMNS} FROM view_defs WHERE name = ?", (view,)).fetchone()
        if self._view_id(conn, view) is None:  # a view of a file older than incarnations, not reopened since
            conn.execute("INSERT INTO view_incarnations (name) VALUES (?)", (view,))
        assignments = ", ".join(f"{column} = ?" for column in BASELINE_COLUMNS.split(", "))
        conn.execute(
            f"UPDATE view_incarnations SET dropped_version = ?, {assignments} "
            "WHERE name = ? AND dropped_version IS NULL", (version, *baseline, view)
        )

    def count_view_rows(self, view: str) -> tuple[int, int]:
        # Counted inside SQLite (json_extract), so a dashboard's poll never decodes every row in Python.
        total, failed = self._query(
            f"SELECT COUNT(*), COALESCE(SUM(json_extract(row, '$.{ERROR_COLUMN}') IS NOT NULL), 0) FROM view_rows "
            "WHERE view = ? AND valid_to IS NULL",
            (view,),
        )[0]
        return total, failed
