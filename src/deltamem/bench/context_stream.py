"""``deltamem bench context-stream``: changing questions over fixed documents, then document edits of known relevance.

    deltamem bench context-stream --originals 20 --llm test

The stream (``deltamem.bench.question_stream``) arrives one question per version. Four modes answer it, each in its
own database on the same backend, side by side in one run:

==========  ===========================================================================================================
off         ``LLM_GENERATE`` with ``reuse="off"``: a call per question, except a byte-identical prompt (the memo)
static      GPTCache's rule: the raw question's embedding against every cached question, a hit at cosine >= 0.8
            serves the cached answer; a miss is answered by the ``off`` view's mechanism and cached. No invalidation
semantic    ``reuse="semantic"`` with ``max_error`` (per-entry thresholds learned from checks, ``deltamem.reuse``)
compose     ``decompose=`` the stream's declared templates: base questions over the documents, a short composition
==========  ===========================================================================================================

Every question reads the ten paragraphs of its record (``partition``): ``off``, ``static`` and ``semantic`` put
``retrieve`` sentences of them in the prompt (default: all), ``compose``'s base questions ``base_retrieve`` (default
3: a base question asks one fact of one entity). Every mode refreshes with ``regenerate`` (exact).

Reported per mode, for the stream and then for the edits: calls, prompt and output tokens and model seconds; the hit
rate (questions whose arrival paid no call); wrong reuses (a served answer that ``answers_agree`` says differs from
``off``'s full answer to the same question, counted over all questions); accuracy against the gold answers (contains
match) with a paired bootstrap interval of the difference from ``off``; and after the edits, the stale answers served:
an answer whose prompt held a sentence that has changed since (for ``static``, the cached copy served when the
stream is asked again; for the others, the standing rows).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import deltamem as dm
from deltamem.bench.answer_quality import contains_match, paired_bootstrap_ci
from deltamem.bench.question_stream import ContextStream, build_context_stream
from deltamem.changes import encode_key
from deltamem.llm import lazy_embedder, lazy_llm
from deltamem.reuse.agreement import answers_agree

MODES = ("off", "static", "semantic", "compose")
PROMPT = "Answer the question from the documents with a short phrase."
STATIC_THRESHOLD = 0.8  # GPTCache's similarity threshold default
MAX_TOKENS = 32  # per answer, in every mode (a base answer and a composition too)
QUESTIONS = {"key": "text", "part": "text", "question": "text"}
DOCS = {"doc_id": "text", "part": "text", "title": "text", "text": "text"}


def run_context_stream(*, data_file: Path, llm: str, embedder: str, originals: int, edits: int, seed: int,
                       retrieve: int | str, base_retrieve: int | str, max_error: float, reuse_check: float,
                       modes: list[str],
                       progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Run every mode over the same stream; the result as a JSON-ready dict."""
    unknown = sorted(set(modes) - set(MODES))
    if unknown or "off" not in modes:
        raise dm.ConfigError(f"modes must include 'off' (the reference) and come from {', '.join(MODES)}; "
                             f"got {', '.join(modes)}")
    stream = build_context_stream(data_file, originals=originals, seed=seed, edits=edits)
    backend, embed = lazy_llm(llm).get(), lazy_embedder(embedder).get()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="deltamem-context-stream-") as tmp:
        for mode in modes:
            db = dm.connect(str(Path(tmp) / f"{mode}.db"), llm=backend, embedder=embed, background=False)
            try:
                results[mode] = _run_mode(db, mode, stream, retrieve=base_retrieve if mode == "compose" else retrieve,
                                          max_error=max_error,
                                          reuse_check=reuse_check, embed=embed, progress=progress)
            finally:
                db.close()
    reference = results["off"]["answers"]
    for mode, result in results.items():
        _score(result, reference, stream)
    # What a perfect reuse could gain: per kind, how often off's full answer agrees with its origin's full answer.
    agreement: dict[str, list[int]] = {}
    for q in stream.questions:
        if q.kind != "original":
            counts = agreement.setdefault(q.kind, [0, 0])
            counts[0] += answers_agree(reference[q.key], reference[q.origin], q.question)
            counts[1] += 1
    return {"config": {"data": str(data_file), "llm": llm, "embedder": embedder, "originals": originals,
                       "questions": len(stream.questions), "edits": len(stream.edits), "seed": seed,
                       "retrieve": retrieve, "base_retrieve": base_retrieve, "max_error": max_error,
                       "reuse_check": reuse_check,
                       "static_threshold": STATIC_THRESHOLD, "kinds": _kinds(stream), "rules": list(stream.rules),
                       "full_answer_agrees_with_origin": agreement},
            "modes": results}


def _run_mode(db: dm.Database, mode: str, stream: ContextStream, *, retrieve, max_error: float, reuse_check: float,
              embed, progress) -> dict[str, Any]:
    questions = db.table("questions", key="key", columns=QUESTIONS)
    docs = db.table("docs", key="doc_id", columns=DOCS)
    docs.upsert([{"doc_id": d.doc_id, "part": d.part, "title": d.title, "text": d.text} for d in stream.documents])
    options: dict[str, Any] = {"retrieve": retrieve, "partition": "part", "strategy": "regenerate",
                               "max_tokens": MAX_TOKENS}
    if mode == "semantic":
        options.update(reuse="semantic", max_error=max_error, reuse_check=reuse_check)
    elif mode == "compose":
        options["decompose"] = stream.decompose
    view = db.generate("answers", prompt=PROMPT, context=questions, data_source=docs, **options)
    view.rows(fresh=True)
    cache = _StaticCache(embed) if mode == "static" else None
    start, usage0 = time.perf_counter(), db.usage()
    answers, served_by, paid = {}, {}, {}
    for i, q in enumerate(stream.questions):
        calls = db.usage().calls
        hit = cache.lookup(q.question) if cache else None
        if hit is not None:
            answers[q.key], served_by[q.key] = hit[0], "cache"
        else:
            questions.upsert({"key": q.key, "part": q.part, "question": q.question})
            row = _row(view, q.key, fresh=True)
            answers[q.key] = row["answer"]
            served_by[q.key] = _how(db, q.key)
            if cache:
                cache.add(q.question, row["answer"], _chunks(db.store.get_all_state("answers"), q.key))
        paid[q.key] = db.usage().calls - calls
        if progress:
            progress(f"{mode}: questions", i + 1, len(stream.questions))
    stream_cost = _cost(db.usage(), usage0, time.perf_counter() - start)
    start, usage1 = time.perf_counter(), db.usage()
    for i, edit in enumerate(stream.edits):
        if edit.text is None:
            docs.delete(edit.doc_id)
        else:
            docs.upsert({"doc_id": edit.doc_id, **_doc_fields(stream, edit.doc_id), "text": edit.text})
        view.rows(fresh=True)
        if progress:
            progress(f"{mode}: edits", i + 1, len(stream.edits))
    edit_cost = _cost(db.usage(), usage1, time.perf_counter() - start)
    state = db.store.get_all_state("answers")
    current = _current_chunks(state)
    after, stale = {}, 0
    for q in stream.questions:
        if cache is not None and cache.lookup(q.question) is not None:  # asked again: GPTCache serves its copy
            text, chunks = cache.lookup(q.question)
        else:
            row = _row(view, q.key)
            text, chunks = (None if row is None else row["answer"]), _chunks(state, q.key)
        after[q.key] = text
        stale += bool(chunks) and not set(map(tuple, chunks)) <= current
    return {"answers": answers, "served_by": served_by, "paid_calls": paid, "answers_after_edits": after,
            "stale_after_edits": stale,
            "stream_cost": stream_cost, "edit_cost": edit_cost}


class _StaticCache:
    """GPTCache's similarity rule: the nearest cached question at cosine >= ``STATIC_THRESHOLD`` answers."""

    def __init__(self, embed):
        self.embed = embed
        self.vectors: list[np.ndarray] = []
        self.entries: list[tuple[str, list]] = []

    def lookup(self, question: str) -> tuple[str, list] | None:
        if not self.vectors:
            return None
        scores = np.stack(self.vectors) @ self.embed.embed([question])[0]
        best = int(np.argmax(scores))
        return self.entries[best] if scores[best] >= STATIC_THRESHOLD else None

    def add(self, question: str, answer: str, chunks: list) -> None:
        self.vectors.append(self.embed.embed([question])[0])
        self.entries.append((answer, chunks))


def _row(view: dm.View, key: str, *, fresh: bool = False) -> dict | None:
    read = view.rows(fresh=fresh)
    return next((row for k, row in zip(read.keys, read.rows) if k == key), None)


def _how(db: dm.Database, key: str) -> str:
    """How the question's answer was served: ``reuse``, ``memo``, or a paid strategy."""
    decisions = db.store.get_decisions("answers", encode_key(key))
    return decisions[-1].strategy if decisions else "none"


def _chunks(state: dict, key: str) -> list:
    """The sentence idents in the prompt behind the answer to ``key`` (for a composite: its base answers')."""
    found = []
    for (op, k), entry in state.items():
        if k == encode_key(key) and entry.value:
            found += entry.value.get("chunks") or []
            for base in entry.value.get("bases") or ():
                base_entry = next((e for (o, bk), e in state.items() if bk == base and o.endswith("/base")), None)
                found += (base_entry.value or {}).get("chunks") or [] if base_entry else []
    return [tuple(c) for c in found]


def _current_chunks(state: dict) -> set[tuple]:
    return {tuple(c["ident"]) for (op, _k), e in state.items() if op.endswith("/docs") and e.value
            for c in e.value["chunks"]}


def _doc_fields(stream: ContextStream, doc_id: str) -> dict[str, str]:
    doc = next(d for d in stream.documents if d.doc_id == doc_id)
    return {"part": doc.part, "title": doc.title}


def _cost(now, before, wall: float) -> dict[str, float]:
    return {"calls": now.calls - before.calls, "prompt_tokens": now.prompt_tokens - before.prompt_tokens,
            "output_tokens": now.output_tokens - before.output_tokens,
            "model_seconds": round(now.seconds - before.seconds, 2), "memo_hits": now.memo_hits - before.memo_hits,
            "wall_seconds": round(wall, 2)}


def _kinds(stream: ContextStream) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for q in stream.questions:
        kinds[q.kind] = kinds.get(q.kind, 0) + 1
    return kinds


def _score(result: dict[str, Any], reference: dict[str, str], stream: ContextStream) -> None:
    """Hit rate, wrong reuses against ``off``'s answers, and accuracy against gold, before and after the edits."""
    n = len(stream.questions)
    free = [k for k, calls in result["paid_calls"].items() if calls == 0]
    reused = [k for k, how in result["served_by"].items() if how in ("reuse", "cache")]
    asked = {q.key: q.question for q in stream.questions}
    wrong = [k for k in reused if not answers_agree(result["answers"][k], reference[k], asked[k])]
    correct = [float(any(contains_match(result["answers"][q.key] or "", g) for g in q.gold)) for q in stream.questions]
    new_gold = {k: g for edit in stream.edits for k, g in edit.new_gold.items()}
    after = [float(any(contains_match(result["answers_after_edits"][q.key] or "", g)
                       for g in new_gold.get(q.key, q.gold))) for q in stream.questions]
    kinds_wrong: dict[str, int] = {}
    for q in stream.questions:
        if q.key in wrong:
            kinds_wrong[q.kind] = kinds_wrong.get(q.kind, 0) + 1
    result.update(questions=n, hits=len(free), hit_rate=len(free) / n, reused=len(reused),
                  wrong_reuses=len(wrong), wrong_reuse_rate=len(wrong) / n,
                  wrong_per_reuse=(len(wrong) / len(reused)) if reused else None, wrong_by_kind=kinds_wrong,
                  accuracy=float(np.mean(correct)), accuracy_after_edits=float(np.mean(after)),
                  correct=correct, correct_after_edits=after)


def accuracy_interval(result: dict[str, Any], reference: dict[str, Any]) -> list[float] | None:
    """The paired bootstrap 95% interval of ``result``'s accuracy minus ``reference``'s, in points."""
    if result is reference:
        return None
    low, high = paired_bootstrap_ci(result["correct"], reference["correct"])
    return [100 * low, 100 * high]
