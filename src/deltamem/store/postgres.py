"""The shared store: one PostgreSQL database, for several processes or machines.

    store = PostgresStore("postgresql://me@db:5432/app")   # dm.connect("postgresql://...") opens one

Connections come from a pool (``psycopg_pool.ConnectionPool``), in autocommit mode: a read takes one for one
statement. Every write is one transaction that first takes the store's advisory lock (``postgres_schema.WRITE_LOCK``),
so writers serialise where the SQLite store takes SQLite's write lock, and a write reads (at READ COMMITTED, after the
lock) the latest commit. ``transaction()`` keeps one such transaction, on one connection, for the calls of the thread
that opened it; writes inside it nest as savepoints. ``get_snapshot`` reads in one REPEATABLE READ transaction.

The schema and opening checks are in ``postgres_schema``, catalog writes in ``postgres_catalog``, leases and claims in
``postgres_coordination``, the memo and ledger in ``postgres_ledger``.

NOTE(store): 1. Other threads' reads do not wait for a ``transaction()`` block, as on SQLite: they see the last
commit (writes do wait). 2. JSON values are ``jsonb``; see ``postgres_schema`` for what that changes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.types.json import JsonbLoader
from psycopg_pool import ConnectionPool

from deltamem.changes import ERROR_COLUMN, Change, ExpireMode, Row, RowKey, RowWrite, decode_key
from deltamem.errors import NoTable
from deltamem.store.base import (
    Baseline,
    CallCost,
    ChangeRow,
    Decision,
    Dropped,
    HistoryEntry,
    StateEntry,
    Store,
    TableDef,
    ViewCommit,
    ViewDef,
    resolve_drop,
)
from deltamem.store.postgres_catalog import (
    bump_catalog_version,
    create_table_def,
    create_view_def,
    jsonb,
    save_table_defs,
)
from deltamem.store.postgres_coordination import PostgresCoordination
from deltamem.store.postgres_ledger import PostgresLedger
from deltamem.store.postgres_schema import WRITE_LOCK, connect_checked, create_or_upgrade, hide_password
from deltamem.store.sqlite_coordination import new_claim_owner


def _sorted_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return dict(sorted(pairs))


class _SortedJsonbLoader(JsonbLoader):
    """jsonb read back with each object's keys sorted, as the SQLite store's sorted-key JSON reads back."""

    def load(self, data: Any) -> Any:
        return json.loads(bytes(data), object_pairs_hook=_sorted_object)


def _configure(conn: psycopg.Connection) -> None:
    conn.adapters.register_loader("jsonb", _SortedJsonbLoader)


_STATE_COLUMNS = ("key, fingerprint, input_row, value, error, calls, prompt_tokens, output_tokens, seconds")
_DECISION_COLUMNS = ("view, key, version, strategy, reason, calls, prompt_tokens, reused_tokens, output_tokens, "
                     "seconds, evidence")
# A view's full-recompute baseline, as ``view_defs`` and ``view_incarnations`` both store it.
_BASELINE_COLUMNS = ("refreshes, base_calls, base_prompt_tokens, base_output_tokens, base_seconds, nomemo_calls, "
                     "nomemo_prompt_tokens, nomemo_output_tokens, nomemo_seconds")


class PostgresStore(PostgresLedger, PostgresCoordination, Store):
    """A ``Store`` in one PostgreSQL database, named by a libpq DSN (``postgresql://user:pw@host:5432/db`` or
    ``host=... dbname=...``). ``max_connections`` bounds the pool of this handle."""

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
        self._pool = ConnectionPool(dsn, min_size=1, max_size=max_connections, kwargs=kwargs, configure=_configure,
                                    open=True, name=f"deltamem {hide_password(dsn)}")

    def __repr__(self) -> str:
        return f"PostgresStore({hide_password(self.dsn)!r})"

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:  # inside transaction() on this thread: a savepoint, so a failed write changes nothing
            with conn.transaction():
                yield conn
            return
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            self._local.conn = conn
            try:
                yield conn
            finally:
                self._local.conn = None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._write():
            yield

    def _query(self, sql: str, params: Sequence[Any] = (), conn: psycopg.Connection | None = None) -> list[tuple]:
        """Run one read in ``conn``, else in this thread's write transaction, else on a pooled connection."""
        conn = conn if conn is not None else getattr(self._local, "conn", None)
        if conn is not None:
            return conn.execute(sql, params).fetchall()
        with self._pool.connection() as pooled:
            return pooled.execute(sql, params).fetchall()

    def close(self) -> None:
        self._pool.close()

    # --- catalog ------------------------------------------------------------------------------------------------
    def put_table_def(self, table: TableDef) -> None:
        with self._write() as conn:
            create_table_def(conn, table)

    def get_table_defs(self) -> list[TableDef]:
        return [TableDef.from_json(d) for (d,) in self._query("SELECT def FROM table_defs ORDER BY name")]

    def get_catalog_version(self) -> int:
        return int(self._query("SELECT COALESCE((SELECT value FROM meta WHERE name = 'catalog_version'), '0')")[0][0])

    def put_view_def(self, view: ViewDef, *, replace: bool = False) -> ViewDef:
        with self._write() as conn:
            create_view_def(conn, view.name, view.plan, replace=replace)
            view_id = self._view_id(conn, view.name)
            if view_id is None:
                found = conn.execute("INSERT INTO view_incarnations (name) VALUES (%s) RETURNING id",
                                     (view.name,)).fetchone()
                assert found is not None, "store: an INSERT ... RETURNING returns a row"
                view_id = found[0]
            return ViewDef(view.name, view.plan, view_id)

    def get_view_defs(self) -> list[ViewDef]:
        found = self._query(
            "SELECT d.name, d.def, i.id FROM view_defs d LEFT JOIN view_incarnations i "
            "ON i.name = d.name AND i.dropped_version IS NULL ORDER BY d.seq"
        )
        return [ViewDef(n, d, i) for n, d, i in found]

    def get_view_id(self, view: str) -> int | None:
        return self._view_id(None, view)

    def _view_id(self, conn: psycopg.Connection | None, view: str) -> int | None:
        found = self._query(
            "SELECT i.id FROM view_defs d JOIN view_incarnations i ON i.name = d.name AND i.dropped_version IS NULL "
            "WHERE d.name = %s", (view,), conn)
        return found[0][0] if found else None

    def drop(
        self, tables: Sequence[str], views: Sequence[str], *, cascade: bool, committed_at: float, note: str = "",
        writes: Sequence[RowWrite] = (), table_defs: Sequence[TableDef] = (), checked: Sequence[TableDef] = (),
    ) -> Dropped:
        with self._write() as conn:
            save_table_defs(conn, table_defs, checked)
            version, _changes = self._commit(conn, writes, committed_at, note, always=True)
            assert version is not None, "store: a drop always takes a version"
            table_names = [name for (name,) in conn.execute("SELECT name FROM table_defs")]
            plans = {name: d for name, d in conn.execute("SELECT name, def FROM view_defs ORDER BY seq")}
            dropped_views = resolve_drop(tables, views, cascade=cascade, table_names=table_names, plans=plans)
            assignments = ", ".join(f"{column} = d.{column}" for column in _BASELINE_COLUMNS.split(", "))
            for view in dropped_views:
                conn.execute(
                    f"UPDATE view_incarnations i SET dropped_version = %s, {assignments} FROM view_defs d "
                    "WHERE d.name = %s AND i.name = d.name AND i.dropped_version IS NULL", (version, view))
                for table in ("view_defs", "op_state", "view_rows", "decisions", "view_leases"):
                    column = "name" if table == "view_defs" else "view"
                    conn.execute(f"DELETE FROM {table} WHERE {column} = %s", (view,))
            for table in tables:
                conn.execute("DELETE FROM table_defs WHERE name = %s", (table,))
                conn.execute("DELETE FROM rows WHERE tbl = %s", (table,))
                conn.execute("DELETE FROM changes WHERE tbl = %s", (table,))
            bump_catalog_version(conn)
            return Dropped(tuple(tables), tuple(dropped_views), version)

    # --- base tables --------------------------------------------------------------------------------------------
    def commit(
        self, writes: Sequence[RowWrite], committed_at: float, note: str = "", table_defs: Sequence[TableDef] = (),
        checked: Sequence[TableDef] = (),
    ) -> tuple[int | None, list[Change]]:
        with self._write() as conn:
            save_table_defs(conn, table_defs, checked)
            return self._commit(conn, writes, committed_at, note, always=not writes)

    def _commit(
        self, conn: psycopg.Connection, writes: Sequence[RowWrite], committed_at: float, note: str, *, always: bool
    ) -> tuple[int | None, list[Change]]:
        """Apply ``writes`` as the next version; with no change among them and not ``always``, no version (None)."""
        changes: list[Change] = []
        if writes:
            known = {name for (name,) in conn.execute("SELECT name FROM table_defs")}
            missing = sorted({write.table for write in writes} - known)
            if missing:  # another process dropped it; its rows must not come back without a definition
                raise NoTable(f'Table "{missing[0]}" does not exist (dropped?); nothing was committed')
        found = conn.execute("SELECT COALESCE(MAX(version), 0) FROM commits").fetchone()
        assert found is not None, "store: an aggregate returns a row"
        version = found[0] + 1
        conn.execute("INSERT INTO commits VALUES (%s, %s, %s)", (version, committed_at, note))
        for write in writes:
            stored = conn.execute("SELECT data FROM rows WHERE tbl = %s AND key = %s", (write.table, write.key)).fetchone()
            before = stored[0] if stored else None
            if write.after is None:
                if before is None:
                    continue
                conn.execute("DELETE FROM rows WHERE tbl = %s AND key = %s", (write.table, write.key))
            else:
                conn.execute(
                    "INSERT INTO rows VALUES (%s, %s, %s, %s) ON CONFLICT (tbl, key) DO UPDATE SET "
                    "data = excluded.data, expires_at = excluded.expires_at",
                    (write.table, write.key, jsonb(write.after), write.expires_at),
                )
                if before == write.after:
                    continue  # a rewrite of the same row only renews its TTL
            change = Change(write.table, write.key, before, write.after, version, write.expire_mode)
            conn.execute(
                "INSERT INTO changes VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (version, len(changes), write.table, write.key,
                 None if before is None else jsonb(before), None if write.after is None else jsonb(write.after),
                 None if write.expire_mode is None else write.expire_mode.value),
            )
            changes.append(change)
        if not changes and not always:  # a version is a change: rewrites of equal rows and deletes of absent keys
            conn.execute("DELETE FROM commits WHERE version = %s", (version,))  # make none (the TTL renewals stay)
            return None, changes
        return version, changes

    def get_latest_version(self) -> int:
        return self._query("SELECT COALESCE(MAX(version), 0) FROM commits")[0][0]

    def get_commit_time(self, version: int) -> float | None:
        found = self._query("SELECT committed_at FROM commits WHERE version = %s", (version,))
        return found[0][0] if found else None

    def get_commit_times(self, first: int, last: int) -> dict[int, float]:
        return dict(self._query("SELECT version, committed_at FROM commits WHERE version BETWEEN %s AND %s",
                                (first, last)))

    def get_changes(self, first: int, last: int, tables: Iterable[str]) -> list[Change]:
        tables = list(tables)
        if not tables:
            return []
        found = self._query(
            "SELECT tbl, key, before, after, version, expire_mode FROM changes "
            "WHERE version BETWEEN %s AND %s AND tbl = ANY(%s) ORDER BY version, seq", (first, last, tables))
        return [Change(t, RowKey(k), b, a, v, None if m is None else ExpireMode(m)) for t, k, b, a, v, m in found]

    def get_rows(self, table: str) -> dict[RowKey, Row]:
        return {RowKey(k): r for k, r in self._query("SELECT key, data FROM rows WHERE tbl = %s", (table,))}

    def get_snapshot(self, tables: Sequence[str]) -> tuple[int, dict[str, dict[RowKey, Row]]]:
        if getattr(self._local, "conn", None) is not None:  # inside transaction(): one transaction already
            return self.get_latest_version(), {table: self.get_rows(table) for table in tables}
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")  # no commit lands between
            latest = self._query("SELECT COALESCE(MAX(version), 0) FROM commits", (), conn)[0][0]
            rows = {table: {RowKey(k): r for k, r in self._query("SELECT key, data FROM rows WHERE tbl = %s",
                                                                   (table,), conn)} for table in tables}
            return latest, rows

    def get_row(self, table: str, key: RowKey) -> Row | None:
        found = self._query("SELECT data FROM rows WHERE tbl = %s AND key = %s", (table, key))
        return found[0][0] if found else None

    def expire(self, tables: dict[str, ExpireMode], now: float) -> tuple[int, list[Change]] | None:
        names = list(tables)
        if not self._query(  # a read first: the write lock is taken only when something has expired
            "SELECT 1 FROM rows WHERE tbl = ANY(%s) AND expires_at IS NOT NULL AND expires_at <= %s LIMIT 1",
            (names, now),
        ):
            return None
        with self._write() as conn:
            writes = [
                RowWrite(table, RowKey(key), None, expire_mode=mode)
                for table, mode in sorted(tables.items())
                for (key,) in conn.execute(
                    "SELECT key FROM rows WHERE tbl = %s AND expires_at IS NOT NULL AND expires_at <= %s ORDER BY key",
                    (table, now),
                ).fetchall()
            ]
            if not writes:
                return None
            version, changes = self._commit(conn, writes, now, "ttl expiry", always=True)
            assert version is not None, "store: an expiry deletes rows that exist"
            return version, changes

    # --- views --------------------------------------------------------------------------------------------------
    def get_applied_version(self, view: str) -> int | None:
        found = self._query("SELECT applied_version FROM view_defs WHERE name = %s", (view,))
        return found[0][0] if found else None

    def get_state(self, view: str, op_id: str, keys: Iterable[RowKey]) -> dict[RowKey, StateEntry]:
        found = self._query(f"SELECT {_STATE_COLUMNS} FROM op_state WHERE view = %s AND op = %s AND key = ANY(%s)",
                            (view, op_id, list(keys)))
        return {entry.key: entry for entry in map(_state_entry, found)}

    def get_failed_state(self, view: str, op_id: str) -> list[StateEntry]:
        found = self._query(f"SELECT {_STATE_COLUMNS} FROM op_state WHERE view = %s AND op = %s AND error IS NOT NULL "
                            "ORDER BY key", (view, op_id))
        return [_state_entry(record) for record in found]

    def get_all_state(self, view: str) -> dict[tuple[str, RowKey], StateEntry]:
        found = self._query(f"SELECT op, {_STATE_COLUMNS} FROM op_state WHERE view = %s ORDER BY op, key", (view,))
        return {(op, RowKey(record[0])): _state_entry(record) for op, *record in found}

    def get_state_cost(self, view: str) -> CallCost:
        return self._state_cost(None, view)

    def _state_cost(self, conn: psycopg.Connection | None, view: str) -> CallCost:
        calls, prompt, output, seconds = self._query(
            "SELECT COALESCE(SUM(calls), 0), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(output_tokens), 0), "
            "COALESCE(SUM(seconds), 0) FROM op_state WHERE view = %s", (view,), conn)[0]
        return CallCost(int(calls), int(prompt), int(output), float(seconds))

    def commit_view(self, commit: ViewCommit) -> bool:
        with self._write() as conn:
            found = conn.execute("SELECT applied_version FROM view_defs WHERE name = %s", (commit.view,)).fetchone()
            if found is None or (commit.view_id is not None and self._view_id(conn, commit.view) != commit.view_id):
                return False  # computed for a view that has been dropped since (and perhaps created again)
            (applied,) = found
            if applied is not None and applied >= commit.version:
                return False  # already applied: a commit is idempotent
            for op_id, key in commit.state_deletes:
                conn.execute("DELETE FROM op_state WHERE view = %s AND op = %s AND key = %s", (commit.view, op_id, key))
            for op_id, e in commit.state_puts:
                conn.execute(
                    f"INSERT INTO op_state (view, op, {_STATE_COLUMNS}) VALUES "
                    "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (view, op, key) DO UPDATE SET "
                    "fingerprint = excluded.fingerprint, input_row = excluded.input_row, value = excluded.value, "
                    "error = excluded.error, calls = excluded.calls, prompt_tokens = excluded.prompt_tokens, "
                    "output_tokens = excluded.output_tokens, seconds = excluded.seconds",
                    (commit.view, op_id, e.key, e.fingerprint, jsonb(e.input_row), jsonb(e.value), e.error,
                     e.cost.calls, e.cost.prompt_tokens, e.cost.output_tokens, e.cost.seconds),
                )
            for key, row in commit.outputs.items():
                current = conn.execute(
                    "SELECT id, data FROM view_rows WHERE view = %s AND key = %s AND valid_to IS NULL",
                    (commit.view, key),
                ).fetchone()
                if current is not None and row is not None and current[1] == row:
                    continue
                if current is not None:
                    conn.execute("UPDATE view_rows SET valid_to = %s WHERE id = %s", (commit.version, current[0]))
                if row is not None:
                    conn.execute("INSERT INTO view_rows (view, key, data, valid_from) VALUES (%s, %s, %s, %s)",
                                 (commit.view, key, jsonb(row), commit.version))
            if commit.decisions:
                with conn.cursor() as cursor:
                    cursor.executemany(
                        f"INSERT INTO decisions ({_DECISION_COLUMNS}) VALUES "
                        "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        [(d.view, d.key, d.version, d.strategy, d.reason, d.calls, d.prompt_tokens, d.reused_tokens,
                          d.output_tokens, d.seconds, d.evidence) for d in commit.decisions])
            full = no_memo = CallCost()
            if commit.count_baseline:
                full, no_memo = self._full_recompute_cost(conn, commit), self._state_cost(conn, commit.view)
                conn.execute(
                    "INSERT INTO refresh_costs VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (view, version) DO UPDATE "
                    "SET calls = excluded.calls, prompt_tokens = excluded.prompt_tokens, "
                    "output_tokens = excluded.output_tokens, seconds = excluded.seconds",
                    (commit.view, commit.version, *_cost_tuple(full)))
            conn.execute(
                "UPDATE view_defs SET applied_version = %s, refreshes = refreshes + %s, base_calls = base_calls + %s, "
                "base_prompt_tokens = base_prompt_tokens + %s, base_output_tokens = base_output_tokens + %s, "
                "base_seconds = base_seconds + %s, nomemo_calls = nomemo_calls + %s, "
                "nomemo_prompt_tokens = nomemo_prompt_tokens + %s, nomemo_output_tokens = nomemo_output_tokens + %s, "
                "nomemo_seconds = nomemo_seconds + %s WHERE name = %s",
                (commit.version, int(commit.count_baseline), *_cost_tuple(full), *_cost_tuple(no_memo), commit.view),
            )
            return True

    @staticmethod
    def _full_recompute_cost(conn: psycopg.Connection, commit: ViewCommit) -> CallCost:
        """What a full recompute of ``commit.view`` at ``commit.version`` pays (see ``SQLiteStore``'s)."""
        charged = conn.execute(
            "SELECT s.fingerprint, MAX(s.prompt_tokens), MAX(s.output_tokens), MAX(s.seconds) FROM op_state s "
            "WHERE s.view = %s AND s.calls > 0 AND s.error IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM baseline_memo b WHERE b.call_hash = s.fingerprint) "
            "AND (NOT EXISTS (SELECT 1 FROM memo m WHERE m.call_hash = s.fingerprint) "
            "     OR s.fingerprint = ANY(%s)) "
            "GROUP BY s.fingerprint",
            (commit.view, sorted(commit.paid_calls)),
        ).fetchall()
        if charged:
            conn.execute("INSERT INTO baseline_memo SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING",
                         ([h for h, *_cost in charged],))
        return sum((CallCost(1, int(prompt), int(output), float(seconds)) for _h, prompt, output, seconds in charged),
                   CallCost())

    def get_view_rows(self, view: str, as_of: int | None = None) -> dict[RowKey, Row]:
        if as_of is None:
            found = self._query("SELECT key, data FROM view_rows WHERE view = %s AND valid_to IS NULL", (view,))
        else:
            found = self._query(
                "SELECT key, data FROM view_rows WHERE view = %s AND valid_from <= %s "
                "AND (valid_to IS NULL OR valid_to > %s)", (view, as_of, as_of))
        return {RowKey(k): r for k, r in sorted(found, key=lambda record: record[0])}

    def count_view_rows(self, view: str) -> tuple[int, int]:
        # Counted in the server, so a dashboard's poll never decodes every row in Python; a JSON null is no error.
        total, failed = self._query(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE COALESCE(jsonb_typeof(data -> %s::text), 'null') <> 'null') "
            "FROM view_rows WHERE view = %s AND valid_to IS NULL", (ERROR_COLUMN, view))[0]
        return total, failed

    def get_view_history(self, view: str, key: RowKey) -> list[HistoryEntry]:
        found = self._query("SELECT valid_from, valid_to, data FROM view_rows WHERE view = %s AND key = %s "
                            "ORDER BY valid_from", (view, key))
        return [HistoryEntry(f, t, r) for f, t, r in found]

    def get_view_changes(self, view: str, first: int, last: int) -> list[ChangeRow]:
        found = self._query(
            "SELECT valid_to AS version, -1, key, data FROM view_rows WHERE view = %s AND valid_to BETWEEN %s AND %s "
            "UNION ALL SELECT valid_from, 1, key, data FROM view_rows WHERE view = %s AND valid_from BETWEEN %s AND %s "
            "ORDER BY 1, 2, 3", (view, first, last, view, first, last))
        return [ChangeRow(v, d, decode_key(RowKey(k)), r) for v, d, k, r in found]

    def get_decisions(self, view: str, key: RowKey | None = None, strategy: str | None = None) -> list[Decision]:
        where, params = ["view = %s"], [view]
        for column, value in (("key", key), ("strategy", strategy)):
            if value is not None:
                where.append(f"{column} = %s")
                params.append(value)
        found = self._query(f"SELECT {_DECISION_COLUMNS} FROM decisions WHERE {' AND '.join(where)} ORDER BY id",
                            params)
        return [Decision(v, RowKey(k), *rest) for v, k, *rest in found]

    def get_baselines(self) -> dict[str, Baseline]:
        found = self._query(
            f"SELECT name, {_BASELINE_COLUMNS} FROM view_defs UNION ALL "
            f"SELECT name, {_BASELINE_COLUMNS} FROM view_incarnations WHERE dropped_version IS NOT NULL")
        out: dict[str, Baseline] = {}
        for name, refreshes, *costs in found:
            found_here = Baseline(refreshes, CallCost(*costs[:4]), CallCost(*costs[4:]))
            out[name] = out.get(name, Baseline()) + found_here
        return out

    def get_costs_by_version(self) -> list[tuple[int, CallCost, CallCost]]:
        paid = self._query(
            "SELECT COALESCE(version, 0), COUNT(*), SUM(prompt_tokens), SUM(output_tokens), SUM(seconds) "
            "FROM ledger WHERE outcome = 'paid' GROUP BY 1")
        full = self._query("SELECT version, SUM(calls), SUM(prompt_tokens), SUM(output_tokens), SUM(seconds) "
                           "FROM refresh_costs GROUP BY 1")
        by_version: dict[int, list[CallCost]] = {}
        for position, found in enumerate((paid, full)):
            for version, calls, prompt, output, seconds in found:
                cost = CallCost(int(calls), int(prompt), int(output), float(seconds))
                by_version.setdefault(version, [CallCost(), CallCost()])[position] = cost
        return [(version, *by_version[version]) for version in sorted(by_version)]


def _state_entry(record: Sequence[Any]) -> StateEntry:
    key, fingerprint, input_row, value, error, calls, prompt, output, seconds = record
    return StateEntry(RowKey(key), fingerprint, input_row, value, error, CallCost(calls, prompt, output, seconds))


def _cost_tuple(cost: CallCost) -> tuple[int, int, int, float]:
    return cost.calls, cost.prompt_tokens, cost.output_tokens, cost.seconds
