"""Several processes on one store: who maintains each view (a lease), and who pays each call (a claim).

    store.hold_leases(owner, ["digest"], now=time.time(), timeout=10.0)    # {"digest"}: maintain it
    store.claim_calls({h: flight}, now=time.time(), stale_after=600.0)      # CallClaims: pay, read, or wait

Invariants, kept by the store in its own transactions, so they hold across processes:

1. A view has at most one lease, held by one ``owner`` (one ``Database``'s maintainer) until ``expires_at``. Only
   the holder maintains the view; it renews the lease (its heartbeat) while it works. A lease is taken over when it
   has expired or when its process is gone (``deltamem.store.processes.is_gone``), never while its holder is alive
   and renewing. Dropping a view ends its lease.
2. A call hash has at most one claim, taken in the same transaction that finds it missing from the memo. Only the
   claimant pays the call; the ledger entry that records the outcome (``Store.record_call``) ends the claim in the
   same transaction that writes the memo, so a process that sees no claim sees the memo entry, or a failure. Everyone
   else waits for the memo. A claim is taken over when its process is gone, or when it is older than ``stale_after``
   (a call stuck that long is presumed lost).

NOTE(store): 1. Leases make maintenance single-writer for speed, not for correctness: a view commit is idempotent,
so two processes that both computed a version (one took a lease over from the other mid-version) leave it right,
and claims keep either from paying a call the other paid. 2. Time is the wall clock (``time.time()``) of each
process: a lease or claim is only as stale as the clocks of the machines sharing the store agree. 3. The writes of
leases and claims (and the in-flight notes taken with claims) are atomic and seen by every process at once, but not
flushed to disk on their own (SQLite's WAL with ``synchronous=NORMAL``, PostgreSQL's asynchronous commit): they
become durable with the next durable commit. A process killed loses none of them; a machine that loses power may lose
the last ones, so a claim looks free again (one call may be paid twice) or an interrupted call goes unreported.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deltamem.llm.base import Completion
    from deltamem.store.base import CallInFlight


@dataclass(frozen=True)
class ViewLease:
    """Who maintains ``view``: ``owner`` (a process's ``host``, ``pid`` and ``process`` id beside it), since its
    last heartbeat, until ``expires_at`` unless renewed."""

    view: str
    owner: str
    heartbeat: float
    expires_at: float
    host: str
    pid: int
    process: str


@dataclass(frozen=True)
class CallClaim:
    """A call being paid: its memo hash, the store handle paying it (``owner``), since when, and whose process."""

    call_hash: str
    owner: str
    claimed_at: float
    host: str
    pid: int
    process: str


@dataclass(frozen=True)
class CallClaims:
    """What ``claim_calls`` did with each call hash it was asked about; each hash is in exactly one field.

    ``claimed``: this store handle holds the claim now and must pay the call, then record it (which ends the claim)
    or ``release_claims`` it; the value is the call's in-flight id (``Store.begin_call``), None when none was noted.
    ``answered``: the memo holds the call: nothing to pay. ``busy``: another live claim holds it (another process,
    or another thread of this one): wait, and ask again.
    """

    claimed: dict[str, int | None] = field(default_factory=dict)
    answered: dict[str, Completion] = field(default_factory=dict)
    busy: tuple[str, ...] = ()


class Coordination(abc.ABC):
    """The part of the ``Store`` interface that lets several processes share one store (see the module docstring)."""

    @abc.abstractmethod
    def hold_leases(self, owner: str, views: Sequence[str], *, now: float, timeout: float) -> set[str]:
        """Take or renew ``owner``'s lease on each of ``views``; return the views ``owner`` holds now.

        A lease is taken when there is none, when it has expired (``expires_at <= now``) or when its process is gone;
        ``owner``'s own lease is renewed (to ``now + timeout``) once a third of its time has passed. The store is
        read first and written only when a lease is taken or renewed."""

    @abc.abstractmethod
    def release_leases(self, owner: str, views: Iterable[str] | None = None) -> None:
        """End ``owner``'s leases (on ``views``, when given), so that another owner takes them at once."""

    @abc.abstractmethod
    def get_leases(self) -> list[ViewLease]:
        """Every lease, by view name."""

    @abc.abstractmethod
    def claim_calls(self, calls: Mapping[str, CallInFlight | None], *, now: float,
                    stale_after: float) -> CallClaims:
        """Claim each call hash of ``calls`` that the memo lacks and no live claim holds, for this store handle, in
        one transaction; a claimed call with a ``CallInFlight`` is also noted in flight (``begin_call``). A claim is
        live unless its process is gone or it was taken, or last renewed, more than ``stale_after`` seconds before
        ``now``."""

    @abc.abstractmethod
    def renew_claims(self, call_hashes: Iterable[str], *, now: float) -> None:
        """Mark this store handle's claims on ``call_hashes`` as taken at ``now`` (its heartbeat); others' are left
        alone."""

    @abc.abstractmethod
    def release_claims(self, call_hashes: Iterable[str]) -> None:
        """End this store handle's claims on ``call_hashes`` without a ledger entry (the call was not paid, or its
        result is not kept); claims of others are left alone."""

    @abc.abstractmethod
    def get_claims(self) -> list[CallClaim]:
        """Every claim, by call hash."""
