"""Runs the model calls operators ask for: memo first, then the backend with retries; every outcome on the ledger.

    results = runner.run([CallSpec(request, "insert")], view="digest", operator="1:sem_map", version=7)

The engine decides *what* to call; the runner only runs it. Per call it

1. looks the call up in the memo (``deltamem.llm.memo.call_hash``): a hit costs nothing and is written to the ledger
   as ``memo`` with the tokens it saved;
2. otherwise claims it on the store and notes it as in flight, in one transaction (``deltamem.llm.claims``: while
   another process, or thread, holds the claim, it waits for that one's memo entry instead of paying), runs it on a
   thread pool, retrying a ``BackendError`` with exponential backoff, and writes the result to the memo and the
   ledger (``paid``) in one transaction that also ends the claim, at once, so a killed process never pays for it
   again. A call in flight when the process is killed is lost and paid again; the next process to open the store
   puts it on the ledger as ``interrupted``;
3. after the last attempt, writes a ``failed`` ledger entry and returns the error: the caller stores it on the row.

Identical calls in one batch run once; the others are memo hits.

Embeddings take the same path (``embed``), one text being one call: memo first (``embed_hash``), then claims, then
one batch for every text the memo lacks and this runner claimed, retried with backoff; a batch that still fails is
split in halves, each tried once, so a text the embedder always refuses fails alone and the others are paid. Each text gets its own ``paid``, ``memo`` or
``failed`` entry, under the operator ``embedding_operator(op_id)`` (``"2:sem_index/embed"``), with the tokens the
embedder counts (``count_tokens``, when it has one) and its share of the batch's seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from deltamem.errors import BackendError
from deltamem.llm import LazyBackend
from deltamem.llm.base import Completion, CompletionRequest, EmbeddingBackend, LLMBackend
from deltamem.llm.claims import DEFAULT_CLAIM_TIMEOUT, claim_or_wait
from deltamem.llm.memo import call_hash, embed_hash, text_to_vector, vector_to_text
from deltamem.store.base import CallCost, CallInFlight, LedgerEntry, Store

ProgressHook = Callable[[str, int, int], None]  # (label, calls done, calls in this batch)
EMBED_SUFFIX = "/embed"


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
        # Claimed and noted before the backend is asked, both ended by the ledger entry. An exception other than
        # BackendError releases the claim but leaves the note: the call may have been paid, and the next process
        # reports it as interrupted.
        call = CallInFlight(self.clock(), version, view, operator, spec.reason, self.backend.model_id, h)
        claims = claim_or_wait(self.store, {h: call}, stale_after=self.claim_timeout)
        if h in claims.answered:  # another process (or thread) paid it while this one waited
            self._record(spec, h, claims.answered[h], "memo", view, operator, version)
            return CallResult(h, claims.answered[h], None, memo_hit=True)
        try:
            return self._pay_claimed(spec, h, claims.claimed[h], view, operator, version)
        except BaseException:
            self.store.release_claims([h])
            raise

    def _pay_claimed(self, spec: CallSpec, h: str, flight: int | None, view: str, operator: str,
                     version: int | None) -> CallResult:
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
                         memo=completion if completion.exact else None, in_flight=flight)
            return CallResult(h, completion, None, memo_hit=False)
        error = f"{error} (after {self.retry.attempts} attempts)"
        self.store.record_call(
            LedgerEntry(self.clock(), version, view, operator, spec.reason, self.backend.model_id, "failed",
                        0, 0, 0, 0.0, h, error),
            in_flight=flight,
        )
        return CallResult(h, None, error, memo_hit=False)

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
        to_pay: dict[str, tuple[str, str]] = {}  # hash -> (text, reason)
        hits: list[tuple[str, str]] = []  # (hash, reason) answered by the memo, recorded after the paid ones
        for text, reason, h in zip(texts, reasons, hashes, strict=True):
            if h in to_pay or h in values:
                hits.append((h, reason))  # identical texts in one batch: paid once, the others are memo hits
                continue
            memo = self.store.get_memo(h)
            if memo is None:
                to_pay[h] = (text, reason)
            else:
                values[h] = memo
                hits.append((h, reason))
        paid_here: set[str] = set()
        if to_pay and self.progress:
            self.progress(f"{view}/{label}", 0, len(to_pay))
        pending = list(to_pay)
        while pending:  # rounds: pay and record what this runner claimed, then wait for what others hold
            claims = claim_or_wait(self.store, dict.fromkeys(pending), stale_after=self.claim_timeout)
            for h, answer in claims.answered.items():  # another process (or thread) paid it meanwhile
                values[h] = answer
                hits.append((h, to_pay[h][1]))
            claimed = list(claims.claimed)
            if claimed:
                try:
                    paid = self._pay_embeddings(embedder, claimed, [to_pay[h][0] for h in claimed])
                    self._record_paid_embeddings(paid, to_pay, model, view, label, version)
                except BaseException:
                    self.store.release_claims(claimed)
                    raise
                values.update(paid)
                paid_here.update(paid)
            pending = list(claims.busy)
        if to_pay and self.progress:
            self.progress(f"{view}/{label}", len(to_pay), len(to_pay))
        with self.store.transaction():
            for h, reason in hits:
                value = values[h]
                if not isinstance(value, str):  # a duplicate of a failed text is no hit: its one failure is recorded
                    self._record_embedding(h, reason, value, "memo", view, label, version)
        return [_embed_result(h, values[h], memo_hit=h not in paid_here) for h in hashes]

    def _record_paid_embeddings(self, paid: dict[str, Completion | str], to_pay: dict[str, tuple[str, str]],
                                model: str, view: str, label: str, version: int | None) -> None:
        """The ledger entries (and memo entries) of a paid batch; this ends its claims. One transaction for the
        batch: a commit (and its fsync) per text made bulk indexing crawl."""
        with self.store.transaction():
            for h, value in paid.items():
                reason = to_pay[h][1]
                if isinstance(value, str):
                    self.store.record_call(LedgerEntry(self.clock(), version, view, label, reason, model, "failed",
                                                       0, 0, 0, 0.0, h, value))
                else:
                    self._record_embedding(h, reason, value, "paid", view, label, version, memo=value)

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

    def _record_embedding(self, h: str, reason: str, c: Completion, outcome: str, view: str, operator: str,
                          version: int | None, memo: Completion | None = None) -> None:
        entry = LedgerEntry(self.clock(), version, view, operator, reason, c.model, outcome, c.prompt_tokens, 0, 0,
                            c.seconds, h)
        self.store.record_call(entry, memo)

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
        memo: Completion | None = None, in_flight: int | None = None,
    ) -> None:
        entry = LedgerEntry(
            self.clock(), version, view, operator, spec.reason, c.model, outcome,
            c.prompt_tokens, c.reused_tokens, c.output_tokens, c.seconds, h,
        )
        self.store.record_call(entry, memo, in_flight)


def _embed_result(h: str, value: Completion | str, *, memo_hit: bool) -> EmbedResult:
    if isinstance(value, str):
        return EmbedResult(h, None, value, memo_hit=False)
    return EmbedResult(h, text_to_vector(value.text), None, memo_hit=memo_hit)


def _excerpt(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
