"""Which views this database maintains: those whose lease in the store it holds (one maintainer per view at a time).

    leases = ViewLeases(store, timeout=10.0)
    for view in leases.hold(["digest", "answers"]): ...   # maintain these; another process maintains the rest

Invariant: a maintainer works on a view only while ``hold`` or ``still_held`` has just said it holds the view's
lease, and it asks again at least every ``timeout / 3`` seconds while it works (each pass of the background thread,
and between the versions of a long catch-up), which renews the lease: a live, working maintainer keeps its views,
and one that stops (closed, killed, hung) loses them to another process within ``timeout`` seconds, at once when its
process is gone. ``held`` is what this owner last learned from the store: it may still list a lease another
process has taken since (then the next ``hold`` or ``still_held`` drops it), never one it did not take.

NOTE(leases): a single version that takes longer than ``timeout`` to compute can outlive its lease; then a second
process may compute it too. That costs no call twice (calls are claimed: ``deltamem.store.coordination``) and
leaves the view right (a view commit is idempotent); the first owner stops at its next ``still_held``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable

from deltamem.store.base import Store

DEFAULT_LEASE_TIMEOUT = 10.0  # seconds without a heartbeat after which another process takes a view over


class ViewLeases:
    """The view leases of one owner (one ``Database``'s maintainer) on one store. Thread-safe as the store is."""

    def __init__(self, store: Store, *, timeout: float = DEFAULT_LEASE_TIMEOUT,
                 clock: Callable[[], float] = time.time):
        if timeout <= 0:
            raise ValueError(f"lease timeout must be positive, got {timeout!r}")
        self.store = store
        self.timeout = timeout
        self.clock = clock  # the wall clock: leases are compared across processes
        self.owner = uuid.uuid4().hex
        self.held: set[str] = set()
        # Per held view, until when no other owner can have taken it: its lease has at least 2/3 of ``timeout`` left
        # whenever the store did not renew it (``Store.hold_leases``), and only its expiry frees a live owner's lease.
        self._sure_until: dict[str, float] = {}

    def hold(self, views: Iterable[str]) -> set[str]:
        """Take or renew the leases of ``views`` that are free, stale or already this owner's; return those held."""
        views = list(views)
        now = self.clock()
        held = self.store.hold_leases(self.owner, views, now=now, timeout=self.timeout)
        self.held = (self.held - set(views)) | held
        for view in views:
            self._sure_until.pop(view, None)
        self._sure_until.update(dict.fromkeys(held, now + self.timeout * 2 / 3))
        return held

    def still_held(self, view: str) -> bool:
        """Whether this owner still holds ``view``'s lease, renewed when a third of its time is gone: ask between the
        steps of long work. Reads the store only when the renewal may be due."""
        if self.clock() < self._sure_until.get(view, 0.0) - self.timeout / 3:
            return True
        return view in self.hold([view])

    def release(self, views: Iterable[str] | None = None) -> None:
        """Give up the leases of ``views`` (all, by default), so that another process takes them over at once."""
        views = None if views is None else list(views)
        if views is None and not self.held:
            return
        self.store.release_leases(self.owner, views)
        self.held = set() if views is None else self.held - set(views)
        self._sure_until = {} if views is None else {v: t for v, t in self._sure_until.items() if v in self.held}
