"""Sharded ``LLM_GENERATE`` views: any sequence of changes, rows moving between partitions (and so between shards)
included, leaves a view in shards equal to the same view built from scratch, in shards and unsharded, and pays for
exactly the LLM calls and embeddings the unsharded view pays for."""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deltamem as dm
from deltamem.llm.embedding_runs import is_embedding_operator
from deltamem.shards import parent_view
from tests.helpers import recompute_from_scratch, scripted_db

QUESTIONS = {"qid": "text", "question": "text", "part": "text"}
DOCS = {"doc_id": "text", "text": "text", "part": "text"}
PART = st.sampled_from("abc")
SENTENCE = st.sampled_from(["Ada was born in 1815.", "Ada lived in London.", "Alan studied at Cambridge.",
                            "Grace served in the navy.", "Tea is a drink."])
QUESTION = st.sampled_from(["When was Ada born?", "Where did Alan study?", "What did Grace do?"])
STEP = st.one_of(
    st.tuples(st.just("doc"), st.sampled_from("defg"), SENTENCE, PART),
    st.tuples(st.just("drop_doc"), st.sampled_from("defg")),
    st.tuples(st.just("question"), st.sampled_from("xyz"), QUESTION, PART),
    st.tuples(st.just("drop_question"), st.sampled_from("xyz")),
)


def builder(shards: int):
    def build(db: dm.Database) -> None:
        questions, docs = db.table("questions"), db.table("docs")
        db.generate("all_docs", prompt="Answer from the documents.", context=questions, data_source=docs,
                    partition="part", strategy="regenerate", shards=shards)
        db.generate("top2_skip", prompt="Answer from the documents.", context=questions, data_source=docs,
                    partition="part", retrieve=2, strategy="skip", shards=shards)
    return build


def seeded(shards: int) -> tuple[dm.Database, dm.Table, dm.Table]:
    db = scripted_db()
    questions = db.table("questions", key="qid", columns=QUESTIONS)
    docs = db.table("docs", key="doc_id", columns=DOCS)
    questions.upsert({"qid": "w", "question": "When was Ada born?", "part": "a"})
    docs.upsert({"doc_id": "z", "text": "Ada lived in London.", "part": "b"})
    builder(shards)(db)
    return db, questions, docs


def apply_step(step: tuple, questions: dm.Table, docs: dm.Table) -> None:
    if step[0] == "doc":
        docs.upsert({"doc_id": step[1], "text": step[2], "part": step[3]})
    elif step[0] == "drop_doc":
        docs.delete(step[1])
    elif step[0] == "question":
        questions.upsert({"qid": step[1], "question": step[2], "part": step[3]})
    else:
        questions.delete(step[1])


def paid(db: dm.Database) -> dict[tuple[str, str], int]:
    """Per view (a shard's under its view): the LLM calls and the embeddings paid so far. A question that moves to
    another shard is asked there again, and when its prompt is unchanged the memo answers it: free, but on the ledger
    (as ``memo``) where the unsharded view, seeing an update to an identical prompt, asks nothing."""
    return dict(Counter((parent_view(entry.view), "embedding" if is_embedding_operator(entry.operator) else "llm")
                        for entry in db.store.get_ledger() if entry.outcome == "paid"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=10), shards=st.sampled_from([2, 3]))
def test_sharded_views_equal_recompute_and_pay_the_calls_unsharded_views_pay(steps, shards):
    sharded, questions, docs = seeded(shards)
    unsharded, plain_questions, plain_docs = seeded(1)
    for step in steps:
        apply_step(step, questions, docs)
        apply_step(step, plain_questions, plain_docs)
        sharded.maintain()
        unsharded.maintain()
        tables = {"questions": ("qid", QUESTIONS, questions.rows()), "docs": ("doc_id", DOCS, docs.rows())}
        for build in (builder(shards), builder(1)):
            for name, rows in recompute_from_scratch(tables, build)[0].items():
                assert sharded.view(name).rows().rows == rows, f"view {name} diverged after {step}"
        assert paid(sharded) == paid(unsharded), step
    assert sharded.views() == unsharded.views() == ["all_docs", "top2_skip"]
    sharded.close()
    unsharded.close()
