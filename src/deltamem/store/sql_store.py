"""The store logic SQLite and PostgreSQL share, written once: catalog, base tables, views, memo and ledger.

    class SQLiteStore(SqlStore): dialect = SQLITE; ...   # a store supplies connections, transactions and a dialect

Each statement is written with ``?`` placeholders and run through the store's ``dialect``
(``deltamem.store.sql_dialect``), which also encodes JSON values and spells upserts and lists. A subclass supplies
only what really differs: ``_write()`` (one write transaction under the store's write lock, nesting as a savepoint),
``transaction()``, ``_query()`` (a read), ``close()``, ``get_snapshot``, ``get_catalog_version``, and the few
statements with no common spelling (``_end_incarnation``, ``count_view_rows``).
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Iterable, Sequence
from typing import Any

from deltamem.changes import Change, ExpireMode, Row, RowKey, RowWrite, decode_key
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
from deltamem.store.sql_catalog import bump_catalog_version, create_table_def, create_view_def, save_table_defs
from deltamem.store.sql_coordination import SqlCoordination
from deltamem.store.sql_dialect import Connection
from deltamem.store.sql_ledger import SqlLedger
from deltamem.store.sql_view_commit import DECISION_COLUMNS, STATE_COLUMNS, ViewCommitWriter
from deltamem.store.state_vectors import unpack_vectors

# A view's full-recompute baseline, as ``view_defs`` and ``view_incarnations`` both store it.
BASELINE_COLUMNS = ("refreshes, base_calls, base_prompt_tokens, base_output_tokens, base_seconds, nomemo_calls, "
                    "nomemo_prompt_tokens, nomemo_output_tokens, nomemo_seconds")


class SqlStore(SqlLedger, SqlCoordination, Store):
    """A ``Store`` in a SQL database. Invariant: every write is one ``_write()`` transaction, under a lock that
    serialises the writers of every process on the store, and reads inside it see the latest commit; so a version
    number, a view commit and a catalog change are each decided once, on what the store holds then."""

    # The JSON column of ``rows`` and ``view_rows`` ("row" in SQLite, "data" in PostgreSQL, where "row" is reserved).
    row_column: str
    # What orders ``view_defs`` by creation, and identifies a ``view_rows`` or ``decisions`` row.
    view_def_order: str
    row_id: str

    # --- what each store supplies -------------------------------------------------------------------------------
    @abc.abstractmethod
    def _end_incarnation(self, conn: Connection, view: str, version: int) -> None:
        """Mark ``view``'s live incarnation dropped at ``version``, with the baseline ``view_defs`` holds for it."""

    # --- catalog ------------------------------------------------------------------------------------------------
    def put_table_def(self, table: TableDef) -> None:
        with self._write() as conn:
            create_table_def(self.dialect, conn, table)

    def get_table_defs(self) -> list[TableDef]:
        found = self._read("SELECT def FROM table_defs ORDER BY name", (), None)
        return [TableDef.from_json(self.dialect.decode(d)) for (d,) in found]

    def put_view_def(self, view: ViewDef, *, replace: bool = False) -> ViewDef:
        with self._write() as conn:
            create_view_def(self.dialect, conn, view.name, view.plan, replace=replace)
            view_id = self._view_id(conn, view.name)
            if view_id is None:
                view_id = self.dialect.insert_id(conn, "INSERT INTO view_incarnations (name) VALUES (?)", (view.name,))
            return ViewDef(view.name, view.plan, view_id)

    def get_view_defs(self) -> list[ViewDef]:
        found = self._read(
            "SELECT d.name, d.def, i.id FROM view_defs d LEFT JOIN view_incarnations i "
            f"ON i.name = d.name AND i.dropped_version IS NULL ORDER BY d.{self.view_def_order}", (), None)
        return [ViewDef(n, self.dialect.decode(d), i) for n, d, i in found]

    def get_view_id(self, view: str) -> int | None:
        return self._view_id(None, view)

    def _view_id(self, conn: Connection | None, view: str) -> int | None:
        found = self._read(
            "SELECT i.id FROM view_defs d JOIN view_incarnations i ON i.name = d.name AND i.dropped_version IS NULL "
            "WHERE d.name = ?", (view,), conn)
        return found[0][0] if found else None

    def drop(
        self, tables: Sequence[str], views: Sequence[str], *, cascade: bool, committed_at: float, note: str = "",
        writes: Sequence[RowWrite] = (), table_defs: Sequence[TableDef] = (), checked: Sequence[TableDef] = (),
    ) -> Dropped:
        sql = self.dialect.sql
        with self._write() as conn:
            save_table_defs(self.dialect, conn, table_defs, checked)
            version, _changes = self._commit(conn, writes, committed_at, note, always=True)
            assert version is not None, "store: a drop always takes a version"
            table_names = [name for (name,) in conn.execute("SELECT name FROM table_defs").fetchall()]
            plans = {name: self.dialect.decode(d) for name, d in conn.execute(
                f"SELECT name, def FROM view_defs ORDER BY {self.view_def_order}").fetchall()}
            dropped_views = resolve_drop(tables, views, cascade=cascade, table_names=table_names, plans=plans)
            for view in dropped_views:
                self._end_incarnation(conn, view, version)
                for table in ("view_defs", "op_state", "view_rows", "decisions", "view_leases"):
                    column = "name" if table == "view_defs" else "view"
                    conn.execute(sql(f"DELETE FROM {table} WHERE {column} = ?"), (view,))
            for table in tables:
                conn.execute(sql("DELETE FROM table_defs WHERE name = ?"), (table,))
                conn.execute(sql("DELETE FROM rows WHERE tbl = ?"), (table,))
                conn.execute(sql("DELETE FROM changes WHERE tbl = ?"), (table,))
            bump_catalog_version(conn)
            return Dropped(tuple(tables), tuple(dropped_views), version)

    # --- base tables --------------------------------------------------------------------------------------------
    def commit(
        self, writes: Sequence[RowWrite], committed_at: float, note: str = "", table_defs: Sequence[TableDef] = (),
        checked: Sequence[TableDef] = (),
    ) -> tuple[int | None, list[Change]]:
        with self._write() as conn:
            save_table_defs(self.dialect, conn, table_defs, checked)
            return self._commit(conn, writes, committed_at, note, always=not writes)

    def _commit(
        self, conn: Connection, writes: Sequence[RowWrite], committed_at: float, note: str, *, always: bool
    ) -> tuple[int | None, list[Change]]:
        """Apply ``writes`` as the next version; with no change among them and not ``always``, no version (None)."""
        sql, encode, row = self.dialect.sql, self.dialect.encode, self.row_column
        changes: list[Change] = []
        if writes:
            known = {name for (name,) in conn.execute("SELECT name FROM table_defs").fetchall()}
            missing = sorted({write.table for write in writes} - known)
            if missing:  # another process dropped it; its rows must not come back without a definition
                raise NoTable(f'Table "{missing[0]}" does not exist (dropped?); nothing was committed')
        found = conn.execute("SELECT COALESCE(MAX(version), 0) FROM commits").fetchone()
        assert found is not None, "store: an aggregate returns a row"
        version = found[0] + 1
        conn.execute(sql("INSERT INTO commits VALUES (?, ?, ?)"), (version, committed_at, note))
        # In bulk, a statement per kind rather than per row: a write of many rows is a few round trips.
        stored = self._stored_rows(conn, writes)
        deletes, upserts, logged = [], [], []
        for write in writes:
            before = stored.get((write.table, write.key))
            if write.after is None:
                if before is None:
                    continue
                deletes.append((write.table, write.key))
            else:
                upserts.append((write.table, write.key, encode(write.after), write.expires_at))
                if before == write.after:
                    continue  # a rewrite of the same row only renews its TTL
            logged.append((version, len(changes), write.table, write.key,
                           None if before is None else encode(before),
                           None if write.after is None else encode(write.after),
                           None if write.expire_mode is None else write.expire_mode.value))
            changes.append(Change(write.table, write.key, before, write.after, version, write.expire_mode))
        self.dialect.executemany(conn, "DELETE FROM rows WHERE tbl = ? AND key = ?", deletes)
        self.dialect.executemany(conn, f"INSERT INTO rows VALUES (?, ?, ?, ?) ON CONFLICT (tbl, key) DO UPDATE SET "
                                       f"{row} = excluded.{row}, expires_at = excluded.expires_at", upserts)
        self.dialect.executemany(conn, "INSERT INTO changes VALUES (?, ?, ?, ?, ?, ?, ?)", logged)
        if not changes and not always:  # a version is a change: rewrites of equal rows and deletes of absent keys
            conn.execute(sql("DELETE FROM commits WHERE version = ?"), (version,))  # make none (TTL renewals stay)
            return None, changes
        return version, changes

    def _stored_rows(self, conn: Connection, writes: Sequence[RowWrite]) -> dict[tuple[str, RowKey], Row]:
        """The stored rows of the keys ``writes`` name, read in the caller's transaction."""
        by_table: dict[str, list[RowKey]] = {}
        for write in writes:
            by_table.setdefault(write.table, []).append(write.key)
        out: dict[tuple[str, RowKey], Row] = {}
        for table, keys in by_table.items():
            for start in range(0, len(keys), self.dialect.chunk):
                condition, params = self.dialect.in_list("key", keys[start:start + self.dialect.chunk])
                for key, stored in conn.execute(self.dialect.sql(
                        f"SELECT key, {self.row_column} FROM rows WHERE tbl = ? AND {condition}"),
                        (table, *params)).fetchall():
                    out[(table, RowKey(key))] = self.dialect.decode(stored)
        return out

    def get_latest_version(self) -> int:
        return self._read("SELECT COALESCE(MAX(version), 0) FROM commits", (), None)[0][0]

    def get_commit_time(self, version: int) -> float | None:
        found = self._read("SELECT committed_at FROM commits WHERE version = ?", (version,), None)
        return found[0][0] if found else None

    def get_commit_times(self, first: int, last: int) -> dict[int, float]:
        return dict(self._read("SELECT version, committed_at FROM commits WHERE version BETWEEN ? AND ?",
                               (first, last), None))

    def get_changes(self, first: int, last: int, tables: Iterable[str]) -> list[Change]:
        tables = list(tables)
        if not tables:
            return []
        condition, params = self.dialect.in_list("tbl", tables)
        found = self._read(
            "SELECT tbl, key, before, after, version, expire_mode FROM changes "
            f"WHERE version BETWEEN ? AND ? AND {condition} ORDER BY version, seq", (first, last, *params), None)
        decode = self.dialect.decode
        return [Change(t, RowKey(k), decode(b), decode(a), v, None if m is None else ExpireMode(m))
                for t, k, b, a, v, m in found]

    def get_rows(self, table: str) -> dict[RowKey, Row]:
        found = self._read(f"SELECT key, {self.row_column} FROM rows WHERE tbl = ?", (table,), None)
        return {RowKey(k): self.dialect.decode(r) for k, r in found}

    def get_row(self, table: str, key: RowKey) -> Row | None:
        found = self._read(f"SELECT {self.row_column} FROM rows WHERE tbl = ? AND key = ?", (table, key), None)
        return self.dialect.decode(found[0][0]) if found else None

    def expire(self, tables: dict[str, ExpireMode], now: float) -> tuple[int, list[Change]] | None:
        condition, params = self.dialect.in_list("tbl", list(tables))
        if not self._read(  # a read first: the write lock is taken only when something has expired
            f"SELECT 1 FROM rows WHERE {condition} AND expires_at IS NOT NULL AND expires_at <= ? LIMIT 1",
            (*params, now), None,
        ):
            return None
        with self._write() as conn:
            writes = [
                RowWrite(table, RowKey(key), None, expire_mode=mode)
                for table, mode in sorted(tables.items())
                for (key,) in conn.execute(
                    self.dialect.sql("SELECT key FROM rows WHERE tbl = ? AND expires_at IS NOT NULL "
                                     "AND expires_at <= ? ORDER BY key"), (table, now)).fetchall()
            ]
            if not writes:
                return None
            version, changes = self._commit(conn, writes, now, "ttl expiry", always=True)
            assert version is not None, "store: an expiry deletes rows that exist"
            return version, changes

    # --- views --------------------------------------------------------------------------------------------------
    def get_applied_version(self, view: str) -> int | None:
        found = self._read("SELECT applied_version FROM view_defs WHERE name = ?", (view,), None)
        return found[0][0] if found else None

    def get_state(self, view: str, op_id: str, keys: Iterable[RowKey]) -> dict[RowKey, StateEntry]:
        out: dict[RowKey, StateEntry] = {}
        keys = list(keys)
        for start in range(0, len(keys), self.dialect.chunk):
            condition, params = self.dialect.in_list("key", keys[start:start + self.dialect.chunk])
            for record in self._read(f"SELECT {STATE_COLUMNS} FROM op_state WHERE view = ? AND op = ? AND {condition}",
                                     (view, op_id, *params), None):
                entry = self._state_entry(record)
                out[entry.key] = entry
        return out

    def get_failed_state(self, view: str, op_id: str) -> list[StateEntry]:
        found = self._read(f"SELECT {STATE_COLUMNS} FROM op_state WHERE view = ? AND op = ? AND error IS NOT NULL "
                           "ORDER BY key", (view, op_id), None)
        return [self._state_entry(record) for record in found]

    def get_all_state(self, view: str) -> dict[tuple[str, RowKey], StateEntry]:
        found = self._read(f"SELECT op, {STATE_COLUMNS} FROM op_state WHERE view = ? ORDER BY op, key", (view,), None)
        return {(op, RowKey(record[0])): self._state_entry(record) for op, *record in found}

    def _state_entry(self, record: Sequence[Any]) -> StateEntry:
        key, fingerprint, input_row, value, vectors, error, calls, prompt, output, seconds = record
        decode = self.dialect.decode
        return StateEntry(RowKey(key), fingerprint, decode(input_row), unpack_vectors(decode(value), vectors), error,
                          CallCost(calls, prompt, output, seconds))

    def get_state_cost(self, view: str) -> CallCost:
        return self._view_commits.state_cost(None, self._read, view)

    @functools.cached_property
    def _view_commits(self) -> ViewCommitWriter:
        return ViewCommitWriter(self.dialect, row_column=self.row_column, row_id=self.row_id)

    def commit_views(self, commits: Sequence[ViewCommit]) -> list[bool]:
        if not commits:
            return []
        view = commits[0].view
        assert all(c.view == view for c in commits), "store: commit_views takes the commits of one view"
        with self._write() as conn:
            found = conn.execute(self.dialect.sql(
                "SELECT d.applied_version, i.id FROM view_defs d LEFT JOIN view_incarnations i ON i.name = d.name "
                "AND i.dropped_version IS NULL WHERE d.name = ?"), (view,)).fetchone()
            applied, view_id = found if found is not None else (None, None)
            done = [found is not None and (c.view_id is None or view_id == c.view_id)  # else dropped since
                    and c.version > (applied if applied is not None else -1) for c in commits]  # else applied
            if any(done):
                self._view_commits.write(conn, [c for c, d in zip(commits, done, strict=True) if d], applied,
                                         view_id)
            return done

    def get_view_rows(self, view: str, as_of: int | None = None) -> dict[RowKey, Row]:
        if as_of is None:
            found = self._read(f"SELECT key, {self.row_column} FROM view_rows WHERE view = ? AND valid_to IS NULL",
                               (view,), None)
        else:
            found = self._read(
                f"SELECT key, {self.row_column} FROM view_rows WHERE view = ? AND valid_from <= ? "
                "AND (valid_to IS NULL OR valid_to > ?)", (view, as_of, as_of), None)
        # By key alone: a view has one row per key at any version.
        return {RowKey(k): self.dialect.decode(r) for k, r in sorted(found, key=lambda record: record[0])}

    def get_view_history(self, view: str, key: RowKey) -> list[HistoryEntry]:
        found = self._read(f"SELECT valid_from, valid_to, {self.row_column} FROM view_rows WHERE view = ? AND key = ? "
                           "ORDER BY valid_from", (view, key), None)
        return [HistoryEntry(f, t, self.dialect.decode(r)) for f, t, r in found]

    def get_view_changes(self, view: str, first: int, last: int) -> list[ChangeRow]:
        row = self.row_column
        found = self._read(
            f"SELECT valid_to AS version, -1, key, {row} FROM view_rows WHERE view = ? AND valid_to BETWEEN ? AND ? "
            f"UNION ALL SELECT valid_from, 1, key, {row} FROM view_rows WHERE view = ? AND valid_from BETWEEN ? AND ? "
            "ORDER BY 1, 2, 3", (view, first, last, view, first, last), None)
        return [ChangeRow(v, d, decode_key(RowKey(k)), self.dialect.decode(r)) for v, d, k, r in found]

    def get_decisions(self, view: str, key: RowKey | None = None, strategy: str | None = None) -> list[Decision]:
        # Conditions only for the filters given: PostgreSQL cannot type a bare NULL parameter in "? IS NULL".
        where, params = ["view = ?"], [view]
        for column, value in (("key", key), ("strategy", strategy)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        found = self._read(f"SELECT {DECISION_COLUMNS} FROM decisions WHERE {' AND '.join(where)} "
                           f"ORDER BY {self.row_id}", params, None)
        return [Decision(v, RowKey(k), *rest) for v, k, *rest in found]

    def get_baselines(self) -> dict[str, Baseline]:
        found = self._read(
            f"SELECT name, {BASELINE_COLUMNS} FROM view_defs UNION ALL "
            f"SELECT name, {BASELINE_COLUMNS} FROM view_incarnations WHERE dropped_version IS NOT NULL", (), None)
        out: dict[str, Baseline] = {}
        for name, refreshes, *costs in found:
            found_here = Baseline(refreshes, CallCost(*costs[:4]), CallCost(*costs[4:]))
            out[name] = out.get(name, Baseline()) + found_here
        return out

    def get_costs_by_version(self) -> list[tuple[int, CallCost, CallCost]]:
        paid = self._read(
            "SELECT COALESCE(version, 0), COUNT(*), SUM(prompt_tokens), SUM(output_tokens), SUM(seconds) "
            "FROM ledger WHERE outcome = 'paid' GROUP BY 1", (), None)
        full = self._read("SELECT version, SUM(calls), SUM(prompt_tokens), SUM(output_tokens), SUM(seconds) "
                          "FROM refresh_costs GROUP BY 1", (), None)
        by_version: dict[int, list[CallCost]] = {}
        for position, found in enumerate((paid, full)):
            for version, *cost in found:
                by_version.setdefault(version, [CallCost(), CallCost()])[position] = self.dialect.cost(*cost)
        return [(version, *by_version[version]) for version in sorted(by_version)]

