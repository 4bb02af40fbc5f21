"""Runs the model calls operators ask for: memo first, then the backend with retries; every outcome on the ledger.

    results = runner.run([CallSpec(request, "insert")], view="digest", operator="1:sem_map", version=7)

The engine decides *what* to call; the runner only runs it. Per call it

1. looks the call up in the memo (``deltamem.llm.memo.call_hash``): a hit costs nothing and is written to the ledger
   as ``memo`` with the tokens it saved;
2. otherwise runs it on a thread pool, retrying a ``BackendError`` with exponential backoff, and writes the result to
   the memo and the ledger (``paid``) in one transaction, at once, so a killed process never pays for it again;
3. after the last attempt, writes a ``failed`` ledger entry and returns the error: the caller stores it on the row.

Identical calls in one batch run once; the others are memo hits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from deltamem.errors import BackendError
from deltamem.llm import LazyBackend
from deltamem.llm.base import Completion, CompletionRequest, LLMBackend
from deltamem.llm.memo import call_hash
from deltamem.store.base import CallCost, LedgerEntry, Store

ProgressHook = Callable[[str, int, int], None]  # (label, calls done, calls in this batch)


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
    ):
        self.store = store
        self._backend = backend if isinstance(backend, LazyBackend) else LazyBackend(lambda: backend)
        self.retry = retry
        self.clock = clock
        self.sleep = sleep
        self.progress = progress
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="deltamem-llm")

    @property
    def backend(self) -> LLMBackend:
        """The backend, loaded on first use."""
        return self._backend.get()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def run(self, calls: Sequence[CallSpec], *, view: str, operator: str, version: int | None) -> list[CallResult]:
        """Run ``calls``; results come back in the same order."""
        if not calls:
            return []  # before touching the backend: an empty build must not load a model
        model = self.backend.model_id
        hashes = [call_hash(model, spec.request) for spec in calls]
        results: dict[str, CallResult] = {}
        to_pay: dict[str, CallSpec] = {}
        duplicate_hits: list[tuple[str, CallSpec]] = []
        for spec, h in zip(calls, hashes, strict=True):
            if h in to_pay:
                duplicate_hits.append((h, spec))
            elif h in results:
                self._record(spec, h, results[h].completion, "memo", view, operator, version)
            else:
                memo = self.store.get_memo(h)
                if memo is None:
                    to_pay[h] = spec
                else:
                    results[h] = CallResult(h, memo, None, memo_hit=True)
                    self._record(spec, h, memo, "memo", view, operator, version)
        label = f"{view}/{operator}"
        done = 0
        if to_pay and self.progress:
            self.progress(label, 0, len(to_pay))
        futures = {h: self._pool.submit(self._pay, spec, h, view, operator, version) for h, spec in to_pay.items()}
        for h, future in futures.items():
            results[h] = future.result()
            done += 1
            if self.progress:
                self.progress(label, done, len(to_pay))
        for h, spec in duplicate_hits:
            if results[h].completion is not None:
                self._record(spec, h, results[h].completion, "memo", view, operator, version)
        return [results[h] for h in hashes]

    def _pay(self, spec: CallSpec, h: str, view: str, operator: str, version: int | None) -> CallResult:
        error = ""
        for attempt in range(self.retry.attempts):
            if attempt:
                self.sleep(self.retry.delay(attempt - 1))
            try:
                completion = self.backend.complete(spec.request, **self._hints(spec))
            except BackendError as exc:
                error = str(exc)
                continue
            self._record(spec, h, completion, "paid", view, operator, version,
                         memo=completion if completion.exact else None)
            return CallResult(h, completion, None, memo_hit=False)
        error = f"{error} (after {self.retry.attempts} attempts)"
        self.store.record_call(
            LedgerEntry(self.clock(), version, view, operator, spec.reason, self.backend.model_id, "failed",
                        0, 0, 0, 0.0, h, error)
        )
        return CallResult(h, None, error, memo_hit=False)

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

    def _record(
        self, spec: CallSpec, h: str, c: Completion, outcome: str, view: str, operator: str, version: int | None,
        memo: Completion | None = None,
    ) -> None:
        entry = LedgerEntry(
            self.clock(), version, view, operator, spec.reason, c.model, outcome,
            c.prompt_tokens, c.reused_tokens, c.output_tokens, c.seconds, h,
        )
        self.store.record_call(entry, memo)
