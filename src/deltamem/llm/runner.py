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

Identical calls in one batch run once; the others are memo hits.

Embeddings take the same path (``embed``), one text being one call: memo first (``embed_hash``), then claims, then
one batch for every text the memo lacks and this runner claimed, retried with backoff; a batch that still fails is
split in halves, each tried once, so a text the embedder always refuses fails alone and the others are paid. Each
text gets its own ``paid``, ``memo`` or ``failed`` entry, under the operator ``embedding_operator(op_id)``
(``"2:sem_index/embed"``), with the tokens the embedder counts (``count_tokens``, when it has one) and its share of
the batch's seconds.

The claims a runner holds are renewed by its ``ClaimHeartbeat`` until they are recorded or released.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from deltamem.errors import BackendError
from deltamem.llm import LazyBackend
from deltamem.llm.base import Completion, CompletionRequest, EmbeddingBackend, LLMBackend
from deltamem.llm.claims import DEFAULT_CLAIM_TIMEOUT, ClaimHeartbeat, claim_or_wait
from deltamem.llm.memo import call_hash, embed_hash, text_to_vector, vector_to_text
from deltamem.store.base import CallCost, CallInFlight, CallRecord, LedgerEntry, Store

ProgressHook = Callable[[str, int, int], None]  # (label, calls done, calls in this batch)
EMBED_SUFFIX = "/embed"
# Calls paid in turn are committed together until this many seconds have passed since the last commit: one commit
# (and fsync) per call made a fast backend's batches crawl, and a slower call is committed as soon as it returns.
GROUP_COMMIT_SECONDS = 0.01
RECENT_CALLS = 32  # calls whose times ``CallRunner.calls_payable_in`` takes the median of


def embedding_operator(op_id: str) -> str:
    """The ledger's operator name for the embeddings of operator ``op_id``: apart from its completions."""
    return op_id + EMBED_SUFFIX


def is_embedding_operator(operator: str) -> bool:
    return operator.endswith(EMBED_SUFFIX)


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


@dataclass(frozen=True)
class EmbedResult:
    """The outcome of embedding one text: its vector, or the error it ended with (never both, never neither)."""

    call_hash: str
    vector: np.ndarray | None
    error: str | None
    memo_hit: bool


class CallRunner:
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
        finally:
            self._deferred.records = self._deferred.prepaid = self._deferred.answered = None
            self._record(records)

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

    def embed(self, embedder: EmbeddingBackend, texts: Sequence[str], *, reasons: Sequence[str], view: str,
              operator: str, version: int | None) -> list[EmbedResult]:
        """Embed ``texts`` (``reasons[i]`` says why text i is asked for) as the calls of ``operator``, which the
        ledger files under ``embedding_operator(operator)``; results come back in the same order."""
        if not texts:
            return []
        model = embedder.model_id
        label = embedding_operator(operator)
        hashes = [embed_hash(model, text) for text in texts]
        values: dict[str, Completion | str] = {}  # per distinct text: its memo value (the vector), or its error
        to_pay: dict[str, tuple[str, str]] = {}  # per distinct text: (text, the first reason asked)
        for text, reason, h in zip(texts, reasons, hashes, strict=True):
            to_pay.setdefault(h, (text, reason))
        paid_here: set[str] = set()
        pending = list(to_pay)
        while pending:  # rounds: pay and record what this runner claimed, then wait for what others hold
            claims = claim_or_wait(self.store, dict.fromkeys(pending), stale_after=self.claim_timeout)
            self._heartbeat.add(claims.claimed)
            values.update(claims.answered)  # in the memo, or paid by another process while this one waited
            claimed = list(claims.claimed)
            if claimed:
                if self.progress:
                    self.progress(f"{view}/{label}", 0, len(claimed))
                try:
                    paid = self._pay_embeddings(embedder, claimed, [to_pay[h][0] for h in claimed])
                    # One transaction for the batch: a commit (and its fsync) per text made bulk indexing crawl.
                    self._record([self._embedding_record(h, to_pay[h][1], value, "paid", model, view,
                                                                    label, version) for h, value in paid.items()])
                except BaseException:
                    self._release(claimed)
                    raise
                values.update(paid)
                paid_here.update(paid)
                if self.progress:
                    self.progress(f"{view}/{label}", len(claimed), len(claimed))
            pending = list(claims.busy)
        hits: list[CallRecord] = []  # every text not paid here: a memo hit (a duplicate of a failed text is none)
        recorded: set[str] = set()
        for h, reason in zip(hashes, reasons, strict=True):
            if h in paid_here and h not in recorded:
                recorded.add(h)
            elif not isinstance(values[h], str):
                hits.append(self._embedding_record(h, reason, values[h], "memo", model, view, label, version))
        self._record(hits)
        return [_embed_result(h, values[h], memo_hit=h not in paid_here) for h in hashes]

    def embed_or_raise(self, embedder: EmbeddingBackend, texts: Sequence[str], *, reasons: Sequence[str], view: str,
                       operator: str, version: int | None) -> np.ndarray:
        """``embed``, for a caller that has no row to store an error on: the vectors as one (len(texts), dim)
        array, or ``BackendError`` naming the first text that failed."""
        results = self.embed(embedder, texts, reasons=reasons, view=view, operator=operator, version=version)
        for text, result in zip(texts, results, strict=True):
            if result.vector is None:
                raise BackendError(f"Embedding {_excerpt(text)} failed: {result.error}")
        return np.stack([r.vector for r in results]) if results else np.zeros((0, embedder.dim), dtype=np.float32)

    def _pay_embeddings(self, embedder: EmbeddingBackend, hashes: list[str],
                        texts: list[str]) -> dict[str, Completion | str]:
        """One batch for ``texts``, retried with backoff; if it still fails, halves tried once each, down to single
        texts. Returns per hash the memo value (a completion holding the vector) or the error."""
        error = ""
        for attempt in range(self.retry.attempts):
            if attempt:
                self.sleep(self.retry.delay(attempt - 1))
            try:
                return self._embed_batch(embedder, hashes, texts)
            except BackendError as exc:
                error = str(exc)
        error = f"{error} (after {self.retry.attempts} attempts)"
        if len(texts) == 1:
            return {hashes[0]: error}
        out: dict[str, Completion | str] = {}
        pending = [(hashes, texts)]
        while pending:  # NOTE: f texts that always fail cost about 2 f log2(n / f) more requests to single out
            batch_hashes, batch_texts = pending.pop()
            middle = len(batch_texts) // 2
            for part in ((batch_hashes[:middle], batch_texts[:middle]), (batch_hashes[middle:], batch_texts[middle:])):
                try:
                    out.update(self._embed_batch(embedder, *part))
                except BackendError as exc:
                    if len(part[1]) == 1:
                        out[part[0][0]] = f"{exc} (after {self.retry.attempts} attempts in a batch and one alone)"
                    else:
                        pending.append(part)
        return out

    def _embed_batch(self, embedder: EmbeddingBackend, hashes: list[str], texts: list[str]) -> dict[str, Completion]:
        started = time.perf_counter()
        vectors = np.asarray(embedder.embed(list(texts)), dtype=np.float32)
        seconds = (time.perf_counter() - started) / len(texts)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise BackendError(f"{embedder.model_id}: asked for {len(texts)} embeddings, got shape {vectors.shape}")
        count = getattr(embedder, "count_tokens", None)  # optional: an embedder that cannot count records 0
        return {
            h: Completion(vector_to_text(vector), count(text) if count else 0, 0, seconds, embedder.model_id)
            for h, text, vector in zip(hashes, texts, vectors, strict=True)
        }

    def _embedding_record(self, h: str, reason: str, value: Completion | str, outcome: str, model: str, view: str,
                          operator: str, version: int | None) -> CallRecord:
        """The ledger record of one text: ``failed`` when ``value`` is an error, else ``outcome`` (a paid one with
        its memo value)."""
        if isinstance(value, str):
            return CallRecord(LedgerEntry(self.clock(), version, view, operator, reason, model, "failed", 0, 0, 0, 0.0,
                                          h, value))
        entry = LedgerEntry(self.clock(), version, view, operator, reason, value.model, outcome, value.prompt_tokens,
                            0, 0, value.seconds, h)
        return CallRecord(entry, value if outcome == "paid" else None)

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


def _embed_result(h: str, value: Completion | str, *, memo_hit: bool) -> EmbedResult:
    if isinstance(value, str):
        return EmbedResult(h, None, value, memo_hit=False)
    return EmbedResult(h, text_to_vector(value.text), None, memo_hit=memo_hit)


def _excerpt(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
