"""Verifying an old answer on blended KV, on the real local model: a draft kept on blended KV is the old answer and
says it is approximate; anything else is the exact regenerate, token for token what a from-scratch call gives; the
output's stored KV stays exact; and a chunk store on disk serves the blend after a restart."""

from __future__ import annotations


import pytest

from deltamem.bench.datasets import default_data_dir, load_questions
from deltamem.bench.kv_reuse import request_for
from deltamem.bench.edit_stream import paragraphs_of
from deltamem.memory.chunk_kv import ChunkKVStore
from deltamem.memory.kvcache import PromptKVCache

pytestmark = pytest.mark.integration

NUM_QUESTIONS = 4
MAX_PROMPT_TOKENS = 900


def sentences_of(paragraphs: dict[str, list[str]]) -> tuple[str, ...]:
    return tuple(s.strip() for sentences in paragraphs.values() for s in sentences if s.strip())


@pytest.fixture(scope="module")
def cases(local_llm):
    """(question, paragraphs, an irrelevant late edit of them, the answer swapped) for short 2Wiki prompts."""
    found = []
    for q in load_questions(default_data_dir() / "2wikimultihopqa" / "dev_000_099.json"):
        paragraphs = paragraphs_of(q)
        if q.answer.lower() in ("yes", "no") or len(
                local_llm.encode_chat(request_for(q, paragraphs).messages)) > MAX_PROMPT_TOKENS:
            continue
        supporting = {t for t, _i in q.supporting_facts}
        distractor = next((t for t in list(paragraphs)[:4] if t not in supporting), None)
        answer_at = next(((t, i) for t, i in q.supporting_facts if t in paragraphs and i < len(paragraphs[t])
                          and q.answer in paragraphs[t][i]), None)
        if distractor is None or answer_at is None:
            continue
        irrelevant = {t: list(s) for t, s in paragraphs.items()}
        irrelevant[distractor][0] = irrelevant[distractor][0].rstrip(". ") + ", according to a later source."
        swapped = {t: list(s) for t, s in paragraphs.items()}
        swapped[answer_at[0]][answer_at[1]] = swapped[answer_at[0]][answer_at[1]].replace(q.answer, "Henrietta Vogelsang")
        found.append((q, paragraphs, irrelevant, swapped))
        if len(found) == NUM_QUESTIONS:
            return found
    raise AssertionError("not enough short 2Wiki prompts with an answer span and an early distractor")


def verify(llm, q, before, after, key):
    """Answer ``before`` (exactly, keeping its KV under ``key``), then verify that answer against ``after``."""
    first = llm.complete(request_for(q, before), cache_key=key, attribute_to=sentences_of(before))
    stored_ids = llm.kv_cache.peek(key)[0]
    verified = llm.complete(request_for(q, after), cache_key=key, draft=first.output_ids, blend=True,
                            attribute_to=sentences_of(after))
    return first, stored_ids, verified


def test_a_kept_draft_is_the_old_answer_and_anything_else_is_exact(local_llm, cases):
    kept = 0
    for n, (q, paragraphs, irrelevant, swapped) in enumerate(cases):
        for label, after in (("irrelevant", irrelevant), ("swapped", swapped)):
            first, stored_ids, verified = verify(local_llm, q, paragraphs, after, f"verify/{n}/{label}")
            if not verified.exact:  # kept on blended KV: the old answer, and the stored KV is still the exact one
                kept += 1
                assert verified.output_ids == first.output_ids and verified.text == first.text
                assert verified.attribution is None and verified.output_tokens == 0
                assert verified.reused_tokens > 0
                assert local_llm.kv_cache.peek(f"verify/{n}/{label}")[0] == stored_ids
            else:
                scratch = local_llm.complete(request_for(q, after))
                assert (verified.output_ids, verified.text) == (scratch.output_ids, scratch.text), (q.qid, label)
    assert kept >= 1, "no irrelevant edit's answer was kept on blended KV"


def test_the_chunk_store_serves_a_blend_after_a_restart(local_llm, cases, tmp_path):
    q, paragraphs, irrelevant, _swapped = cases[0]
    saved = local_llm.kv_cache, local_llm.kv_store
    try:
        local_llm.kv_store = ChunkKVStore(64 * 2**20, disk_dir=tmp_path)
        local_llm.kv_cache = PromptKVCache(saved[0].max_bytes)
        first = local_llm.complete(request_for(q, paragraphs), cache_key="restart",
                                   attribute_to=sentences_of(paragraphs))
        local_llm.wait_for_kv_store()  # the writes run in the background
        assert list(tmp_path.iterdir())  # one file per sentence
        # A restarted process: no prompt KV in memory, a fresh store over the same folder.
        local_llm.kv_cache = PromptKVCache(saved[0].max_bytes)
        local_llm.kv_store = ChunkKVStore(64 * 2**20, disk_dir=tmp_path)
        verified = local_llm.complete(request_for(q, irrelevant), cache_key="restart", draft=first.output_ids,
                                      blend=True, attribute_to=sentences_of(irrelevant))
        stats = local_llm.kv_store.stats()
        assert stats["disk_hits"] > 0
        if verified.exact:
            assert verified.output_ids == local_llm.complete(request_for(q, irrelevant)).output_ids
        else:
            assert verified.output_ids == first.output_ids and verified.reused_tokens > 0
    finally:
        local_llm.kv_cache, local_llm.kv_store = saved
