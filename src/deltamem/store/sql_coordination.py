"""View leases and call claims in a SQL store (``deltamem.store.coordination`` states what they promise).

    class SQLiteStore(SqlCoordination, Store): ...   # a store mixes these methods in, and names its ``dialect``

Written once for SQLite and PostgreSQL: the store's ``dialect`` (``deltamem.store.sql_dialect``) supplies what they
spell differently (placeholders, upserts, lists).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from deltamem.llm.base import Completion
from deltamem.store.base import CallInFlight
from deltamem.store.coordination import CallClaim, CallClaims, Coordination, ViewLease
from deltamem.store.processes import is_gone, this_process
from deltamem.store.sql_dialect import Connection, Dialect

_LEASE_COLUMNS = "view, owner, heartbeat, expires_at, host, pid, process"
_CLAIM_COLUMNS = "call_hash, owner, claimed_at, host, pid, process"
_MEMO_COLUMNS = "text, prompt_tokens, output_tokens, seconds, model, reused_tokens, finish_reason"


class SqlCoordination(Coordination):
    """Leases and claims for a SQL store, whose ``_write()`` (a write transaction, under the store's write lock) and
    ``_query()`` (a read) these methods use. Invariant: each method reads first, outside the write lock, and takes it
    only when it has a lease or claim to take, renew or end; under the lock it decides again on what it reads there, so
    two processes that both saw a lease free never both take it. ``claim_owner`` names the store handle in
    ``call_claims``, so that two handles in one process never end each other's claims."""

    claim_owner: str
    dialect: Dialect
    _write: Callable[..., AbstractContextManager[Any]]
    _query: Callable[..., list[tuple]]

    def _read(self, sql: str, params: Sequence[Any], conn: Connection | None) -> list[tuple]:
        """Run the read ``sql`` (written with ``?``) in ``conn``'s transaction when given, else as ``_query`` does."""
        sql = self.dialect.sql(sql)
        return conn.execute(sql, params).fetchall() if conn is not None else self._query(sql, params)

    def _read_all(self, statements: Sequence[tuple[str, Sequence[Any]]], conn: Connection | None) -> list[list[tuple]]:
        """``_read`` of each statement, all sent before any result is read: one round trip where the store pipelines
        (PostgreSQL), in ``conn``'s transaction when given, else as ``_query_all`` does."""
        statements = [(self.dialect.sql(sql), params) for sql, params in statements]
        if conn is None:
            return self._query_all(statements)
        cursors = [conn.execute(sql, params) for sql, params in statements]
        return [cursor.fetchall() for cursor in cursors]

    def _query_all(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[list[tuple]]:
        return [self._query(sql, params) for sql, params in statements]

    # --- leases -------------------------------------------------------------------------------------------------------
    def hold_leases(self, owner: str, views: Sequence[str], *, now: float, timeout: float) -> set[str]:
        if not views:
            return set()
        found = self._leases(views, None)
        if not any(_wanted(lease, owner, now, timeout) for lease in found.values()):
            return {view for view, lease in found.items() if lease is not None and lease.owner == owner}
        with self._write(durable=False) as conn:
            held = set()
            for view, lease in self._leases(views, conn).items():
                if _wanted(lease, owner, now, timeout):
                    conn.execute(self.dialect.upsert("view_leases", _LEASE_COLUMNS, "view"),
                                 (view, owner, now, now + timeout, *this_process()))
                    held.add(view)
                elif lease is not None and lease.owner == owner:
                    held.add(view)
            return held

    def _leases(self, views: Sequence[str], conn: Connection | None) -> dict[str, ViewLease | None]:
        """Each of ``views`` with its lease, or None; read in ``conn``'s transaction when given."""
        condition, params = self.dialect.in_list("view", list(views))
        found = self._read(f"SELECT {_LEASE_COLUMNS} FROM view_leases WHERE {condition}", params, conn)
        leases = {record[0]: ViewLease(*record) for record in found}
        return {view: leases.get(view) for view in views}

    def release_leases(self, owner: str, views: Iterable[str] | None = None) -> None:
        views = None if views is None else list(views)
        if views == []:
            return
        with self._write(durable=False) as conn:
            if views is None:
                conn.execute(self.dialect.sql("DELETE FROM view_leases WHERE owner = ?"), (owner,))
                return
            for start in range(0, len(views), self.dialect.chunk):
                condition, params = self.dialect.in_list("view", views[start:start + self.dialect.chunk])
                conn.execute(self.dialect.sql(f"DELETE FROM view_leases WHERE owner = ? AND {condition}"),
                             (owner, *params))

    def get_leases(self) -> list[ViewLease]:
        return [ViewLease(*record) for record in self._query(f"SELECT {_LEASE_COLUMNS} FROM view_leases ORDER BY view")]

    # --- claims -------------------------------------------------------------------------------------------------------
    def claim_calls(self, calls: Mapping[str, CallInFlight | None], *, now: float,
                    stale_after: float) -> CallClaims:
        answered, busy = self._answered_or_busy(list(calls), None, now, stale_after)
        free = [h for h in calls if h not in answered and h not in busy]
        if not free:
            return CallClaims(answered=answered, busy=tuple(h for h in calls if h in busy))
        with self._write(durable=False) as conn:
            answered_now, busy_now = self._answered_or_busy(free, conn, now, stale_after)
            answered.update(answered_now)
            busy |= busy_now
            mine = [h for h in free if h not in answered_now and h not in busy_now]
            self.dialect.executemany(conn, self.dialect.upsert("call_claims", _CLAIM_COLUMNS, "call_hash"),
                                     [(h, self.claim_owner, now, *this_process()) for h in mine])
            noted = notes_in_flight(self.dialect, conn, [call for h in mine if (call := calls[h]) is not None])
            claimed = {h: noted.get(h) for h in mine}
        return CallClaims(claimed, answered, tuple(h for h in calls if h in busy))

    def _answered_or_busy(self, hashes: list[str], conn: Connection | None, now: float,
                          stale_after: float) -> tuple[dict[str, Completion], set[str]]:
        """Of ``hashes``: those the memo answers, and those a live claim holds (read in ``conn`` when given)."""
        answered: dict[str, Completion] = {}
        busy: set[str] = set()
        for start in range(0, len(hashes), self.dialect.chunk):
            condition, params = self.dialect.in_list("call_hash", hashes[start:start + self.dialect.chunk])
            memos, claims = self._read_all([(f"SELECT call_hash, {_MEMO_COLUMNS} FROM memo WHERE {condition}", params),
                                            (f"SELECT {_CLAIM_COLUMNS} FROM call_claims WHERE {condition}", params)],
                                           conn)
            for h, *memo in memos:
                answered[h] = Completion(*memo)
            for record in claims:
                claim = CallClaim(*record)
                if claim.call_hash not in answered and _is_live(claim, now, stale_after):
                    busy.add(claim.call_hash)
        return answered, busy

    def renew_claims(self, call_hashes: Iterable[str], *, now: float) -> None:
        hashes = list(call_hashes)
        if not hashes:
            return
        with self._write(durable=False) as conn:
            for start in range(0, len(hashes), self.dialect.chunk):
                condition, params = self.dialect.in_list("call_hash", hashes[start:start + self.dialect.chunk])
                conn.execute(self.dialect.sql(f"UPDATE call_claims SET claimed_at = ? WHERE owner = ? AND {condition}"),
                             (now, self.claim_owner, *params))

    def release_claims(self, call_hashes: Iterable[str]) -> None:
        hashes = list(call_hashes)
        if not hashes:
            return
        with self._write(durable=False) as conn:
            end_claims(self.dialect, conn, self.claim_owner, hashes)

    def get_claims(self) -> list[CallClaim]:
        return [CallClaim(*r) for r in self._query(f"SELECT {_CLAIM_COLUMNS} FROM call_claims ORDER BY call_hash")]


_NOTES_PER_STATEMENT = 90  # ten parameters each: under SQLite's oldest bound-parameter limit (999)


def new_claim_owner() -> str:
    return uuid.uuid4().hex


def end_claims(dialect: Dialect, conn: Connection, owner: str, call_hashes: Sequence[str]) -> None:
    """Delete ``owner``'s claims on ``call_hashes`` (the caller's transaction)."""
    hashes = list(call_hashes)
    for start in range(0, len(hashes), dialect.chunk):
        condition, params = dialect.in_list("call_hash", hashes[start:start + dialect.chunk])
        conn.execute(dialect.sql(f"DELETE FROM call_claims WHERE owner = ? AND {condition}"), (owner, *params))


def note_in_flight(dialect: Dialect, conn: Connection, call: CallInFlight) -> int:
    """Note ``call`` as in flight from this process, in the caller's transaction; return its row id."""
    return notes_in_flight(dialect, conn, [call])[call.call_hash]


def notes_in_flight(dialect: Dialect, conn: Connection, calls: Sequence[CallInFlight]) -> dict[str, int]:
    """Note ``calls`` (of distinct hashes) as in flight from this process, in the caller's transaction, a statement
    per ``_NOTES_PER_STATEMENT``; return each one's row id by its hash."""
    process = this_process()
    ids: dict[str, int] = {}
    for start in range(0, len(calls), _NOTES_PER_STATEMENT):
        part = calls[start:start + _NOTES_PER_STATEMENT]
        values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(part))
        params = [value for c in part for value in (c.started_at, c.version, c.view, c.operator, c.reason, c.model,
                                                     c.call_hash, *process)]
        for row_id, h in conn.execute(dialect.sql(
                "INSERT INTO calls_in_flight (started_at, version, view, operator, reason, model, call_hash, host, "
                f"pid, process) VALUES {values} RETURNING id, call_hash"), params).fetchall():
            ids[h] = row_id
    return ids


def _wanted(lease: ViewLease | None, owner: str, now: float, timeout: float) -> bool:
    """Whether ``owner`` should write this lease now: take it (none, expired, its process gone) or renew its own
    (a third of its time gone)."""
    if lease is None:
        return True
    if lease.owner == owner:
        return lease.expires_at - now < timeout * 2 / 3
    return lease.expires_at <= now or is_gone(lease.host, lease.pid, lease.process)


def _is_live(claim: CallClaim, now: float, stale_after: float) -> bool:
    return claim.claimed_at > now - stale_after and not is_gone(claim.host, claim.pid, claim.process)
