"""The shared store: one PostgreSQL database, for several processes or machines.

    store = PostgresStore("postgresql://me@db:5432/app")   # dm.connect("postgresql://...") opens one

Connections come from a pool (``psycopg_pool.ConnectionPool``), in autocommit mode: a read takes one for one
statement. Every write is one transaction that first takes the store's advisory lock (``postgres_schema.WRITE_LOCK``),
so writers serialise where the SQLite store takes SQLite's write lock, and a write reads (at READ COMMITTED, after the
lock) the latest commit. ``transaction()`` keeps one such transaction, on one connection, for the calls of the thread
that opened it; writes inside it nest as savepoints. ``get_snapshot`` reads in one REPEATABLE READ transaction.

The store logic is ``deltamem.store.sql_store``'s, shared with SQLite; this module supplies the pool, its
transactions, and the statements PostgreSQL spells its own way. The schema and opening checks are in
``postgres_schema``.

NOTE(store): 1. Other threads' reads do not wait for a ``transaction()`` block, as on SQLite: they see the last
commit (writes do wait). 2. JSON values are ``jsonb``; see ``postgres_schema`` for what that changes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.types.json import JsonbLoader
from psycopg_pool import ConnectionPool, PoolTimeout

from deltamem.changes import ERROR_COLUMN, Row, RowKey
from deltamem.errors import StoreUnavailable
from deltamem.store.postgres_dialect import POSTGRES
from deltamem.store.postgres_schema import WRITE_LOCK, connect_checked, create_or_upgrade, one_line, hide_password
from deltamem.store.sql_coordination import new_claim_owner
from deltamem.store.sql_dialect import Connection
from deltamem.store.sql_positions import SqlSourcePositions
from deltamem.store.sql_store import BASELINE_COLUMNS, SqlStore


def _sorted_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return dict(sorted(pairs))


class _SortedJsonbLoader(JsonbLoader):
    """jsonb read back with each object's keys sorted, as the SQLite store's sorted-key JSON reads back."""

    def load(self, data: Any) -> Any:
        return json.loads(bytes(data), object_pairs_hook=_sorted_object)


def _configure(conn: psycopg.Connection) -> None:
    conn.adapters.register_loader("jsonb", _SortedJsonbLoader)


class PostgresStore(SqlSourcePositions, SqlStore):
    """A ``Store`` in one PostgreSQL database, named by a libpq DSN (``postgresql://user:pw@host:5432/db`` or
    ``host=... dbname=...``). ``max_connections`` bounds the pool of this handle. Invariant: ``_local.conn`` is set
    exactly while this thread has a write transaction open, holding the advisory write lock, on that connection."""

    dialect = POSTGRES
    remote = True
    row_column = "data"  # "row" is a reserved word in PostgreSQL
    view_def_order = "seq"
    row_id = "id"

    def __init__(self, dsn: str, *, max_connections: int = 8, connect_timeout: float = 10.0):
        self.dsn = dsn
        self.claim_owner = new_claim_owner()
        self._local = threading.local()  # .conn: the connection of this thread's open write transaction
        kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in dsn:
            kwargs["connect_timeout"] = max(1, int(connect_timeout))
        # One connection first, outside the pool: a wrong DSN or a server that is down is one clear ConfigError now,
        # not a pool timeout later; it also creates the schema.
        with connect_checked(dsn, **kwargs) as conn:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                create_or_upgrade(conn, dsn)
        # ``timeout``: how long a checkout waits for a connection while the server is away, before StoreUnavailable.
        self._pool = ConnectionPool(dsn, min_size=1, max_size=max_connections, kwargs=kwargs, configure=_configure,
                                    open=True, name=f"deltamem {hide_password(dsn)}", timeout=connect_timeout)

    def __repr__(self) -> str:
        return f"PostgresStore({hide_password(self.dsn)!r})"

    @contextmanager
    def _write(self, *, durable: bool = True) -> Iterator[psycopg.Connection]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:  # inside transaction() on this thread: a savepoint, so a failed write changes nothing
            with conn.transaction():
                yield conn
            return
        began = False
        for attempt in range(2):  # a pooled connection the server dropped (it restarted) fails at once: once more
            try:
                # In pipeline mode: a statement whose result is not read is sent without waiting for the server's
                # answer, so a transaction of many writes costs a few round trips, not one per statement.
                with self._pool.connection() as conn, conn.pipeline(), conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                    if not durable:  # WAL flushed with the next durable commit (PostgreSQL's asynchronous commit)
                        conn.execute("SET LOCAL synchronous_commit TO OFF")
                    began = True
                    self._local.conn = conn
                    try:
                        yield conn
                    finally:
                        self._local.conn = None
                return
            except (psycopg.OperationalError, PoolTimeout) as exc:
                if began or attempt:
                    raise self._unavailable(exc, "this write may not have been committed") from exc

    def _unavailable(self, exc: Exception, what: str) -> StoreUnavailable:
        return StoreUnavailable(f"PostgreSQL at '{hide_password(self.dsn)}' cannot be reached ({one_line(exc)}); "
                                f"{what}, and everything committed before is kept: try again once it is back")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._write():
            yield

    def _query(self, sql: str, params: Sequence[Any] = (), conn: psycopg.Connection | None = None) -> list[tuple]:
        """Run one read in ``conn``, else as ``_query_all`` does."""
        if conn is not None:
            return conn.execute(sql, params).fetchall()
        return self._query_all([(sql, params)])[0]

    def _query_all(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[list[tuple]]:
        """Run reads in this thread's write transaction, else on one pooled connection, pipelined: one round trip
        for them all."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:  # in this thread's write transaction
            cursors = [conn.execute(sql, params) for sql, params in statements]
            return [cursor.fetchall() for cursor in cursors]
        for attempt in range(2):  # a pooled connection the server dropped (it restarted) fails at once: once more
            try:
                with self._pool.connection() as pooled:
                    if len(statements) == 1:
                        return [pooled.execute(*statements[0]).fetchall()]
                    with pooled.pipeline():
                        cursors = [pooled.execute(sql, params) for sql, params in statements]
                        return [cursor.fetchall() for cursor in cursors]
            except (psycopg.OperationalError, PoolTimeout) as exc:
                if attempt:
                    raise self._unavailable(exc, "nothing was read") from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._pool.close()

    def get_catalog_version(self) -> int:
        return int(self._query("SELECT COALESCE((SELECT value FROM meta WHERE name = 'catalog_version'), '0')")[0][0])

    def get_snapshot(self, tables: Sequence[str]) -> tuple[int, dict[str, dict[RowKey, Row]]]:
        if getattr(self._local, "conn", None) is not None:  # inside transaction(): one transaction already
            return self.get_latest_version(), {table: self.get_rows(table) for table in tables}
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")  # no commit lands between
            latest = self._query("SELECT COALESCE(MAX(version), 0) FROM commits", (), conn)[0][0]
            rows = {table: {RowKey(k): r for k, r in self._query("SELECT key, data FROM rows WHERE tbl = %s",
                                                                   (table,), conn)} for table in tables}
            return latest, rows

    def _end_incarnation(self, conn: Connection, view: str, version: int) -> None:
        assignments = ", ".join(f"{column} = d.{column}" for column in BASELINE_COLUMNS.split(", "))
        conn.execute(
            f"UPDATE view_incarnations i SET dropped_version = %s, {assignments} FROM view_defs d "
            "WHERE d.name = %s AND i.name = d.name AND i.dropped_version IS NULL", (version, view))

    def count_view_rows(self, view: str) -> tuple[int, int]:
        # Counted in the server, so a dashboard's poll never decodes every row in Python; a JSON null is no error.
        total, failed = self._query(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE COALESCE(jsonb_typeof(data -> %s::text), 'null') <> 'null') "
            "FROM view_rows WHERE view = %s AND valid_to IS NULL", (ERROR_COLUMN, view))[0]
        return total, failed

