"""``deltamem bench kv-reuse``: KV reused beyond the prefix against prefix-only reuse, after an edit early in the prompt.

    deltamem bench kv-reuse --questions 30

For each 2Wiki/HotpotQA question the prompt of ``deltamem bench edit-stream`` (all ten paragraphs) is prefilled
exactly and answered; then one sentence in the first third of the prompt is edited (a number shifted, or a clause
added) and the new prompt is prefilled twice on top of the exact prefix KV: computing every token after the first
changed one (what prefix caching gives), and blending (``deltamem.llm.kv_blend``: the old KV reused after the edit,
re-rotated, with a share recomputed). Reported: the prefill seconds of both, the share of answers that blending
changed against the exact prefill (both decoded greedily), and how verify-on-blend (``complete(..., blend=True)``)
judged the old answer against what the exact prefill says. With ``--disk-dir``, also the time to load a 1,500-token
prompt's KV from the chunk store on disk against computing it.
"""

from __future__ import annotations

import copy
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from deltamem.bench.datasets import Question, load_questions
from deltamem.bench.edit_stream import PROMPT, _alter, paragraphs_of
from deltamem.errors import ConfigError
from deltamem.llm.base import CompletionRequest, Message
from deltamem.llm.kv_blend import aligned_spans, spans_from_cache
from deltamem.memory.kvcache import KVMatch, common_prefix_length, crop_cache

MAX_TOKENS = 24


def request_for(question: Question, paragraphs: dict[str, list[str]]) -> CompletionRequest:
    """The edit-stream benchmark's prompt for one question (``GenerateOperator.build_request``'s layout)."""
    documents = "\n".join(f"[{i}] {title}: {' '.join(s.strip() for s in sentences)}"
                          for i, (title, sentences) in enumerate(paragraphs.items(), start=1))
    user = f"Documents:\n{documents}\n\nQuestion: {question.question}\nAnswer briefly."
    return CompletionRequest((Message("system", PROMPT), Message("user", user)), MAX_TOKENS)


def _early_edit(paragraphs: dict[str, list[str]], rng: random.Random) -> dict[str, list[str]]:
    """The paragraphs with one sentence of the first third altered."""
    edited = {title: list(sentences) for title, sentences in paragraphs.items()}
    titles = list(edited)[: max(1, len(edited) // 3)]
    title = rng.choice(titles)
    i = rng.randrange(len(edited[title]))
    edited[title][i] = _alter(edited[title][i], rng)
    return edited


def _greedy(llm: Any, logits: Any, cache: Any, max_tokens: int) -> tuple[int, ...]:
    """Greedy decoding on from a prefill's last logits (EOS ends it)."""
    ids: list[int] = []
    token = int(logits[-1].argmax())
    while token not in llm._eos_ids and len(ids) < max_tokens:
        ids.append(token)
        if len(ids) == max_tokens:
            break
        token = int(llm.forward([token], cache).logits[-1].argmax())
    return tuple(ids)


def _timed(run: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = run()
    return result, time.perf_counter() - started


def run_kv_reuse_bench(*, data_file: Path, num_questions: int, seed: int, llm: Any,
                       progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Blend against prefix-only reuse on ``num_questions`` early edits, on the local model ``llm``."""
    questions = load_questions(data_file)[:num_questions]
    if not questions:
        raise ConfigError(f"{data_file} holds no questions")
    rng = random.Random(seed)
    rows = []
    for n, question in enumerate(questions):
        paragraphs = paragraphs_of(question)
        old_request, new_request = request_for(question, paragraphs), request_for(question, _early_edit(paragraphs, rng))
        old_ids, new_ids = llm.encode_chat(old_request.messages), llm.encode_chat(new_request.messages)
        old = llm.forward(old_ids)
        old_answer = _greedy(llm, old.logits, copy.deepcopy(old.past_key_values), MAX_TOKENS)
        start = common_prefix_length(old_ids, new_ids)

        def prefix() -> Any:
            cache = copy.deepcopy(old.past_key_values)
            crop_cache(cache, start)
            return cache

        exact_cache = prefix()
        exact, exact_seconds = _timed(lambda: llm.forward(new_ids[start:], exact_cache, last_logits=1))
        spans = spans_from_cache(old.past_key_values, aligned_spans(old_ids, new_ids, start))
        blend_prefix = prefix()
        blended, blend_seconds = _timed(lambda: llm.blender.prefill(
            new_ids, blend_prefix, spans, recompute_share=llm.recompute_share,
            keep_from=len(new_ids) - 48, last_logits=1))
        exact_answer = _greedy(llm, exact.logits, exact.past_key_values, MAX_TOKENS)
        blend_answer = _greedy(llm, blended.logits, blended.cache, MAX_TOKENS)
        verdict = llm.blend_verdict(new_ids, MAX_TOKENS, (), old_answer, spans, KVMatch(start, prefix()))
        rows.append({
            "qid": question.qid, "prompt_tokens": len(new_ids), "first_changed": start,
            "prefix_only_seconds": exact_seconds, "blend_seconds": blend_seconds,
            "blend_recomputed": blended.num_recomputed, "blend_reused": blended.num_reused,
            "old_answer": llm._text(list(old_answer)), "exact_answer": llm._text(list(exact_answer)),
            "blend_answer": llm._text(list(blend_answer)), "blend_changed_answer": blend_answer != exact_answer,
            "answer_changed": exact_answer != old_answer, "draft_reproduced_on_blend": verdict.reproduced,
            "draft_margin_on_blend": verdict.margin,
        })
        if progress:
            progress("kv-reuse", n + 1, len(questions))
    return {"config": {"data": str(data_file), "questions": len(rows), "seed": seed, "llm": llm.model_id,
                       "recompute_share": llm.recompute_share, "blend_margin": llm.blend_margin},
            "summary": summarize(rows), "edits": rows}


def summarize(rows: Sequence[dict[str, Any]], margins: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)) -> dict[str, Any]:
    """The headline figures of a run, recomputable from its per-edit rows: per blend margin, how many old answers
    verify would keep on blended KV, and how many of those the exact prefill changed (false keeps)."""
    prefix_only = sum(r["prefix_only_seconds"] for r in rows)
    by_margin = {}
    for margin in margins:
        kept = [r for r in rows if r["draft_reproduced_on_blend"] and r["draft_margin_on_blend"] >= margin]
        by_margin[str(margin)] = {"kept": len(kept), "kept_but_exact_changed": sum(r["answer_changed"] for r in kept)}
    return {
        "prefix_only_seconds": prefix_only,
        "blend_seconds": sum(r["blend_seconds"] for r in rows),
        "blend_over_prefix_only": sum(r["blend_seconds"] for r in rows) / prefix_only if prefix_only else None,
        "blend_changed_answers": sum(r["blend_changed_answer"] for r in rows) / len(rows),
        "exact_changed_answers": sum(r["answer_changed"] for r in rows) / len(rows),
        "verify_by_margin": by_margin,
    }


def time_disk_load(llm: Any, question: Question, others: Sequence[Question], disk_dir: str | None,
                   target_tokens: int = 1500) -> dict[str, float]:
    """Seconds to load a ~``target_tokens`` prompt's KV from the chunk store on disk (a fresh store, so nothing is in
    memory) against computing it in one prefill."""
    from deltamem.memory.chunk_kv import ChunkKV, ChunkKVStore

    paragraphs = paragraphs_of(question)
    for other in others:
        if len(llm.encode_chat(request_for(question, paragraphs).messages)) >= target_tokens:
            break
        for title, sentences in paragraphs_of(other).items():
            paragraphs.setdefault(title, sentences)
    ids = llm.encode_chat(request_for(question, paragraphs).messages)[:target_tokens]
    result, compute_seconds = _timed(lambda: llm.forward(ids, last_logits=1))
    folder = disk_dir or tempfile.mkdtemp(prefix="deltamem-kv-")
    spans = spans_from_cache(result.past_key_values, [(0, 0, len(ids))])
    writer = ChunkKVStore(memory_bytes=0, disk_dir=folder)
    writer.put(llm.model_id, ids, ChunkKV(0, spans[0].keys, spans[0].values))
    reader = ChunkKVStore(memory_bytes=0, disk_dir=folder)  # a restarted process: nothing in memory
    loaded, load_seconds = _timed(lambda: reader.get(llm.model_id, ids))
    if loaded is None:
        raise ConfigError(f"the chunk store in {folder} lost the KV it was just given")
    return {"tokens": len(ids), "compute_seconds": compute_seconds, "load_seconds": load_seconds,
            "load_over_compute": load_seconds / compute_seconds}


__all__ = ["request_for", "run_kv_reuse_bench", "summarize", "time_disk_load"]
