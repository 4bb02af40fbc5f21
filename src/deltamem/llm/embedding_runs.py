"""Embeddings run as model calls: memo first, then claims, then batches with retries; every text on the ledger.

    vectors = runner.embed_or_raise(embedder, ["a text"], reasons=["insert"], view="idx", operator="1:sem_index")

``EmbeddingRuns`` is the part of ``CallRunner`` that embeds (a mixin: it uses the runner's store, claims, retry policy
and ledger records). One text is one call: memo first (``embed_hash``), then claims, then one batch for every text
the memo lacks and this runner claimed, retried with backoff; a batch that still fails is split in halves, each
tried once, so a text the embedder always refuses fails alone and the others are paid. Each text gets its own
``paid``, ``memo`` or ``failed`` entry, under the operator ``embedding_operator(op_id)`` (``"2:sem_index/embed"``),
with the tokens the embedder counts (``count_tokens``, when it has one) and its share of the batch's seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from deltamem.errors import BackendError
from deltamem.llm.base import Completion, EmbeddingBackend
from deltamem.llm.claims import claim_or_wait
from deltamem.llm.memo import embed_hash, text_to_vector, vector_to_text
from deltamem.store.base import CallRecord, LedgerEntry, Store

if TYPE_CHECKING:
    from deltamem.llm.claims import ClaimHeartbeat
    from deltamem.llm.runner import ProgressHook, RetryPolicy

EMBED_SUFFIX = "/embed"


def embedding_operator(op_id: str) -> str:
    """The ledger's operator name for the embeddings of operator ``op_id``: apart from its completions."""
    return op_id + EMBED_SUFFIX


def is_embedding_operator(operator: str) -> bool:
    return operator.endswith(EMBED_SUFFIX)


@dataclass(frozen=True)
class EmbedResult:
    """The outcome of embedding one text: its vector, or the error it ended with (never both, never neither)."""

    call_hash: str
    vector: np.ndarray | None
    error: str | None
    memo_hit: bool


class EmbeddingRuns:
    """``CallRunner.embed`` and ``embed_or_raise``: embeddings through the memo, the claims and the ledger. It uses
    the runner's attributes below and its ``_record`` and ``_release``."""

    store: Store
    claim_timeout: float
    retry: RetryPolicy
    progress: ProgressHook | None
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    _heartbeat: ClaimHeartbeat

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


def _embed_result(h: str, value: Completion | str, *, memo_hit: bool) -> EmbedResult:
    if isinstance(value, str):
        return EmbedResult(h, None, value, memo_hit=False)
    return EmbedResult(h, text_to_vector(value.text), None, memo_hit=memo_hit)


def _excerpt(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
