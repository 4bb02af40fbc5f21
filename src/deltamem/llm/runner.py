"""Runs the model calls operators ask for: memo first, then the backend with retries; every outcome on the ledger.

    results = runner.run([CallSpec(request, "insert")], view="digest", operator="1:sem_map", version=7)

The engine decides *what* to call; the runner only runs it. Per call it

1. looks the calls up in the memo and claims the missing ones on the store, noting them as in flight, in one read
   and one transaction for the batch (``deltamem.llm.claims``: while another process, or thread, holds a claim, it
   waits for that one's memo entry instead of paying); a hit costs nothing and is written to the ledger as ``memo``
   with the tokens it saved;
2. pays the claimed calls on a thread pool of ``max_workers`` (a backend's ``max_concurrency``), retrying a
   ``BackendError`` with exponential backoff, and records them by group commit: whenever a call returns, one
   transaction writes the result to the memo and the ledger (``paid``) and ends the claim and the in-flight note of
   every call that returned since the last commit. So a recorded call is never paid again, across restarts too. A
   call whose process is killed before its group is committed is lost and paid again; the next process to open the
   store puts it on the ledger as ``interrupted`` (as it does every claimed call of the batch not yet recorded);
3. after the last attempt, writes a ``failed`` ledger entry and returns the error: the caller stores it on the row.

Identical calls in one batch run once; the others are memo hits. Inside ``deferring_records`` a caller may
``prepay`` the calls it will make at several versions (a maintenance pass planned by ``deltamem.pass_plan``): they
are claimed in one round and paid, and each ``run`` that first asks for one takes its result as paid there.

Embeddings take the same path, one text being one call (``deltamem.llm.embedding_runs``, mixed in).

The claims a runner holds are renewed by its ``ClaimHeartbeat`` until they are recorded or released.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass

from deltamem.errors import BackendError
from deltamem.llm import LazyBackend
from deltamem.llm.base import Completion, CompletionRequest, LLMBackend
from deltamem.llm.claims import DEFAULT_CLAIM_TIMEOUT, ClaimHeartbeat, claim_or_wait
from deltamem.llm.embedding_runs import EmbeddingRuns
from deltamem.llm.memo import call_hash
from deltamem.store.base import CallCost, CallInFlight, CallRecord, LedgerEntry, Store

log = logging.getLogger(__name__)
ProgressHook = Callable[[str, int, int], None]  # (label, calls done, calls in this batch)
# Calls paid in turn are committed together until this many seconds have passed since the last commit: one commit
# (and fsync) per call made a fast backend's batches crawl, and a slower call is committed as soon as it returns.
GROUP_COMMIT_SECONDS = 0.01
RECENT_CALLS = 32  # calls whose times ``CallRunner.calls_payable_in`` takes the median of


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a failed call ``attempts - 1`` more times, sleeping ``base_delay * 2**i`` (capped) in between."""

    attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, attempt: int) -> float:
        return min(self.max_delay, self.base_delay * (2**attempt))


@dataclass(frozen=True)
class CallSpec:
    """One call an operator wants, and why (``insert``, ``update``, ``refresh`` or ``retry``).

    ``cache_key`` and ``draft`` are hints for a backend that keeps KV caches (``capabilities.kv_cache``): reuse the
    prompt KV stored under ``cache_key`` and re-score ``draft`` (the previous output's token ids) instead of decoding
    it. ``attribute_to`` names the context sentences a backend with attention (``capabilities.attention``) attributes
    the output to. None of them changes the text a call returns, so the memo key ignores them. ``blend`` lets a
    backend that can (``capabilities.kv_blend``) accept the draft on KV reused beyond the prefix: that may change the
    text (the completion then says ``exact=False`` and is not memoised).
    """

    request: CompletionRequest
    reason: str
    cache_key: str | None = None
    draft: tuple[int, ...] | None = None
    attribute_to: tuple[str, ...] | None = None
    blend: bool = False
    call_hash: str | None = None  # the memo hash of ``request`` on this runner's model, when the caller has it


@dataclass(frozen=True)
class PlannedCall:
    """A call and where it is made: the operator and version its ledger entry names (``CallRunner.prepay``)."""

    spec: CallSpec
    operator: str
    version: int | None


@dataclass(frozen=True)
class CallResult:
    """The outcome of one ``CallSpec``: a completion, or the error it ended with (never both, never neither)."""

    call_hash: str
    completion: Completion | None
    error: str | None
    memo_hit: bool

    @property
    def cost(self) -> CallCost:
        """What this value cost when it was paid: the unit of the full-recompute baseline."""
        if self.completion is None:
            return CallCost(calls=1)
        c = self.completion
        return CallCost(1, c.prompt_tokens + c.reused_tokens, c.output_tokens, c.seconds)


class CallRunner(EmbeddingRuns):
    """Runs calls on one backend for one database; owns no state but its thread pool."""

    def __init__(
        self,
        store: Store,
        backend: LLMBackend | LazyBackend[LLMBackend],
        *,
        retry: RetryPolicy = RetryPolicy(),
        max_workers: int = 1,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        progress: ProgressHook | None = None,
        claim_timeout: float = DEFAULT_CLAIM_TIMEOUT,
    ):
        self.store = store
        self.claim_timeout = claim_timeout  # see deltamem.llm.claims
        self._backend = backend if isinstance(backend, LazyBackend) else LazyBackend(lambda: backend)
        self.retry = retry
        self.clock = clock
        self.sleep = sleep
        self.progress = progress
        self.max_workers = max_workers
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="deltamem-llm")
        # This thread's ``deferring_records`` block: .records kept back; .prepaid, results ``prepay`` paid that no
        # ``run`` has taken yet; .answered, memo values ``prepay`` found.
        self._deferred = threading.local()
        self._last_call_seconds = 0.0  # how long the backend took for the last call that returned
        self._recent_call_seconds: deque[float] = deque(maxlen=RECENT_CALLS)
        self._heartbeat = ClaimHeartbeat(store, interval=claim_timeout / 3, clock=clock)  # renews the claims held

    @property
    def backend(self) -> LLMBackend:
        """The backend, loaded on first use."""
        return self._backend.get()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._heartbeat.close()

    @contextmanager
    def deferring_records(self) -> Iterator[None]:
        """Within the block, this thread's ledger records (a paid call's memo value with it) are kept back and
        written together when the block ends (before the caller's own writes that follow it); the block's later
        calls find those values as memo hits, and their claims are held until then. Records kept back
        ``GROUP_COMMIT_SECONDS`` are written with the next ones, and when calls take that long each is written as it
        returns, so a process killed inside the block loses little more paid work than outside it."""
        records: list[CallRecord] = []
        self._deferred.records, self._deferred.since = records, None
        self._deferred.prepaid, self._deferred.answered = {}, {}
        try:
            yield
            if self._deferred.prepaid:  # a plan named calls its pass never asked for: paid, and no view holds them
                log.warning("%d prepaid calls were never asked for (a planning bug): %s", len(self._deferred.prepaid),
                            ", ".join(sorted(self._deferred.prepaid)[:3]))
        finally:
            self._deferred.records = self._deferred.prepaid = self._deferred.answered = None
            self._record(records)

    def write_deferred(self) -> None:
        """Inside ``deferring_records``: write the records kept back so far now (in the caller's transaction, when it
        holds one), so that the caller's writes that follow may share that transaction."""
        records = self._deferred.records
        self._record(list(records))
        records.clear()

    def calls_payable_in(self, seconds: float) -> int:
        """About how many calls this runner settles in ``seconds``: from the median time of its recent calls (one
        call that waited for the GIL or the network says little; one the memo answered for ``prepay`` took none) and
        ``max_workers``; 1 before any (a slow backend must not be asked for a backlog's calls at once)."""
        if not self._recent_call_seconds:
            return 1
        return max(1, int(seconds / max(statistics.median(self._recent_call_seconds), 1e-6) * self.max_workers))

    def prepay(self, planned: Sequence[PlannedCall], *, view: str) -> None:
        """Inside ``deferring_records``: claim the calls a pass will make in one round, pay those claimed, and keep
        their results for the ``run`` that asks for each first, which takes it as paid there without a store round
        trip (the ledger entry, written now, already names that run's operator and version). Memo values found are
        kept for those runs too; a call that another process holds is left to its run.

        The caller must plan only calls its runs will make: one paid here and never asked for is on the ledger as
        paid, and no view holds its value."""
        if not planned:
            return
        model = self.backend.model_id
        by_hash: dict[str, PlannedCall] = {}
        for call in planned:  # the first place each call is made is where it is paid
            by_hash.setdefault(call.spec.call_hash or call_hash(model, call.spec.request), call)
        taken = self._deferred_memo(list(by_hash))
        wanted = {h: call for h, call in by_hash.items() if h not in taken and h not in self._deferred.prepaid}
        if not wanted:
            return
        self._write([])
        now = self.clock()
        claims = self.store.claim_calls({h: CallInFlight(now, call.version, view, call.operator, call.spec.reason,
                                                         model, h) for h, call in wanted.items()},
                                        now=now, stale_after=self.claim_timeout)
        self._heartbeat.add(claims.claimed)
        self._deferred.answered.update(claims.answered)
        self._recent_call_seconds.extend([0.0] * len(claims.answered))  # what a planned call costs: none here
        if claims.claimed:
            self._deferred.prepaid.update(self._pay_claimed(claims.claimed, wanted, view))

    def _write(self, records: list[CallRecord]) -> None:
        deferred = getattr(self._deferred, "records", None)
        if deferred is None:
            self._record(records)
            return
        now = time.monotonic()
        # Kept back for long enough, or the calls are slow (then the next one would keep these back for as long).
        if deferred and (now - self._deferred.since >= GROUP_COMMIT_SECONDS
                         or self._last_call_seconds >= GROUP_COMMIT_SECONDS):
            self._record([*deferred, *records])
            deferred.clear()
            return
        if records and not deferred:
            self._deferred.since = now
        deferred.extend(records)
        if deferred and self._last_call_seconds >= GROUP_COMMIT_SECONDS:
            self._record(list(deferred))
            deferred.clear()

    def _record(self, records: Sequence[CallRecord]) -> None:
        """``Store.record_calls``; the claims it ends need no more renewing."""
        self.store.record_calls(records)
        self._heartbeat.discard(r.entry.call_hash for r in records if r.entry.outcome in ("paid", "failed"))

    def _release(self, call_hashes: Sequence[str]) -> None:
        self.store.release_claims(call_hashes)
        self._heartbeat.discard(call_hashes)

    def _deferred_memo(self, hashes: Sequence[str]) -> dict[str, Completion]:
        """Of ``hashes``, the memo values paid inside this thread's ``deferring_records`` block, not yet written."""
        deferred = getattr(self._deferred, "records", None)
        if not deferred:
            return {}
        wanted = set(hashes)
        return {r.entry.call_hash: r.memo for r in deferred if r.memo is not None and r.entry.call_hash in wanted}

    def run(self, calls: Sequence[CallSpec], *, view: str, operator: str, version: int | None) -> list[CallResult]:
        """Run ``calls``; results come back in the same order."""
        if not calls:
            return []  # before touching the backend: an empty build must not load a model
        model = self.backend.model_id
        hashes = [spec.call_hash or call_hash(model, spec.request) for spec in calls]
        specs: dict[str, PlannedCall] = {}  # per distinct call, the first spec that asks for it
        for spec, h in zip(calls, hashes, strict=True):
            specs.setdefault(h, PlannedCall(spec, operator, version))
        results = {h: CallResult(h, answer, None, memo_hit=True)
                   for h, answer in self._deferred_memo(list(specs)).items()}
        prepaid, answered = getattr(self._deferred, "prepaid", None), getattr(self._deferred, "answered", None)
        for h in specs:
            if prepaid and h in prepaid:
                results[h] = prepaid.pop(h)  # paid for this run by ``prepay``, and recorded there
            elif answered and h in answered and h not in results:
                results[h] = CallResult(h, answered[h], None, memo_hit=True)
        pending = [h for h in specs if h not in results]
        if pending:
            self._write([])  # records kept back long enough are written before more calls are paid
        while pending:  # rounds: pay what this runner claimed, then wait for what others hold (never holding a claim)
            now = self.clock()
            claims = claim_or_wait(self.store, {
                h: CallInFlight(now, version, view, operator, specs[h].spec.reason, model, h) for h in pending
            }, stale_after=self.claim_timeout)
            self._heartbeat.add(claims.claimed)
            for h, answer in claims.answered.items():  # in the memo, or paid by another process while this one waited
                results[h] = CallResult(h, answer, None, memo_hit=True)
            if claims.claimed:
                results.update(self._pay_claimed(claims.claimed, specs, view))
            pending = list(claims.busy)
        # Each call this runner did not pay itself is a memo hit, if it has a value: also a repeat, in this batch,
        # of a call it paid (its caller must not count it as paid twice).
        hits: list[CallRecord] = []
        out: list[CallResult] = []
        paid_entry_written: set[str] = set()
        for spec, h in zip(calls, hashes, strict=True):
            result = results[h]
            if not result.memo_hit and h not in paid_entry_written:
                paid_entry_written.add(h)
            elif result.completion is not None:
                hits.append(CallRecord(self._entry(spec, h, result.completion, "memo", view, operator, version)))
                result = CallResult(h, result.completion, None, memo_hit=True)
            out.append(result)
        self._write(hits)
        return out

    def _pay_claimed(self, claimed: dict[str, int | None], specs: dict[str, PlannedCall],
                     view: str) -> dict[str, CallResult]:
        """Pay the calls this runner claimed, up to ``max_concurrency`` at once, and record them by group commit:
        each time the main thread wakes for a returned call it records, in one transaction, every call that has
        returned since its last commit (so a slow backend's calls are each committed as they return, and a fast
        one's share commits). A call is recorded as soon as the group it returned in is committed.

        An exception other than ``BackendError`` (a bug, an interrupt) still records the calls that returned, then
        releases the claims of the others but leaves their in-flight notes: they may have been paid, and the next
        process reports them as interrupted."""
        label = f"{view}/{specs[next(iter(claimed))].operator}"
        results: dict[str, CallResult] = {}
        if self.progress:
            self.progress(label, 0, len(claimed))
        if len(claimed) == 1 or not self.backend.capabilities.concurrent:
            self._pay_in_turn(claimed, specs, view, label, results)
        else:
            futures = {self._pool.submit(self._complete, specs[h].spec): h for h in claimed}
            waiting = set(futures)
            try:
                while waiting:
                    returned, waiting = wait(waiting, return_when=FIRST_COMPLETED)
                    outcomes = {futures[f]: f.result() for f in returned if f.exception() is None}
                    self._record_paid(outcomes, claimed, specs, view, results)
                    for future in returned:
                        future.result()  # re-raises what a call raised other than BackendError, once its
                        # siblings that returned are recorded
                    if self.progress:
                        self.progress(label, len(results), len(claimed))
            except BaseException:
                for future in waiting:
                    future.cancel()
                wait(waiting)  # the ones already running cannot be cancelled: what they paid is recorded
                outcomes = {futures[f]: f.result() for f in waiting if not f.cancelled() and f.exception() is None}
                self._record_paid(outcomes, claimed, specs, view, results)
                self._release([h for h in claimed if h not in results])
                raise
        return results

    def _pay_in_turn(self, claimed: dict[str, int | None], specs: dict[str, PlannedCall], view: str, label: str,
                     results: dict[str, CallResult]) -> None:
        """``_pay_claimed`` in the caller's thread, one call at a time (no concurrency to gain): the calls that
        returned are committed together once ``GROUP_COMMIT_SECONDS`` have passed since the last commit, so a call
        that takes that long is committed as soon as it returns."""
        outcomes: dict[str, Completion | str] = {}
        last_commit = time.monotonic()
        try:
            for h in claimed:
                outcomes[h] = self._complete(specs[h].spec)
                if time.monotonic() - last_commit >= GROUP_COMMIT_SECONDS:
                    self._record_paid(outcomes, claimed, specs, view, results)
                    outcomes, last_commit = {}, time.monotonic()
                    if self.progress:
                        self.progress(label, len(results), len(claimed))
        finally:  # on an exception too: what was paid is recorded, and the claims of the rest are released
            self._record_paid(outcomes, claimed, specs, view, results)
            if len(results) < len(claimed):
                self._release([h for h in claimed if h not in results])
        if self.progress:
            self.progress(label, len(results), len(claimed))

    def _complete(self, spec: CallSpec) -> Completion | str:
        """Ask the backend for ``spec``, retrying a ``BackendError`` with backoff: the completion, or the last error.
        Runs on the pool; touches no store."""
        error = ""
        started = time.monotonic()
        try:
            for attempt in range(self.retry.attempts):
                if attempt:
                    self.sleep(self.retry.delay(attempt - 1))
                try:
                    return self.backend.complete(spec.request, **self._hints(spec))
                except BackendError as exc:
                    error = str(exc)
            return f"{error} (after {self.retry.attempts} attempts)"
        finally:
            self._last_call_seconds = time.monotonic() - started
            self._recent_call_seconds.append(self._last_call_seconds)

    def _record_paid(self, outcomes: dict[str, Completion | str], claimed: dict[str, int | None],
                     specs: dict[str, PlannedCall], view: str, results: dict[str, CallResult]) -> None:
        """One transaction for ``outcomes``: ``paid`` (memo too, when exact) or ``failed`` entries that end their
        claims and in-flight notes; their results go into ``results``."""
        records = []
        for h, outcome in outcomes.items():
            spec, operator, version = specs[h].spec, specs[h].operator, specs[h].version
            if isinstance(outcome, str):
                entry = LedgerEntry(self.clock(), version, view, operator, spec.reason, self.backend.model_id,
                                    "failed", 0, 0, 0, 0.0, h, outcome)
                records.append(CallRecord(entry, None, claimed[h]))
                results[h] = CallResult(h, None, outcome, memo_hit=False)
            else:
                entry = self._entry(spec, h, outcome, "paid", view, operator, version)
                records.append(CallRecord(entry, outcome if outcome.exact else None, claimed[h]))
                results[h] = CallResult(h, outcome, None, memo_hit=False)
        self._write(records)

    def _hints(self, spec: CallSpec) -> dict:
        """The keyword hints of ``spec`` that this backend can take (a plain backend takes none)."""
        can = self.backend.capabilities
        hints: dict = {}
        if spec.cache_key is not None and can.kv_cache:
            hints.update(cache_key=spec.cache_key, draft=spec.draft)
            if spec.blend and can.kv_blend:
                hints["blend"] = True
        if spec.attribute_to is not None and can.attention:
            hints["attribute_to"] = spec.attribute_to
        return hints

    def _entry(self, spec: CallSpec, h: str, c: Completion, outcome: str, view: str, operator: str,
               version: int | None) -> LedgerEntry:
        return LedgerEntry(self.clock(), version, view, operator, spec.reason, c.model, outcome,
                           c.prompt_tokens, c.reused_tokens, c.output_tokens, c.seconds, h)
