"""Paying each call once across processes: claim it on the store before paying it, or wait for whoever holds it.

    claims = claim_or_wait(store, {h: flight}, stale_after=600.0)   # claimed: pay it; answered: the memo has it

Invariant: ``CallRunner`` asks the backend for a call only while it holds the call's claim (``Store.claim_calls``),
and ends the claim in the transaction that records the outcome (``Store.record_call``), or releases it when paying
raised. So no two processes, and no two threads, pay one call hash at once, and one that finds a claim waits and
then reads the memo. A claim is presumed lost, and taken over, when its process is gone or it is older than
``stale_after`` seconds (``DEFAULT_CLAIM_TIMEOUT``: longer than any call with its retries should take).

NOTE(claims): what the holder does not memoise, a waiter pays again: a call that failed after its retries (the
waiter tries it itself) and a completion on blended KV (``Completion.exact`` False, never memoised).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from deltamem.store.base import CallInFlight, Store
from deltamem.store.coordination import CallClaims

DEFAULT_CLAIM_TIMEOUT = 600.0  # seconds after which a claim whose process still runs is presumed lost
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
