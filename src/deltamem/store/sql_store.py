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

_STATE_COLUMNS = "key, fingerprint, input_row, value, error, calls, prompt_tokens, output_tokens, seconds"
_DECISION_COLUMNS = ("view, key, version, strategy, reason, calls, prompt_tokens, reused_tokens, output_tokens, "
                     "seconds, evidence")
_REFRESH_COST_COLUMNS = "view, version, calls, prompt_tokens, output_tokens, seconds"
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
        for write in writes:
            stored = conn.execute(sql(f"SELECT {row} FROM rows WHERE tbl = ? AND key = ?"),
                                  (write.table, write.key)).fetchone()
            before = self.dialect.decode(stored[0]) if stored else None
            if write.after is None:
                if before is None:
                    continue
                conn.execute(sql("DELETE FROM rows WHERE tbl = ? AND key = ?"), (write.table, write.key))
            else:
                conn.execute(
                    sql(f"INSERT INTO rows VALUES (?, ?, ?, ?) ON CONFLICT (tbl, key) DO UPDATE SET "
                        f"{row} = excluded.{row}, expires_at = excluded.expires_at"),
                    (write.table, write.key, encode(write.after), write.expires_at),
                )
                if before == write.after:
                    continue  # a rewrite of the same row only renews its TTL
            change = Change(write.table, write.key, before, write.after, version, write.expire_mode)
            conn.execute(
                sql("INSERT INTO changes VALUES (?, ?, ?, ?, ?, ?, ?)"),
                (version, len(changes), write.table, write.key,
                 None if before is None else encode(before), None if write.after is None else encode(write.after),
                 None if write.expire_mode is None else write.expire_mode.value),
            )
            changes.append(change)
        if not changes and not always:  # a version is a change: rewrites of equal rows and deletes of absent keys
            conn.execute(sql("DELETE FROM commits WHERE version = ?"), (version,))  # make none (TTL renewals stay)
            return None, changes
        return version, changes

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
            for record in self._read(f"SELECT {_STATE_COLUMNS} FROM op_state WHERE view = ? AND op = ? AND {condition}",
                                     (view, op_id, *params), None):
                entry = self._state_entry(record)
                out[entry.key] = entry
        return out

    def get_failed_state(self, view: str, op_id: str) -> list[StateEntry]:
        found = self._read(f"SELECT {_STATE_COLUMNS} FROM op_state WHERE view = ? AND op = ? AND error IS NOT NULL "
                           "ORDER BY key", (view, op_id), None)
        return [self._state_entry(record) for record in found]

    def get_all_state(self, view: str) -> dict[tuple[str, RowKey], StateEntry]:
        found = self._read(f"SELECT op, {_STATE_COLUMNS} FROM op_state WHERE view = ? ORDER BY op, key", (view,), None)
        return {(op, RowKey(record[0])): self._state_entry(record) for op, *record in found}

    def _state_entry(self, record: Sequence[Any]) -> StateEntry:
        key, fingerprint, input_row, value, error, calls, prompt, output, seconds = record
        decode = self.dialect.decode
        return StateEntry(RowKey(key), fingerprint, decode(input_row), decode(value), error,
                          CallCost(calls, prompt, output, seconds))

    def get_state_cost(self, view: str) -> CallCost:
        return self._state_cost(None, view)

    def _state_cost(self, conn: Connection | None, view: str) -> CallCost:
        found = self._read(
            "SELECT COALESCE(SUM(calls), 0), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(output_tokens), 0), "
            "COALESCE(SUM(seconds), 0) FROM op_state WHERE view = ?", (view,), conn)
        return self.dialect.cost(*found[0])

    def commit_view(self, commit: ViewCommit) -> bool:
        sql, encode, row_column = self.dialect.sql, self.dialect.encode, self.row_column
        with self._write() as conn:
            found = conn.execute(sql("SELECT applied_version FROM view_defs WHERE name = ?"), (commit.view,)).fetchone()
            if found is None or (commit.view_id is not None and self._view_id(conn, commit.view) != commit.view_id):
                return False  # computed for a view that has been dropped since (and perhaps created again)
            (applied,) = found
            if applied is not None and applied >= commit.version:
                return False  # already applied: a commit is idempotent
            for op_id, key in commit.state_deletes:
                conn.execute(sql("DELETE FROM op_state WHERE view = ? AND op = ? AND key = ?"),
                             (commit.view, op_id, key))
            for op_id, e in commit.state_puts:
                conn.execute(
                    self.dialect.upsert("op_state", f"view, op, {_STATE_COLUMNS}", "view, op, key"),
                    (commit.view, op_id, e.key, e.fingerprint, encode(e.input_row), encode(e.value), e.error,
                     e.cost.calls, e.cost.prompt_tokens, e.cost.output_tokens, e.cost.seconds),
                )
            for key, row in commit.outputs.items():
                current = conn.execute(
                    sql(f"SELECT {self.row_id}, {row_column} FROM view_rows WHERE view = ? AND key = ? "
                        "AND valid_to IS NULL"), (commit.view, key)).fetchone()
                if current is not None and row is not None and self.dialect.decode(current[1]) == row:
                    continue
                if current is not None:
                    conn.execute(sql(f"UPDATE view_rows SET valid_to = ? WHERE {self.row_id} = ?"),
                                 (commit.version, current[0]))
                if row is not None:
                    conn.execute(sql(f"INSERT INTO view_rows (view, key, {row_column}, valid_from) "
                                     "VALUES (?, ?, ?, ?)"),
                                 (commit.view, key, encode(row), commit.version))
            self.dialect.executemany(
                conn, f"INSERT INTO decisions ({_DECISION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(d.view, d.key, d.version, d.strategy, d.reason, d.calls, d.prompt_tokens, d.reused_tokens,
                  d.output_tokens, d.seconds, d.evidence) for d in commit.decisions])
            full = no_memo = CallCost()
            if commit.count_baseline:
                full, no_memo = self._full_recompute_cost(conn, commit), self._state_cost(conn, commit.view)
                conn.execute(self.dialect.upsert("refresh_costs", _REFRESH_COST_COLUMNS, "view, version"),
                             (commit.view, commit.version, *cost_tuple(full)))
            conn.execute(
                sql("UPDATE view_defs SET applied_version = ?, refreshes = refreshes + ?, base_calls = base_calls + ?, "
                    "base_prompt_tokens = base_prompt_tokens + ?, base_output_tokens = base_output_tokens + ?, "
                    "base_seconds = base_seconds + ?, nomemo_calls = nomemo_calls + ?, "
                    "nomemo_prompt_tokens = nomemo_prompt_tokens + ?, nomemo_output_tokens = nomemo_output_tokens + ?, "
                    "nomemo_seconds = nomemo_seconds + ? WHERE name = ?"),
                (commit.version, int(commit.count_baseline), *cost_tuple(full), *cost_tuple(no_memo), commit.view),
            )
            return True

    def _full_recompute_cost(self, conn: Connection, commit: ViewCommit) -> CallCost:
        """What a full recompute of ``commit.view`` at ``commit.version`` pays in this engine, memo included: one
        call per distinct fingerprint of a paid stored value that neither the memo held before this refresh nor the
        baseline paid before (``Store.commit_view``). Those calls join the baseline memo.

        NOTE: a version redone after a crash finds the calls its first attempt paid in the memo, so the baseline
        misses those (the ledger still counts them as paid)."""
        paid, params = self.dialect.in_long_list("s.fingerprint", sorted(commit.paid_calls))
        charged = conn.execute(self.dialect.sql(
            "SELECT s.fingerprint, MAX(s.prompt_tokens), MAX(s.output_tokens), MAX(s.seconds) FROM op_state s "
            "WHERE s.view = ? AND s.calls > 0 AND s.error IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM baseline_memo b WHERE b.call_hash = s.fingerprint) "
            f"AND (NOT EXISTS (SELECT 1 FROM memo m WHERE m.call_hash = s.fingerprint) OR {paid}) "
            "GROUP BY s.fingerprint"), (commit.view, *params)).fetchall()
        self.dialect.insert_keys(conn, "baseline_memo", [h for h, *_cost in charged])
        return sum((self.dialect.cost(1, prompt, output, seconds) for _h, prompt, output, seconds in charged),
                   CallCost())

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
        found = self._read(f"SELECT {_DECISION_COLUMNS} FROM decisions WHERE {' AND '.join(where)} "
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


def cost_tuple(cost: CallCost) -> tuple[int, int, int, float]:
    return cost.calls, cost.prompt_tokens, cost.output_tokens, cost.seconds
