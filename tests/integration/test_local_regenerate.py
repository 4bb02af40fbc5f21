"""Regenerating on the real local model (DESIGN.md §3): KV reuse of the shared prompt prefix plus re-scoring the old
answer as a draft gives, token for token, what a from-scratch greedy call gives.

A 2Wiki question is asked over its ten paragraphs (~1,100-1,400 prompt tokens); then the documents change (a sentence in
a middle paragraph, the sentence holding the answer, a deleted paragraph, an appended paragraph, nothing) and the answer
is regenerated with ``cache_key`` + ``draft``. Every from-scratch answer is computed once and reused across asserts;
short prompts cover max_tokens, stop strings and rejected drafts cheaply.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pytest

from deltamem.bench.datasets import Paragraph, Question, default_data_dir, load_questions
from deltamem.llm.base import Completion, CompletionRequest, Message
from deltamem.llm.local import LocalLLM

pytestmark = pytest.mark.integration

NUM_QUESTIONS = 5
MAX_TOKENS = 24
# Every edit needs a from-scratch reference (~3.5 s for a 700-1,000 token prompt on 2 cores, ~5 s up to 1,300), so
# the file keeps to the shorter 2Wiki prompts to stay within about three minutes.
MAX_PROMPT_TOKENS = 1000
OTHER_NAME, OTHER_DATE = "Henrietta Vogelsang", "3 March 1777"


@dataclass(frozen=True)
class Outcome:
    """One regenerate call next to its from-scratch reference, for the summary."""

    question: int
    edit: str
    reference: Completion
    regenerated: Completion
    draft_len: int

    @property
    def fully_accepted(self) -> bool:
        return self.regenerated.output_tokens == 0

    @property
    def steps_saved(self) -> int:
        return self.reference.output_tokens - self.regenerated.output_tokens


OUTCOMES: list[Outcome] = []


# -- building prompts and edits ----------------------------------------------------------------------------------


def rag_request(paragraphs: Sequence[Paragraph], question: str, max_tokens: int = MAX_TOKENS) -> CompletionRequest:
    docs = "\n\n".join(f"[{i + 1}] {p.title}: {p.text}" for i, p in enumerate(paragraphs))
    content = f"Documents:\n{docs}\n\nQuestion: {question}\nAnswer with a short phrase."
    return CompletionRequest((Message("user", content),), max_tokens=max_tokens)


def edits(q: Question, spare: Paragraph) -> dict[str, tuple[Paragraph, ...]]:
    """The five document changes, each applied to the original paragraphs."""
    paras = q.paragraphs
    supporting = {title for title, _ in q.supporting_facts}
    # A middle paragraph that does not support the answer, and a later one to delete.
    others = sorted((i for i, p in enumerate(paras) if p.title not in supporting), key=lambda i: abs(i - 4.5))
    middle, deleted = others[0], max(others[1:3])
    changed = list(paras[middle].sentences)
    changed[-1] = changed[-1].rstrip(". ") + ", according to a later revision."
    # The first sentence holding the answer, with the answer swapped for another name (or date).
    hits = [(i, j) for i, p in enumerate(paras) for j, s in enumerate(p.sentences) if q.answer in s]
    hits.sort(key=lambda hit: paras[hit[0]].title not in supporting)
    ai, aj = hits[0]
    swapped = list(paras[ai].sentences)
    swapped[aj] = swapped[aj].replace(q.answer, OTHER_DATE if any(c.isdigit() for c in q.answer) else OTHER_NAME)
    return {
        "none": paras,
        "middle_sentence": paras[:middle] + (replace(paras[middle], sentences=tuple(changed)),) + paras[middle + 1 :],
        "answer_sentence": paras[:ai] + (replace(paras[ai], sentences=tuple(swapped)),) + paras[ai + 1 :],
        "delete_paragraph": paras[:deleted] + paras[deleted + 1 :],
        "append_paragraph": paras + (spare,),
    }


@pytest.fixture(scope="module")
def questions(local_llm) -> list[Question]:
    """The first questions whose answer is a span of some paragraph (so it can be swapped), not yes/no, and whose
    prompt is at most MAX_PROMPT_TOKENS."""
    found = load_questions(default_data_dir() / "2wikimultihopqa" / "dev_000_099.json")
    usable = [
        q for q in found
        if q.answer.lower() not in ("yes", "no")
        and any(q.answer in s for p in q.paragraphs for s in p.sentences)
        and len(local_llm.encode_chat(rag_request(q.paragraphs, q.question).messages)) <= MAX_PROMPT_TOKENS
    ]
    assert len(usable) > NUM_QUESTIONS
    return usable


# -- helpers -----------------------------------------------------------------------------------------------------


def fork_entry(llm: LocalLLM, source_key: str, key: str, token_ids: list[int]) -> None:
    """Copy the KV entry stored under ``source_key`` (which covers a prefix of ``token_ids``) to ``key``, so every
    edit starts from the original prompt's cache. A query one token longer reuses the whole stored entry."""
    match = llm.kv_cache.match(source_key, token_ids + [-1])
    assert match is not None
    llm.kv_cache.put(key, token_ids[: match.num_reused], match.cache)


def explain_mismatch(llm: LocalLLM, request: CompletionRequest, want: Completion, got: Completion) -> str:
    """Where two outputs part, with the from-scratch logit margin there (a near-tie can flip under float rounding)."""
    i = next((k for k, (a, b) in enumerate(zip(want.output_ids, got.output_ids)) if a != b),
             min(len(want.output_ids), len(got.output_ids)))
    prompt = llm.encode_chat(request.messages)
    logits = llm.forward(prompt + list(want.output_ids[:i])).logits[-1]
    top = logits.topk(2)
    return (
        f"outputs diverge at token {i}: from scratch {want.output_ids[i:i + 3]} {want.text!r}, "
        f"regenerated {got.output_ids[i:i + 3]} {got.text!r}; from-scratch top-2 logits {top.values.tolist()} "
        f"(ids {top.indices.tolist()}, margin {float(top.values[0] - top.values[1]):.2e})"
    )


def assert_same_output(llm: LocalLLM, request: CompletionRequest, want: Completion, got: Completion) -> None:
    if (got.output_ids, got.text) != (want.output_ids, want.text):
        pytest.fail(explain_mismatch(llm, request, want, got))
    assert got.finish_reason == want.finish_reason


def scored_draft_len(draft: Sequence[int], max_tokens: int) -> int:
    # The last output token is never fed back, so at most max_tokens - 1 draft tokens are scored.
    return min(len(draft), max_tokens - 1)


# -- the 2Wiki edits ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(NUM_QUESTIONS))
def test_regenerating_after_an_edit_equals_a_from_scratch_answer(local_llm, questions, index):
    llm, q = local_llm, questions[index]
    base_key = f"regen/{q.qid}"
    base_request = rag_request(q.paragraphs, q.question)
    base_prompt = llm.encode_chat(base_request.messages)
    base = llm.complete(base_request, cache_key=base_key)  # nothing stored yet: a from-scratch call
    assert (base.reused_tokens, base.prompt_tokens) == (0, len(base_prompt))
    assert len(base.output_ids) == base.output_tokens > 0

    spare = questions[index + 1].paragraphs[0]
    for edit, paragraphs in edits(q, spare).items():
        request = rag_request(paragraphs, q.question)
        prompt = llm.encode_chat(request.messages)
        reference = base if edit == "none" else llm.complete(request)  # fresh, no cache
        assert reference.reused_tokens == 0 and reference.prompt_tokens == len(prompt)

        key = f"{base_key}/{edit}"
        fork_entry(llm, base_key, key, base_prompt + list(base.output_ids))
        got = llm.complete(request, cache_key=key, draft=base.output_ids)
        assert_same_output(llm, request, reference, got)

        shared = next((i for i, (a, b) in enumerate(zip(base_prompt, prompt)) if a != b), len(prompt))
        assert got.reused_tokens == min(shared, len(prompt) - 1) > 0
        assert got.prompt_tokens + got.reused_tokens == reference.prompt_tokens + scored_draft_len(
            base.output_ids, request.max_tokens
        )
        assert 0 <= got.output_tokens <= reference.output_tokens
        OUTCOMES.append(Outcome(index, edit, reference, got, len(base.output_ids)))
    llm.kv_cache.clear()  # ~45 KB a token, ~40 MB an entry; the next question uses keys of its own


def test_summary_of_drafts_accepted_and_time_saved():
    assert OUTCOMES, "run this file whole: the summary reads the outcomes of the parametrized edits above it"
    edits_done = sorted({o.edit for o in OUTCOMES})
    accepted = sum(o.fully_accepted for o in OUTCOMES)
    saved = sum(o.steps_saved for o in OUTCOMES)
    assert accepted > 0 and saved > 0, "re-scoring the old answer never saved a decode step"
    print(f"\n{len(OUTCOMES)} regenerations over {len({o.question for o in OUTCOMES})} questions: "
          f"draft fully accepted {accepted}, decode steps saved {saved} of "
          f"{sum(o.reference.output_tokens for o in OUTCOMES)}")
    for edit in edits_done:
        mine = [o for o in OUTCOMES if o.edit == edit]
        # An unchanged prompt's reference is the original call, which also paid for storing its cache.
        scratch = statistics.mean(o.reference.seconds for o in mine)
        print(f"  {edit:17s} draft accepted {sum(o.fully_accepted for o in mine)}/{len(mine)}, "
              f"steps saved {sum(o.steps_saved for o in mine):3d}, mean seconds from scratch {scratch:5.2f}, "
              f"regenerated {statistics.mean(o.regenerated.seconds for o in mine):5.2f}")
    # An unchanged prompt's old answer is its greedy answer, so it is always accepted whole.
    assert all(o.fully_accepted for o in OUTCOMES if o.edit == "none")
    assert saved > 0


# -- cheap edge cases on short prompts ---------------------------------------------------------------------------


def chat(text: str, max_tokens: int = 16, stop: tuple[str, ...] = ()) -> CompletionRequest:
    return CompletionRequest((Message("user", text),), max_tokens=max_tokens, stop=stop)


def test_without_key_or_draft_the_call_is_unchanged_and_reports_its_ids(local_llm):
    request = chat("Name three primary colors.")
    plain = local_llm.complete(request)
    assert plain.output_ids == tuple(local_llm.decode(local_llm.encode_chat(request.messages), 16).ids)
    assert plain.output_tokens == len(plain.output_ids) and plain.reused_tokens == 0
    assert local_llm.count_tokens(plain.text) == plain.output_tokens


def test_a_draft_longer_than_max_tokens_is_cut(local_llm):
    long_request = chat("Write a long story about a dragon.", max_tokens=20)
    draft = local_llm.complete(long_request).output_ids
    short = chat("Write a long story about a dragon.", max_tokens=6)
    reference = local_llm.complete(short)
    got = local_llm.complete(short, draft=draft)  # a draft without a cache key: scored on a full prefill
    assert_same_output(local_llm, short, reference, got)
    assert got.finish_reason == "length" and len(got.output_ids) == 6
    assert got.output_tokens == 0 and got.prompt_tokens == reference.prompt_tokens + 5


def test_a_stop_string_inside_the_accepted_draft_ends_the_output_there(local_llm):
    request = chat("Name three primary colors.")
    full = local_llm.complete(request)
    stop = full.text.split()[len(full.text.split()) // 2]
    stopped = chat("Name three primary colors.", stop=(f" {stop}",))
    reference = local_llm.complete(stopped)
    assert reference.finish_reason == "stop" and len(reference.output_ids) < len(full.output_ids)
    got = local_llm.complete(stopped, cache_key="edge/stop", draft=full.output_ids)
    assert_same_output(local_llm, stopped, reference, got)
    assert got.output_tokens == 0  # everything came from the draft


def test_a_wrong_draft_costs_a_full_decode_and_changes_nothing(local_llm):
    request = chat("What is the capital of France?")
    reference = local_llm.complete(request)
    wrong = [t + 1 for t in reference.output_ids]
    got = local_llm.complete(request, cache_key="edge/wrong", draft=wrong)
    assert_same_output(local_llm, request, reference, got)
    assert got.output_tokens == reference.output_tokens  # rejected at the first token


def test_the_stored_cache_after_a_diverged_draft_is_reused_exactly(local_llm):
    before = chat("Answer briefly: what is the largest planet in the solar system?")
    after = chat("Answer briefly: what is the smallest planet in the solar system?")
    key = "edge/planets"
    old = local_llm.complete(before, cache_key=key)
    assert key in local_llm.kv_cache
    reference = local_llm.complete(after)
    new = local_llm.complete(after, cache_key=key, draft=old.output_ids)
    assert_same_output(local_llm, after, reference, new)
    assert 0 < new.reused_tokens < new.prompt_tokens + new.reused_tokens
    # The entry now covers the new prompt and output (the rejected draft tail cropped away): asking again reuses all
    # but the last prompt token and accepts the whole draft.
    hits = local_llm.kv_cache.num_hits
    again = local_llm.complete(after, cache_key=key, draft=new.output_ids)
    assert_same_output(local_llm, after, reference, again)
    assert local_llm.kv_cache.num_hits == hits + 1
    assert again.reused_tokens == len(local_llm.encode_chat(after.messages)) - 1
    assert again.output_tokens == 0
