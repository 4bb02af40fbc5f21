"""Paying each call once across processes: claim it on the store before paying it, or wait for whoever holds it.

    claims = claim_or_wait(store, {h: flight}, stale_after=30.0)    # claimed: pay it; answered: the memo has it
    heartbeat.add(claims.claimed)                                   # renewed until recorded or released

Invariant: ``CallRunner`` asks the backend for a call only while it holds the call's claim (``Store.claim_calls``),
and ends the claim in the transaction that records the outcome (``Store.record_calls``), or releases it when paying
raised. So no two processes, and no two threads, pay one call hash at once, and one that finds a claim waits and
then reads the memo. While it holds a claim, the holder's ``ClaimHeartbeat`` renews it every third of
``stale_after``; a claim is presumed lost, and taken over, when its process is gone or it has not been renewed for
``stale_after`` seconds (``DEFAULT_CLAIM_TIMEOUT``): a holder killed on another machine, or hung, loses its claims
as it loses its leases, however long its calls take.

NOTE(claims): what the holder does not memoise, a waiter pays again: a call that failed after its retries (the
waiter tries it itself) and a completion on blended KV (``Completion.exact`` False, never memoised).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from deltamem.store.base import CallInFlight, Store
from deltamem.store.coordination import CallClaims

log = logging.getLogger(__name__)

DEFAULT_CLAIM_TIMEOUT = 30.0  # seconds without a renewal after which a claim whose process may run is presumed lost
FIRST_POLL, LAST_POLL = 0.02, 0.5  # seconds between looks at a busy claim: doubling from the first to the last


def claim_or_wait(store: Store, calls: Mapping[str, CallInFlight | None], *, stale_after: float,
                  sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time) -> CallClaims:
    """Claim ``calls`` (hash -> what to note in flight, or None), waiting while every one of them is busy; return as
    soon as one is claimed or answered, or none is busy. The ``busy`` of the result are for the caller to ask again
    after it has paid and recorded its claimed ones (so that it never waits while holding a claim)."""
    delay = FIRST_POLL
    while True:
        claims = store.claim_calls(calls, now=clock(), stale_after=stale_after)
        if claims.claimed or claims.answered or not claims.busy:
            return claims
        sleep(delay)
        delay = min(LAST_POLL, delay * 2)


class ClaimHeartbeat:
    """Renews the claims one runner holds, on a daemon thread, every ``interval`` seconds while it holds any.

    Invariant: ``held`` is the set of hashes claimed and neither recorded nor released yet; a renewal that fails (the
    store briefly unreachable) is logged and tried again at the next beat.
    """

    def __init__(self, store: Store, *, interval: float, clock: Callable[[], float] = time.time):
        self.store = store
        self.interval = interval
        self.clock = clock
        self.held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, call_hashes: Iterable[str]) -> None:
        with self._lock:
            self.held.update(call_hashes)
            if self.held and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deltamem-claims", daemon=True)
                self._thread.start()

    def discard(self, call_hashes: Iterable[str]) -> None:
        with self._lock:
            self.held.difference_update(call_hashes)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                held = list(self.held)
            if not held:
                continue
            try:
                self.store.renew_claims(held, now=self.clock())
            except Exception:  # noqa: BLE001 - the next beat tries again; the claims expire only if all fail
                log.warning("renewing %d call claims failed; trying again in %.1f s", len(held), self.interval,
                            exc_info=True)

