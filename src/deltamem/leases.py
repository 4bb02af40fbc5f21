"""Which views this database maintains: those whose lease in the store it holds (one maintainer per view at a time).

    leases = ViewLeases(store, timeout=10.0)
    for view in leases.hold(["digest", "answers"]): ...   # maintain these; another process maintains the rest

Invariant: a maintainer works on a view only while ``hold`` or ``still_held`` has just said it holds the view's
lease, and it asks again at least every ``timeout / 3`` seconds while it works (each pass of the background thread,
and between the versions of a long catch-up), which renews the lease: a live, working maintainer keeps its views,
and one that stops (closed, killed, hung) loses them to another process within ``timeout`` seconds, at once when its
process is gone. ``held`` is what this owner last learned from the store: it may still list a lease another
process has taken since (then the next ``hold`` or ``still_held`` drops it), never one it did not take.

Fair share (``fair_share=True``, what ``deltamem worker`` sets): each such owner (a *member*) also keeps a member
lease, on a name no view can have (``member_lease``), renewed with its view leases; a member is live while that lease
is unexpired and its process not gone. Then ``hold(views)`` holds at most ``ceil(shared / live members)`` view
leases, ``shared`` being the views not held by a live owner without fair share (a server maintaining in the
background, a reader catching up inline: they keep what they take). It gives up what it holds beyond its share (the
last of ``views``), so a worker that starts while others hold every view gets its share within a pass or two of
theirs. The share bounds what a member *takes*, never which views are maintained: the live members' shares add up
to at least every shared view. Views that pay no model calls (a sharded view's union of its shards:
``deltamem.shards``) are shared out the same way but apart, so four workers on a view of four shards hold one shard
each. Member leases are rows of ``store.get_leases()`` too; ``is_member_lease`` tells them
from view leases.

NOTE(leases): a single version that takes longer than ``timeout`` to compute can outlive its lease; then a second
process may compute it too. That costs no call twice (calls are claimed: ``deltamem.store.coordination``) and
leaves the view right (a view commit is idempotent); the first owner stops at its next ``still_held``.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Collection, Iterable

from deltamem.store.base import Store
from deltamem.store.coordination import ViewLease
from deltamem.store.processes import is_gone

DEFAULT_LEASE_TIMEOUT = 10.0  # seconds without a heartbeat after which another process takes a view over
MEMBER_PREFIX = "deltamem:member:"  # view names are identifiers, so no view's lease has this name


def member_lease(owner: str) -> str:
    """The name of ``owner``'s member lease: the row that says, under fair share, that it is a live owner."""
    return MEMBER_PREFIX + owner


def is_member_lease(lease: ViewLease) -> bool:
    return lease.view.startswith(MEMBER_PREFIX)


class ViewLeases:
    """The view leases of one owner (one ``Database``'s maintainer) on one store. Thread-safe as the store is."""

    def __init__(self, store: Store, *, timeout: float = DEFAULT_LEASE_TIMEOUT,
                 clock: Callable[[], float] = time.time, fair_share: bool = False):
        if timeout <= 0:
            raise ValueError(f"lease timeout must be positive, got {timeout!r}")
        self.store = store
        self.timeout = timeout
        self.clock = clock  # the wall clock: leases are compared across processes
        self.owner = uuid.uuid4().hex
        self.held: set[str] = set()
        # Hold at most a fair share of the views (module docstring); read at each ``hold``, so it may be set after
        # the maintainer that owns these leases has started.
        self.fair_share = fair_share
        self._member_written = False
        # Per held view, until when no other owner can have taken it: its lease has at least 2/3 of ``timeout`` left
        # whenever the store did not renew it (``Store.hold_leases``), and only its expiry frees a live owner's lease.
        self._sure_until: dict[str, float] = {}

    def hold(self, views: Iterable[str], *, light: Collection[str] = ()) -> set[str]:
        """Take or renew the leases of ``views`` that are free, stale or already this owner's; return those held.
        Under ``fair_share``, ``views`` is every view to share out, and at most this owner's share of them is held;
        those also in ``light`` (views that pay no model calls: a sharded view's union of its shards) are shared out
        apart, so that holding one never takes the place of a view with calls to pay."""
        views = list(views)
        if not self.fair_share:
            return self._hold(views)
        now = self.clock()
        leases = {lease.view: lease for lease in self.store.get_leases()}
        members = {self.owner} | {lease.owner for lease in leases.values() if is_member_lease(lease)
                                  and _is_live(lease, now)}
        wanted, extra = [], []
        for group in ([view for view in views if view not in light], [view for view in views if view in light]):
            keep, give_up = self._share_of(group, leases, members, now)
            wanted += keep
            extra += give_up
        if extra:
            self.release(extra)  # keeps the first ones: the same choice each pass, so no view goes to and fro
        self._forget_gone_members(leases.values(), now)
        return self._hold_as_member(wanted)

    def _share_of(self, views: list[str], leases: dict[str, ViewLease], members: set[str],
                  now: float) -> tuple[list[str], list[str]]:
        """Of ``views``, those this member should hold (what it holds, up to its share, then free ones) and those it
        holds beyond its share."""
        elsewhere = sum(1 for view in views if view in leases and leases[view].owner not in members
                        and _is_live(leases[view], now))  # held by owners without a share: not to be shared out
        share = math.ceil((len(views) - elsewhere) / len(members))
        mine = [view for view in views if view in leases and leases[view].owner == self.owner]
        free = [view for view in views if view not in mine
                and (view not in leases or leases[view].owner != self.owner and not _is_live(leases[view], now))]
        return mine[:share] + free[:max(0, share - len(mine))], mine[share:]

    def _hold_as_member(self, views: list[str]) -> set[str]:
        """``_hold`` of ``views`` that also takes or renews this owner's member lease, in the same store call."""
        member = member_lease(self.owner)
        held = self._hold([member, *views]) - {member}
        self.held.discard(member)
        self._sure_until.pop(member, None)
        self._member_written = True
        return held

    def _forget_gone_members(self, leases: Iterable[ViewLease], now: float) -> None:
        """Delete the member leases of owners that are no longer live (killed, or stopped answering): nobody else
        would, as no view's takeover overwrites them."""
        for lease in leases:
            if is_member_lease(lease) and lease.owner != self.owner and not _is_live(lease, now):
                self.store.release_leases(lease.owner, [lease.view])

    def _hold(self, views: list[str]) -> set[str]:
        """``hold`` without a share: every one of ``views`` that is free, stale or this owner's."""
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
        # A member renews its member lease too: a long catch-up must not make it look gone to the other members.
        return view in (self._hold_as_member([view]) if self._member_written else self._hold([view]))

    def release(self, views: Iterable[str] | None = None) -> None:
        """Give up the leases of ``views`` (all, by default), so that another process takes them over at once."""
        views = None if views is None else list(views)
        if views is None and not self.held and not self._member_written:
            return
        self.store.release_leases(self.owner, views)  # all of them: the member lease too
        self.held = set() if views is None else self.held - set(views)
        self._sure_until = {} if views is None else {v: t for v, t in self._sure_until.items() if v in self.held}
        if views is None:
            self._member_written = False


def _is_live(lease: ViewLease, now: float) -> bool:
    """Whether ``lease`` still binds: unexpired, and its process not known to be gone."""
    return lease.expires_at > now and not is_gone(lease.host, lease.pid, lease.process)
