"""The embedded default store: one SQLite file in WAL mode.

    >>> store = SQLiteStore(":memory:")
    >>> store.commit([], committed_at=0.0)[0]
    1

One connection is shared by the threads of a process behind a re-entrant lock; every write is one ``BEGIN
IMMEDIATE`` transaction, so several processes on one file serialise on SQLite's own lock (and share views and calls
out through leases and claims: ``deltamem.store.sqlite_coordination``). ``transaction()`` holds
one such transaction across several calls, and the writes inside it nest as savepoints. ``synchronous=FULL``
makes a commit survive a killed process and a power cut alike.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from deltamem.changes import ERROR_COLUMN, Change, ExpireMode, Row, RowKey, RowWrite, decode_key
from deltamem.errors import NoTable
from deltamem.llm.base import Completion
from deltamem.store.base import (
    Baseline,
    CallCost,
    CallInFlight,
    ChangeRow,
    Decision,
    Dropped,
    HistoryEntry,
    LedgerEntry,
    LedgerTotals,
    StateEntry,
    Store,
    TableDef,
    ViewCommit,
    ViewDef,
    resolve_drop,
)
from deltamem.store.processes import is_gone
from deltamem.store.sqlite_catalog import (
    bump_catalog_version,
    create_table_def,
    create_view_def,
    get_catalog_version,
    save_table_defs,
)
from deltamem.store.sqlite_coordination import SQLiteCoordination, end_claims, new_claim_owner, note_in_flight
from deltamem.store.sqlite_schema import create_or_upgrade


def _dumps(value: Any) -> str:
    # allow_nan=False: json.dumps would write NaN/Infinity, which SQLite's json_extract rejects on every later read.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class SQLiteStore(SQLiteCoordination, Store):
    """A ``Store`` in one SQLite file (``":memory:"`` for a throwaway one)."""

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
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            # Nested only inside transaction() on this thread, as the lock is held for a whole transaction: then a
            # savepoint, so that a write that fails still changes nothing while the enclosing block goes on.
            nested = self._writing
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

    # --- catalog ------------------------------------------------------------------------------------------------
    def put_table_def(self, table: TableDef) -> None:
        with self._write() as conn:
            create_table_def(conn, table)

    def get_table_defs(self) -> list[TableDef]:
        return [TableDef.from_json(_loads(d)) for (d,) in self._query("SELECT def FROM table_defs ORDER BY name")]

    def get_catalog_version(self) -> int:
        with self._lock:
            return get_catalog_version(self._conn)

    def put_view_def(self, view: ViewDef, *, replace: bool = False) -> ViewDef:
        with self._write() as conn:
            create_view_def(conn, view.name, view.plan, replace=replace)
            view_id = self._view_id(conn, view.name)
            if view_id is None:
                view_id = conn.execute("INSERT INTO view_incarnations (name) VALUES (?)", (view.name,)).lastrowid
            return ViewDef(view.name, view.plan, view_id)

    def get_view_defs(self) -> list[ViewDef]:
        found = self._query(
            "SELECT d.name, d.def, i.id FROM view_defs d LEFT JOIN view_incarnations i "
            "ON i.name = d.name AND i.dropped_version IS NULL ORDER BY d.rowid"
        )
        return [ViewDef(n, _loads(d), i) for n, d, i in found]

    def get_view_id(self, view: str) -> int | None:
        with self._lock:
            return self._view_id(self._conn, view)

    @staticmethod
    def _view_id(conn: sqlite3.Connection, view: str) -> int | None:
        found = conn.execute(
            "SELECT i.id FROM view_defs d JOIN view_incarnations i ON i.name = d.name AND i.dropped_version IS NULL "
            "WHERE d.name = ?", (view,)
        ).fetchone()
        return None if found is None else found[0]

    def drop(
        self, tables: Sequence[str], views: Sequence[str], *, cascade: bool, committed_at: float, note: str = "",
        writes: Sequence[RowWrite] = (), table_defs: Sequence[TableDef] = (), checked: Sequence[TableDef] = (),
    ) -> Dropped:
        with self._write() as conn:
            save_table_defs(conn, table_defs, checked)
            version, _changes = self._commit(conn, writes, committed_at, note, always=True)
            assert version is not None, "store: a drop always takes a version"
            table_names = [name for (name,) in conn.execute("SELECT name FROM table_defs")]
            plans = {name: _loads(d) for name, d in conn.execute("SELECT name, def FROM view_defs ORDER BY rowid")}
            dropped_views = resolve_drop(tables, views, cascade=cascade, table_names=table_names, plans=plans)
            for view in dropped_views:
                baseline = conn.execute(f"SELECT {_BASELINE_COLUMNS} FROM view_defs WHERE name = ?", (view,)).fetchone()
                if self._view_id(conn, view) is None:  # a view of a file older than incarnations, not reopened since
                    conn.execute("INSERT INTO view_incarnations (name) VALUES (?)", (view,))
                assignments = ", ".join(f"{column} = ?" for column in _BASELINE_COLUMNS.split(", "))
                conn.execute(
                    f"UPDATE view_incarnations SET dropped_version = ?, {assignments} "
                    "WHERE name = ? AND dropped_version IS NULL", (version, *baseline, view)
                )
                for table in ("view_defs", "op_state", "view_rows", "decisions", "view_leases"):
                    column = "name" if table == "view_defs" else "view"
                    conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (view,))
            for table in tables:
                conn.execute("DELETE FROM table_defs WHERE name = ?", (table,))
                conn.execute("DELETE FROM rows WHERE tbl = ?", (table,))
                conn.execute("DELETE FROM changes WHERE tbl = ?", (table,))
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
        self, conn: sqlite3.Connection, writes: Sequence[RowWrite], committed_at: float, note: str, *, always: bool
    ) -> tuple[int | None, list[Change]]:
        """Apply ``writes`` as the next version; with no change among them and not ``always``, no version (None)."""
        changes: list[Change] = []
        if writes:
            known = {name for (name,) in conn.execute("SELECT name FROM table_defs")}
            missing = sorted({write.table for write in writes} - known)
            if missing:  # another process dropped it; its rows must not come back without a definition
                raise NoTable(f'Table "{missing[0]}" does not exist (dropped?); nothing was committed')
        (last,) = conn.execute("SELECT COALESCE(MAX(version), 0) FROM commits").fetchone()
        version = last + 1
        conn.execute("INSERT INTO commits VALUES (?, ?, ?)", (version, committed_at, note))
        for write in writes:
            found = conn.execute(
                "SELECT row FROM rows WHERE tbl = ? AND key = ?", (write.table, write.key)
            ).fetchone()
            before = _loads(found[0]) if found else None
            if write.after is None:
                if before is None:
                    continue
                conn.execute("DELETE FROM rows WHERE tbl = ? AND key = ?", (write.table, write.key))
            else:
                conn.execute(
                    "INSERT INTO rows VALUES (?, ?, ?, ?) ON CONFLICT (tbl, key) DO UPDATE SET "
                    "row = excluded.row, expires_at = excluded.expires_at",
                    (write.table, write.key, _dumps(write.after), write.expires_at),
                )
                if before == write.after:
                    continue  # a rewrite of the same row only renews its TTL
            change = Change(write.table, write.key, before, write.after, version, write.expire_mode)
            conn.execute(
                "INSERT INTO changes VALUES (?, ?, ?, ?, ?, ?, ?)",
                (version, len(changes), write.table, write.key,
                 None if before is None else _dumps(before),
                 None if write.after is None else _dumps(write.after),
                 None if write.expire_mode is None else write.expire_mode.value),
            )
            changes.append(change)
        if not changes and not always:  # a version is a change: rewrites of equal rows and deletes of absent keys
            conn.execute("DELETE FROM commits WHERE version = ?", (version,))  # make none (the TTL renewals stay)
            return None, changes
        return version, changes

    def get_latest_version(self) -> int:
        return self._query("SELECT COALESCE(MAX(version), 0) FROM commits")[0][0]

    def get_commit_time(self, version: int) -> float | None:
        found = self._query("SELECT committed_at FROM commits WHERE version = ?", (version,))
        return found[0][0] if found else None

    def get_commit_times(self, first: int, last: int) -> dict[int, float]:
        found = self._query("SELECT version, committed_at FROM commits WHERE version BETWEEN ? AND ?", (first, last))
        return dict(found)

    def get_changes(self, first: int, last: int, tables: Iterable[str]) -> list[Change]:
        tables = list(tables)
        if not tables:
            return []
        marks = ",".join("?" * len(tables))
        found = self._query(
            f"SELECT tbl, key, before, after, version, expire_mode FROM changes "
            f"WHERE version BETWEEN ? AND ? AND tbl IN ({marks}) ORDER BY version, seq",
            (first, last, *tables),
        )
        return [
            Change(t, RowKey(k), _loads(b), _loads(a), v, None if m is None else ExpireMode(m))
            for t, k, b, a, v, m in found
        ]

    def get_rows(self, table: str) -> dict[RowKey, Row]:
        return {RowKey(k): _loads(r) for k, r in self._query("SELECT key, row FROM rows WHERE tbl = ?", (table,))}

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

    def get_row(self, table: str, key: RowKey) -> Row | None:
        found = self._query("SELECT row FROM rows WHERE tbl = ? AND key = ?", (table, key))
        return _loads(found[0][0]) if found else None

    def expire(self, tables: dict[str, ExpireMode], now: float) -> tuple[int, list[Change]] | None:
        marks = ",".join("?" * len(tables))
        if not self._query(  # a read first: the write lock is taken only when something has expired
            f"SELECT 1 FROM rows WHERE tbl IN ({marks}) AND expires_at IS NOT NULL AND expires_at <= ? LIMIT 1",
            (*tables, now),
        ):
            return None
        with self._write() as conn:
            writes = [
                RowWrite(table, RowKey(key), None, expire_mode=mode)
                for table, mode in sorted(tables.items())
                for (key,) in conn.execute(
                    "SELECT key FROM rows WHERE tbl = ? AND expires_at IS NOT NULL AND expires_at <= ? ORDER BY key",
                    (table, now),
                )
            ]
            if not writes:
                return None
            version, changes = self._commit(conn, writes, now, "ttl expiry", always=True)
            assert version is not None, "store: an expiry deletes rows that exist"
            return version, changes

    # --- views --------------------------------------------------------------------------------------------------
    def get_applied_version(self, view: str) -> int | None:
        found = self._query("SELECT applied_version FROM view_defs WHERE name = ?", (view,))
        return found[0][0] if found else None

    def get_state(self, view: str, op_id: str, keys: Iterable[RowKey]) -> dict[RowKey, StateEntry]:
        out: dict[RowKey, StateEntry] = {}
        keys = list(keys)
        for start in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for record in self._query(
                f"SELECT * FROM op_state WHERE view = ? AND op = ? AND key IN ({marks})", (view, op_id, *chunk)
            ):
                entry = _state_entry(record)
                out[entry.key] = entry
        return out

    def get_failed_state(self, view: str, op_id: str) -> list[StateEntry]:
        found = self._query(
            "SELECT * FROM op_state WHERE view = ? AND op = ? AND error IS NOT NULL ORDER BY key", (view, op_id)
        )
        return [_state_entry(record) for record in found]

    def get_all_state(self, view: str) -> dict[tuple[str, RowKey], StateEntry]:
        found = self._query("SELECT * FROM op_state WHERE view = ? ORDER BY op, key", (view,))
        return {(record[1], RowKey(record[2])): _state_entry(record) for record in found}

    def get_state_cost(self, view: str) -> CallCost:
        with self._lock:
            return self._state_cost(self._conn, view)

    @staticmethod
    def _state_cost(conn: sqlite3.Connection, view: str) -> CallCost:
        calls, prompt, output, seconds = conn.execute(
            "SELECT COALESCE(SUM(calls), 0), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(output_tokens), 0), "
            "COALESCE(SUM(seconds), 0) FROM op_state WHERE view = ?",
            (view,),
        ).fetchone()
        return CallCost(calls, prompt, output, seconds)

    def commit_view(self, commit: ViewCommit) -> bool:
        with self._write() as conn:
            found = conn.execute("SELECT applied_version FROM view_defs WHERE name = ?", (commit.view,)).fetchone()
            if found is None or (commit.view_id is not None and self._view_id(conn, commit.view) != commit.view_id):
                return False  # computed for a view that has been dropped since (and perhaps created again)
            (applied,) = found
            if applied is not None and applied >= commit.version:
                return False  # already applied: a commit is idempotent
            for op_id, key in commit.state_deletes:
                conn.execute("DELETE FROM op_state WHERE view = ? AND op = ? AND key = ?", (commit.view, op_id, key))
            for op_id, e in commit.state_puts:
                conn.execute(
                    "INSERT OR REPLACE INTO op_state VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (commit.view, op_id, e.key, e.fingerprint, _dumps(e.input_row), _dumps(e.value), e.error,
                     e.cost.calls, e.cost.prompt_tokens, e.cost.output_tokens, e.cost.seconds),
                )
            for key, row in commit.outputs.items():
                current = conn.execute(
                    "SELECT rowid, row FROM view_rows WHERE view = ? AND key = ? AND valid_to IS NULL",
                    (commit.view, key),
                ).fetchone()
                if current is not None and row is not None and _loads(current[1]) == row:
                    continue
                if current is not None:
                    conn.execute("UPDATE view_rows SET valid_to = ? WHERE rowid = ?", (commit.version, current[0]))
                if row is not None:
                    conn.execute(
                        "INSERT INTO view_rows VALUES (?, ?, ?, ?, NULL)",
                        (commit.view, key, _dumps(row), commit.version),
                    )
            conn.executemany(
                "INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(d.view, d.key, d.version, d.strategy, d.reason, d.calls, d.prompt_tokens, d.reused_tokens,
                  d.output_tokens, d.seconds, d.evidence) for d in commit.decisions],
            )
            full = no_memo = CallCost()
            if commit.count_baseline:
                full, no_memo = self._full_recompute_cost(conn, commit), self._state_cost(conn, commit.view)
                conn.execute("INSERT OR REPLACE INTO refresh_costs VALUES (?, ?, ?, ?, ?, ?)",
                             (commit.view, commit.version, *_cost_tuple(full)))
            conn.execute(
                "UPDATE view_defs SET applied_version = ?, refreshes = refreshes + ?, base_calls = base_calls + ?, "
                "base_prompt_tokens = base_prompt_tokens + ?, base_output_tokens = base_output_tokens + ?, "
                "base_seconds = base_seconds + ?, nomemo_calls = nomemo_calls + ?, "
                "nomemo_prompt_tokens = nomemo_prompt_tokens + ?, nomemo_output_tokens = nomemo_output_tokens + ?, "
                "nomemo_seconds = nomemo_seconds + ? WHERE name = ?",
                (commit.version, int(commit.count_baseline), *_cost_tuple(full), *_cost_tuple(no_memo), commit.view),
            )
            return True

    @staticmethod
    def _full_recompute_cost(conn: sqlite3.Connection, commit: ViewCommit) -> CallCost:
        """What a full recompute of ``commit.view`` at ``commit.version`` pays in this engine, memo included: one
        call per distinct fingerprint of a paid stored value that neither the memo held before this refresh nor the
        baseline paid before (``Store.commit_view``). Those calls join the baseline memo.

        NOTE: a version redone after a crash finds the calls its first attempt paid in the memo, so the baseline
        misses those (the ledger still counts them as paid)."""
        charged = conn.execute(
            "SELECT s.fingerprint, MAX(s.prompt_tokens), MAX(s.output_tokens), MAX(s.seconds) FROM op_state s "
            "WHERE s.view = ? AND s.calls > 0 AND s.error IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM baseline_memo b WHERE b.call_hash = s.fingerprint) "
            "AND (NOT EXISTS (SELECT 1 FROM memo m WHERE m.call_hash = s.fingerprint) "
            "     OR s.fingerprint IN (SELECT value FROM json_each(?))) "
            "GROUP BY s.fingerprint",
            (commit.view, json.dumps(sorted(commit.paid_calls))),
        ).fetchall()
        conn.executemany("INSERT OR IGNORE INTO baseline_memo VALUES (?)", [(h,) for h, *_cost in charged])
        return sum((CallCost(1, prompt, output, seconds) for _h, prompt, output, seconds in charged), CallCost())

    def get_view_rows(self, view: str, as_of: int | None = None) -> dict[RowKey, Row]:
        if as_of is None:
            found = self._query("SELECT key, row FROM view_rows WHERE view = ? AND valid_to IS NULL", (view,))
        else:
            found = self._query(
                "SELECT key, row FROM view_rows WHERE view = ? AND valid_from <= ? "
                "AND (valid_to IS NULL OR valid_to > ?)",
                (view, as_of, as_of),
            )
        return {RowKey(k): _loads(r) for k, r in sorted(found)}

    def count_view_rows(self, view: str) -> tuple[int, int]:
        # Counted inside SQLite (json_extract), so a dashboard's poll never decodes every row in Python.
        total, failed = self._query(
            f"SELECT COUNT(*), COALESCE(SUM(json_extract(row, '$.{ERROR_COLUMN}') IS NOT NULL), 0) FROM view_rows "
            "WHERE view = ? AND valid_to IS NULL",
            (view,),
        )[0]
        return total, failed

    def get_view_history(self, view: str, key: RowKey) -> list[HistoryEntry]:
        found = self._query(
            "SELECT valid_from, valid_to, row FROM view_rows WHERE view = ? AND key = ? ORDER BY valid_from",
            (view, key),
        )
        return [HistoryEntry(f, t, _loads(r)) for f, t, r in found]

    def get_view_changes(self, view: str, first: int, last: int) -> list[ChangeRow]:
        found = self._query(
            "SELECT valid_to AS version, -1, key, row FROM view_rows WHERE view = ? AND valid_to BETWEEN ? AND ? "
            "UNION ALL SELECT valid_from, 1, key, row FROM view_rows WHERE view = ? AND valid_from BETWEEN ? AND ? "
            "ORDER BY 1, 2, 3",
            (view, first, last, view, first, last),
        )
        return [ChangeRow(v, d, decode_key(RowKey(k)), _loads(r)) for v, d, k, r in found]

    def get_decisions(self, view: str, key: RowKey | None = None, strategy: str | None = None) -> list[Decision]:
        found = self._query(
            "SELECT * FROM decisions WHERE view = ? AND (? IS NULL OR key = ?) AND (? IS NULL OR strategy = ?) "
            "ORDER BY rowid",
            (view, key, key, strategy, strategy),
        )
        return [Decision(v, RowKey(k), *rest) for v, k, *rest in found]

    def get_baselines(self) -> dict[str, Baseline]:
        found = self._query(
            f"SELECT name, {_BASELINE_COLUMNS} FROM view_defs UNION ALL "
            f"SELECT name, {_BASELINE_COLUMNS} FROM view_incarnations WHERE dropped_version IS NOT NULL"
        )
        out: dict[str, Baseline] = {}
        for name, refreshes, *costs in found:
            found_here = Baseline(refreshes, CallCost(*costs[:4]), CallCost(*costs[4:]))
            out[name] = out.get(name, Baseline()) + found_here
        return out

    def get_costs_by_version(self) -> list[tuple[int, CallCost, CallCost]]:
        paid = self._query(
            "SELECT COALESCE(version, 0), COUNT(*), SUM(prompt_tokens), SUM(output_tokens), SUM(seconds) "
            "FROM ledger WHERE outcome = 'paid' GROUP BY 1"
        )
        full = self._query(
            "SELECT version, SUM(calls), SUM(prompt_tokens), SUM(output_tokens), SUM(seconds) FROM refresh_costs "
            "GROUP BY 1"
        )
        by_version: dict[int, list[CallCost]] = {}
        for position, found in enumerate((paid, full)):
            for version, *cost in found:
                by_version.setdefault(version, [CallCost(), CallCost()])[position] = CallCost(*cost)
        return [(version, *by_version[version]) for version in sorted(by_version)]

    # --- memo and ledger ----------------------------------------------------------------------------------------
    def get_memo(self, call_hash: str) -> Completion | None:
        found = self._query(
            "SELECT text, prompt_tokens, output_tokens, seconds, model, reused_tokens, finish_reason "
            "FROM memo WHERE call_hash = ?",
            (call_hash,),
        )
        return Completion(*found[0]) if found else None

    def record_call(self, entry: LedgerEntry, memo: Completion | None = None, in_flight: int | None = None) -> None:
        with self._write() as conn:
            _append_ledger(conn, entry, in_flight)
            if entry.outcome in ("paid", "failed"):
                end_claims(conn, self.claim_owner, [entry.call_hash])
            if memo is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO memo VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (entry.call_hash, memo.model, memo.text, memo.prompt_tokens, memo.reused_tokens,
                     memo.output_tokens, memo.seconds, memo.finish_reason),
                )

    def begin_call(self, call: CallInFlight) -> int:
        with self._write() as conn:
            return note_in_flight(conn, call)

    def take_interrupted_calls(self) -> list[LedgerEntry]:
        taken = []
        # Every open calls this: take the write lock only when some call is in flight, not on each start-up.
        if not self._query("SELECT 1 FROM calls_in_flight LIMIT 1"):
            return taken
        with self._write() as conn:
            for record in conn.execute(
                "SELECT id, started_at, version, view, operator, reason, model, call_hash, host, pid, process "
                "FROM calls_in_flight ORDER BY id"
            ).fetchall():
                flight, started_at, version, view, operator, reason, model, h, host, pid, process = record
                if not is_gone(host, pid, process):
                    continue
                entry = LedgerEntry(started_at, version, view, operator, reason, model, "interrupted", 0, 0, 0, 0.0,
                                    h, f"in flight when process {pid} on {host} died: its result, if it was paid, "
                                       "was lost, and the call is paid again when the view still needs it")
                _append_ledger(conn, entry, flight)  # in this transaction: each row is taken once
                taken.append(entry)
        return taken

    def get_ledger(self, view: str | None = None) -> list[LedgerEntry]:
        columns = "ts, version, view, operator, reason, model, outcome, prompt_tokens, reused_tokens, " \
                  "output_tokens, seconds, call_hash, error"
        if view is None:
            found = self._query(f"SELECT {columns} FROM ledger ORDER BY id")
        else:
            found = self._query(f"SELECT {columns} FROM ledger WHERE view = ? ORDER BY id", (view,))
        return [LedgerEntry(*record) for record in found]

    def get_ledger_totals(self) -> list[LedgerTotals]:
        found = self._query(
            "SELECT view, operator, outcome, COUNT(*), SUM(prompt_tokens), SUM(reused_tokens), SUM(output_tokens), "
            "SUM(seconds) FROM ledger GROUP BY view, operator, outcome ORDER BY view, operator, outcome"
        )
        return [LedgerTotals(*record) for record in found]


def _append_ledger(conn: sqlite3.Connection, entry: LedgerEntry, in_flight: int | None) -> None:
    """Write ``entry`` to the ledger and delete the call in flight ``in_flight`` (the caller's transaction)."""
    if in_flight is not None:
        conn.execute("DELETE FROM calls_in_flight WHERE id = ?", (in_flight,))
    conn.execute(
        "INSERT INTO ledger (ts, version, view, operator, reason, model, outcome, prompt_tokens, "
        "reused_tokens, output_tokens, seconds, call_hash, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (entry.ts, entry.version, entry.view, entry.operator, entry.reason, entry.model, entry.outcome,
         entry.prompt_tokens, entry.reused_tokens, entry.output_tokens, entry.seconds, entry.call_hash, entry.error),
    )


def _state_entry(record: tuple) -> StateEntry:
    _view, _op, key, fingerprint, input_row, value, error, calls, prompt, output, seconds = record
    return StateEntry(
        RowKey(key), fingerprint, _loads(input_row), _loads(value), error, CallCost(calls, prompt, output, seconds)
    )


# A view's full-recompute baseline, as ``view_defs`` and ``view_incarnations`` both store it.
_BASELINE_COLUMNS = ("refreshes, base_calls, base_prompt_tokens, base_output_tokens, base_seconds, nomemo_calls, "
                     "nomemo_prompt_tokens, nomemo_output_tokens, nomemo_seconds")


def _cost_tuple(cost: CallCost) -> tuple[int, int, int, float]:
    return cost.calls, cost.prompt_tokens, cost.output_tokens, cost.seconds
