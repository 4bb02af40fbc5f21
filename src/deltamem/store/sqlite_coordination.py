"""View leases and call claims in one SQLite file (``deltamem.store.coordination`` states what they promise).

    class SQLiteStore(SQLiteCoordination, Store): ...   # the store mixes these methods in

Each method reads first, without the write lock, and takes it (``BEGIN IMMEDIATE``) only when it has a lease or claim
to take, renew or end; inside the write transaction it decides again on what it reads there, so two processes that
both saw a lease free never both take it.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from deltamem.llm.base import Completion
from deltamem.store.base import CallInFlight
from deltamem.store.coordination import CallClaim, CallClaims, Coordination, ViewLease
from deltamem.store.processes import is_gone, this_process

_LEASE_COLUMNS = "view, owner, heartbeat, expires_at, host, pid, process"
_CLAIM_COLUMNS = "call_hash, owner, claimed_at, host, pid, process"
_MEMO_COLUMNS = "text, prompt_tokens, output_tokens, seconds, model, reused_tokens, finish_reason"


class SQLiteCoordination(Coordination):
    """Leases and claims for ``SQLiteStore``, whose ``_write()`` (a write transaction) and ``_query()`` (a read)
    these methods use. ``claim_owner`` names the store handle in ``call_claims``, so that two handles in one process
    never end each other's claims."""

    claim_owner: str
    _write: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _query: Callable[..., list[tuple]]

    # --- leases -------------------------------------------------------------------------------------------------------
    def hold_leases(self, owner: str, views: Sequence[str], *, now: float, timeout: float) -> set[str]:
        if not views:
            return set()
        found = self._leases(views, None)
        if not any(_wanted(lease, owner, now, timeout) for lease in found.values()):
            return {view for view, lease in found.items() if lease is not None and lease.owner == owner}
        with self._write() as conn:
            held = set()
            for view, lease in self._leases(views, conn).items():
                if _wanted(lease, owner, now, timeout):
                    conn.execute(
                        f"INSERT OR REPLACE INTO view_leases ({_LEASE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (view, owner, now, now + timeout, *this_process()))
                    held.add(view)
                elif lease is not None and lease.owner == owner:
                    held.add(view)
            return held

    def _leases(self, views: Sequence[str], conn: sqlite3.Connection | None) -> dict[str, ViewLease | None]:
        """Each of ``views`` with its lease, or None; read in ``conn``'s transaction when given."""
        marks = ",".join("?" * len(views))
        sql = f"SELECT {_LEASE_COLUMNS} FROM view_leases WHERE view IN ({marks})"
        found = conn.execute(sql, list(views)).fetchall() if conn is not None else self._query(sql, list(views))
        leases = {record[0]: ViewLease(*record) for record in found}
        return {view: leases.get(view) for view in views}

    def release_leases(self, owner: str, views: Iterable[str] | None = None) -> None:
        views = None if views is None else list(views)
        if views == []:
            return
        with self._write() as conn:
            if views is None:
                conn.execute("DELETE FROM view_leases WHERE owner = ?", (owner,))
            else:
                conn.executemany("DELETE FROM view_leases WHERE owner = ? AND view = ?", [(owner, v) for v in views])

    def get_leases(self) -> list[ViewLease]:
        return [ViewLease(*record) for record in self._query(f"SELECT {_LEASE_COLUMNS} FROM view_leases ORDER BY view")]

    # --- claims -------------------------------------------------------------------------------------------------------
    def claim_calls(self, calls: Mapping[str, CallInFlight | None], *, now: float,
                    stale_after: float) -> CallClaims:
        answered, busy = self._answered_or_busy(list(calls), None, now, stale_after)
        free = [h for h in calls if h not in answered and h not in busy]
        if not free:
            return CallClaims(answered=answered, busy=tuple(h for h in calls if h in busy))
        claimed: dict[str, int | None] = {}
        with self._write() as conn:
            answered_now, busy_now = self._answered_or_busy(free, conn, now, stale_after)
            answered.update(answered_now)
            busy |= busy_now
            for h in free:
                if h in answered_now or h in busy_now:
                    continue
                conn.execute(f"INSERT OR REPLACE INTO call_claims ({_CLAIM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                             (h, self.claim_owner, now, *this_process()))
                claimed[h] = None if calls[h] is None else note_in_flight(conn, calls[h])
        return CallClaims(claimed, answered, tuple(h for h in calls if h in busy))

    def _answered_or_busy(self, hashes: list[str], conn: sqlite3.Connection | None, now: float,
                          stale_after: float) -> tuple[dict[str, Completion], set[str]]:
        """Of ``hashes``: those the memo answers, and those a live claim holds (read in ``conn`` when given)."""
        def read(sql: str, params: list[Any]) -> list[tuple]:
            return conn.execute(sql, params).fetchall() if conn is not None else self._query(sql, params)

        answered: dict[str, Completion] = {}
        busy: set[str] = set()
        for start in range(0, len(hashes), 500):  # under SQLite's bound-parameter limit
            chunk = hashes[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for h, *memo in read(f"SELECT call_hash, {_MEMO_COLUMNS} FROM memo WHERE call_hash IN ({marks})", chunk):
                answered[h] = Completion(*memo)
            for record in read(f"SELECT {_CLAIM_COLUMNS} FROM call_claims WHERE call_hash IN ({marks})", chunk):
                claim = CallClaim(*record)
                if claim.call_hash not in answered and _is_live(claim, now, stale_after):
                    busy.add(claim.call_hash)
        return answered, busy

    def release_claims(self, call_hashes: Iterable[str]) -> None:
        hashes = list(call_hashes)
        if not hashes:
            return
        with self._write() as conn:
            end_claims(conn, self.claim_owner, hashes)

    def get_claims(self) -> list[CallClaim]:
        return [CallClaim(*r) for r in self._query(f"SELECT {_CLAIM_COLUMNS} FROM call_claims ORDER BY call_hash")]


def new_claim_owner() -> str:
    return uuid.uuid4().hex


def end_claims(conn: sqlite3.Connection, owner: str, call_hashes: Sequence[str]) -> None:
    """Delete ``owner``'s claims on ``call_hashes`` (the caller's transaction)."""
    conn.executemany("DELETE FROM call_claims WHERE call_hash = ? AND owner = ?", [(h, owner) for h in call_hashes])


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


def note_in_flight(conn: sqlite3.Connection, call: CallInFlight) -> int:
    """Note ``call`` as in flight from this process, in the caller's transaction; return its row id."""
    cursor = conn.execute(
        "INSERT INTO calls_in_flight (started_at, version, view, operator, reason, model, call_hash, host, pid, "
        "process) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (call.started_at, call.version, call.view, call.operator, call.reason, call.model, call.call_hash,
         *this_process()),
    )
    assert cursor.lastrowid is not None, "store: an INSERT has a rowid"
    return cursor.lastrowid
