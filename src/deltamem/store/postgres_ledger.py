"""The PostgreSQL store's memo and usage ledger, and the calls in flight between them.

    class PostgresStore(PostgresLedger, PostgresCoordination, Store): ...   # the store mixes these methods in

The same semantics as ``SQLiteStore``'s: a ledger entry, its memo entry, the end of its call in flight and of its
claim are one transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import psycopg

from deltamem.llm.base import Completion
from deltamem.store.base import CallInFlight, LedgerEntry, LedgerTotals
from deltamem.store.postgres_coordination import end_claims, note_in_flight
from deltamem.store.processes import is_gone

_LEDGER_COLUMNS = ("ts, version, view, operator, reason, model, outcome, prompt_tokens, reused_tokens, "
                   "output_tokens, seconds, call_hash, error")


class PostgresLedger:
    """Memo and ledger methods for ``PostgresStore``, whose ``_write()`` and ``_query()`` they use."""

    claim_owner: str
    _write: Callable[[], AbstractContextManager[psycopg.Connection]]
    _query: Callable[..., list[tuple]]

    def get_memo(self, call_hash: str) -> Completion | None:
        found = self._query("SELECT text, prompt_tokens, output_tokens, seconds, model, reused_tokens, finish_reason "
                            "FROM memo WHERE call_hash = %s", (call_hash,))
        return Completion(*found[0]) if found else None

    def record_call(self, entry: LedgerEntry, memo: Completion | None = None, in_flight: int | None = None) -> None:
        with self._write() as conn:
            _append_ledger(conn, entry, in_flight)
            if entry.outcome in ("paid", "failed"):
                end_claims(conn, self.claim_owner, [entry.call_hash])
            if memo is not None:
                conn.execute(
                    "INSERT INTO memo VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (entry.call_hash, memo.model, memo.text, memo.prompt_tokens, memo.reused_tokens,
                     memo.output_tokens, memo.seconds, memo.finish_reason))

    def begin_call(self, call: CallInFlight) -> int:
        with self._write() as conn:
            return note_in_flight(conn, call)

    def take_interrupted_calls(self) -> list[LedgerEntry]:
        taken: list[LedgerEntry] = []
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
        if view is None:
            found = self._query(f"SELECT {_LEDGER_COLUMNS} FROM ledger ORDER BY id")
        else:
            found = self._query(f"SELECT {_LEDGER_COLUMNS} FROM ledger WHERE view = %s ORDER BY id", (view,))
        return [LedgerEntry(*record) for record in found]

    def get_ledger_totals(self) -> list[LedgerTotals]:
        found = self._query(
            "SELECT view, operator, outcome, COUNT(*), SUM(prompt_tokens), SUM(reused_tokens), SUM(output_tokens), "
            "SUM(seconds) FROM ledger GROUP BY view, operator, outcome ORDER BY view, operator, outcome")
        return [LedgerTotals(v, o, out, int(n), int(p), int(r), int(t), float(s)) for v, o, out, n, p, r, t, s in found]


def _append_ledger(conn: psycopg.Connection, entry: LedgerEntry, in_flight: int | None) -> None:
    """Write ``entry`` to the ledger and delete the call in flight ``in_flight`` (the caller's transaction)."""
    if in_flight is not None:
        conn.execute("DELETE FROM calls_in_flight WHERE id = %s", (in_flight,))
    conn.execute(
        f"INSERT INTO ledger ({_LEDGER_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (entry.ts, entry.version, entry.view, entry.operator, entry.reason, entry.model, entry.outcome,
         entry.prompt_tokens, entry.reused_tokens, entry.output_tokens, entry.seconds, entry.call_hash, entry.error))
