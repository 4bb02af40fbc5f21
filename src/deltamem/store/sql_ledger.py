"""The memo and usage ledger of a SQL store, and the calls in flight between them.

    class SQLiteStore(SqlLedger, SqlCoordination, Store): ...   # a store mixes these methods in

Written once for SQLite and PostgreSQL; the store's ``dialect`` supplies what they spell differently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from deltamem.llm.base import Completion
from deltamem.store.base import CallInFlight, CallRecord, LedgerEntry, LedgerTotals
from deltamem.store.processes import is_gone
from deltamem.store.sql_coordination import end_claims, note_in_flight
from deltamem.store.sql_dialect import Connection, Dialect

_LEDGER_COLUMNS = ("ts, version, view, operator, reason, model, outcome, prompt_tokens, reused_tokens, "
                   "output_tokens, seconds, call_hash, error")


class SqlLedger:
    """Memo and ledger methods for a SQL store, whose ``_write()`` and ``_read()`` they use. Invariant: a ledger
    entry, its memo entry, the end of its call in flight and of its claim are one transaction, so a process that sees
    no claim sees the memo entry, or a failure."""

    claim_owner: str
    dialect: Dialect
    _write: Callable[[], AbstractContextManager[Any]]
    _read: Callable[..., list[tuple]]

    def get_memo(self, call_hash: str) -> Completion | None:
        found = self._read("SELECT text, prompt_tokens, output_tokens, seconds, model, reused_tokens, finish_reason "
                           "FROM memo WHERE call_hash = ?", (call_hash,), None)
        return Completion(*found[0]) if found else None

    def record_calls(self, records: Sequence[CallRecord]) -> None:
        if not records:
            return
        dialect = self.dialect
        with self._write() as conn:
            dialect.executemany(conn, "DELETE FROM calls_in_flight WHERE id = ?",
                                [(r.in_flight,) for r in records if r.in_flight is not None])
            dialect.executemany(conn, f"INSERT INTO ledger ({_LEDGER_COLUMNS}) VALUES "
                                      "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                [_ledger_row(r.entry) for r in records])
            end_claims(dialect, conn, self.claim_owner,
                       [r.entry.call_hash for r in records if r.entry.outcome in ("paid", "failed")])
            dialect.executemany(conn, dialect.insert_or_ignore("memo", 8), [
                (r.entry.call_hash, m.model, m.text, m.prompt_tokens, m.reused_tokens, m.output_tokens, m.seconds,
                 m.finish_reason) for r in records if (m := r.memo) is not None])

    def begin_call(self, call: CallInFlight) -> int:
        with self._write() as conn:
            return note_in_flight(self.dialect, conn, call)

    def take_interrupted_calls(self) -> list[LedgerEntry]:
        taken: list[LedgerEntry] = []
        # Every open calls this: take the write lock only when some call is in flight, not on each start-up.
        if not self._read("SELECT 1 FROM calls_in_flight LIMIT 1", (), None):
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
                _append_ledger(self.dialect, conn, entry, flight)  # in this transaction: each row is taken once
                taken.append(entry)
        return taken

    def get_ledger(self, view: str | None = None) -> list[LedgerEntry]:
        if view is None:
            found = self._read(f"SELECT {_LEDGER_COLUMNS} FROM ledger ORDER BY id", (), None)
        else:
            found = self._read(f"SELECT {_LEDGER_COLUMNS} FROM ledger WHERE view = ? ORDER BY id", (view,), None)
        return [LedgerEntry(*record) for record in found]

    def get_ledger_totals(self) -> list[LedgerTotals]:
        found = self._read(
            "SELECT view, operator, outcome, COUNT(*), SUM(prompt_tokens), SUM(reused_tokens), SUM(output_tokens), "
            "SUM(seconds) FROM ledger GROUP BY view, operator, outcome ORDER BY view, operator, outcome", (), None)
        # Cast: PostgreSQL sums integers as numeric (Decimal).
        return [LedgerTotals(v, o, out, int(n), int(p), int(r), int(t), float(s)) for v, o, out, n, p, r, t, s in found]


def _append_ledger(dialect: Dialect, conn: Connection, entry: LedgerEntry, in_flight: int | None) -> None:
    """Write ``entry`` to the ledger and delete the call in flight ``in_flight`` (the caller's transaction)."""
    if in_flight is not None:
        conn.execute(dialect.sql("DELETE FROM calls_in_flight WHERE id = ?"), (in_flight,))
    conn.execute(dialect.sql(f"INSERT INTO ledger ({_LEDGER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                 _ledger_row(entry))


def _ledger_row(entry: LedgerEntry) -> tuple:
    return (entry.ts, entry.version, entry.view, entry.operator, entry.reason, entry.model, entry.outcome,
            entry.prompt_tokens, entry.reused_tokens, entry.output_tokens, entry.seconds, entry.call_hash, entry.error)
