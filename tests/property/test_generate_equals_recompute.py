"""LLM_GENERATE views: any sequence of CONTEXT and DATA_SOURCE changes leaves every exact strategy's view equal to a
from-scratch build, and skipping never costs a call that a from-scratch build would answer differently."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deltamem as dm
from tests.helpers import recompute_from_scratch, scripted_db

QUESTIONS = {"qid": "text", "question": "text"}
DOCS = {"doc_id": "text", "title": "text", "text": "text"}
SENTENCES = st.sampled_from([
    "Ada was born in 1815.", "Ada lived in London.", "Alan was born in 1912.", "Alan studied at Cambridge.",
    "Grace was born in 1906.", "Grace served in the navy.", "Tea is a drink.",
])
DOC_TEXT = st.lists(SENTENCES, min_size=1, max_size=3).map(" ".join)
QUESTION = st.sampled_from(["When was Ada born?", "Where did Alan study?", "What did Grace do?", "What is tea?"])

STEP = st.one_of(
    st.tuples(st.just("doc"), st.sampled_from("abcd"), DOC_TEXT),
    st.tuples(st.just("drop_doc"), st.sampled_from("abcd")),
    st.tuples(st.just("question"), st.sampled_from("xyz"), QUESTION),
    st.tuples(st.just("drop_question"), st.sampled_from("xyz")),
)


def build(db: dm.Database) -> None:
    """The exact strategies: skip on retrieval evidence, regenerate (a full recompute on the test backend)."""
    questions, docs = db.table("questions"), db.table("docs")
    db.generate("all_docs", prompt="Answer from the documents.", context=questions, data_source=docs,
                strategy="regenerate")
    db.generate("top2", prompt="Answer from the documents.", context=questions, data_source=docs, retrieve=2,
                strategy="regenerate")
    db.generate("top2_skip", prompt="Answer from the documents.", context=questions, data_source=docs, retrieve=2,
                strategy="skip")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=10))
def test_generate_views_equal_recompute(steps):
    db = scripted_db()
    questions = db.table("questions", key="qid", columns=QUESTIONS)
    docs = db.table("docs", key="doc_id", columns=DOCS)
    questions.upsert({"qid": "w", "question": "When was Ada born?"})
    docs.upsert({"doc_id": "z", "title": "Z", "text": "Ada lived in London."})
    build(db)
    for step in steps:
        if step[0] == "doc":
            docs.upsert({"doc_id": step[1], "title": step[1].upper(), "text": step[2]})
        elif step[0] == "drop_doc":
            docs.delete(step[1])
        elif step[0] == "question":
            questions.upsert({"qid": step[1], "question": step[2]})
        else:
            questions.delete(step[1])
        db.maintain()
        expected, _ = recompute_from_scratch(
            {"questions": ("qid", QUESTIONS, questions.rows()), "docs": ("doc_id", DOCS, docs.rows())}, build
        )
        for name, rows in expected.items():
            assert db.view(name).rows().rows == rows, f"view {name} diverged after {step}"
    db.close()
