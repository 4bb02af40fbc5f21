"""View leases and call claims in a PostgreSQL store (``deltamem.store.coordination`` states what they promise).

    class PostgresStore(PostgresCoordination, Store): ...   # the store mixes these methods in

As in ``deltamem.store.sqlite_coordination``: each method reads first, outside any write transaction, and takes the
store's write lock only when it has a lease or claim to take, renew or end; under the lock it decides again on what it
reads there, so two processes that both saw a lease free never both take it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import psycopg

from deltamem.llm.base import Completion
from deltamem.store.base import CallInFlight
from deltamem.store.coordination import CallClaim, CallClaims, Coordination, ViewLease
from deltamem.store.processes import this_process
from deltamem.store.sqlite_coordination import _is_live, _wanted

_LEASE_COLUMNS = "view, owner, heartbeat, expires_at, host, pid, process"
_CLAIM_COLUMNS = "call_hash, owner, claimed_at, host, pid, process"
_MEMO_COLUMNS = "text, prompt_tokens, output_tokens, seconds, model, reused_tokens, finish_reason"


class PostgresCoordination(Coordination):
    """Leases and claims for ``PostgresStore``, whose ``_write()`` (a write transaction) and ``_query()`` (a read,
    in ``conn`` when given) these methods use. ``claim_owner`` names the store handle in ``call_claims``."""

    claim_owner: str
    _write: Callable[[], AbstractContextManager[psycopg.Connection]]
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
                        f"INSERT INTO view_leases ({_LEASE_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT (view) DO UPDATE SET owner = excluded.owner, heartbeat = excluded.heartbeat, "
                        "expires_at = excluded.expires_at, host = excluded.host, pid = excluded.pid, "
                        "process = excluded.process",
                        (view, owner, now, now + timeout, *this_process()))
                    held.add(view)
                elif lease is not None and lease.owner == owner:
                    held.add(view)
            return held

    def _leases(self, views: Sequence[str], conn: psycopg.Connection | None) -> dict[str, ViewLease | None]:
        found = self._query(f"SELECT {_LEASE_COLUMNS} FROM view_leases WHERE view = ANY(%s)", (list(views),), conn)
        leases = {record[0]: ViewLease(*record) for record in found}
        return {view: leases.get(view) for view in views}

    def release_leases(self, owner: str, views: Iterable[str] | None = None) -> None:
        views = None if views is None else list(views)
        if views == []:
            return
        with self._write() as conn:
            if views is None:
                conn.execute("DELETE FROM view_leases WHERE owner = %s", (owner,))
            else:
                conn.execute("DELETE FROM view_leases WHERE owner = %s AND view = ANY(%s)", (owner, views))

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
                conn.execute(
                    f"INSERT INTO call_claims ({_CLAIM_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (call_hash) DO UPDATE SET owner = excluded.owner, claimed_at = excluded.claimed_at, "
                    "host = excluded.host, pid = excluded.pid, process = excluded.process",
                    (h, self.claim_owner, now, *this_process()))
                claimed[h] = None if calls[h] is None else note_in_flight(conn, calls[h])
        return CallClaims(claimed, answered, tuple(h for h in calls if h in busy))

    def _answered_or_busy(self, hashes: list[str], conn: psycopg.Connection | None, now: float,
                          stale_after: float) -> tuple[dict[str, Completion], set[str]]:
        """Of ``hashes``: those the memo answers, and those a live claim holds (read in ``conn`` when given)."""
        answered: dict[str, Completion] = {}
        busy: set[str] = set()
        params: tuple[Any, ...] = (hashes,)
        for h, *memo in self._query(f"SELECT call_hash, {_MEMO_COLUMNS} FROM memo WHERE call_hash = ANY(%s)",
                                    params, conn):
            answered[h] = Completion(*memo)
        for record in self._query(f"SELECT {_CLAIM_COLUMNS} FROM call_claims WHERE call_hash = ANY(%s)", params, conn):
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


def end_claims(conn: psycopg.Connection, owner: str, call_hashes: Sequence[str]) -> None:
    """Delete ``owner``'s claims on ``call_hashes`` (the caller's transaction)."""
    conn.execute("DELETE FROM call_claims WHERE owner = %s AND call_hash = ANY(%s)", (owner, list(call_hashes)))


def note_in_flight(conn: psycopg.Connection, call: CallInFlight) -> int:
    """Note ``call`` as in flight from this process, in the caller's transaction; return its id."""
    found = conn.execute(
        "INSERT INTO calls_in_flight (started_at, version, view, operator, reason, model, call_hash, host, pid, "
        "process) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (call.started_at, call.version, call.view, call.operator, call.reason, call.model, call.call_hash,
         *this_process()),
    ).fetchone()
    assert found is not None, "store: an INSERT ... RETURNING returns a row"
    return found[0]
