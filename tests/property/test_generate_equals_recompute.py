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


def seeded_db(**options) -> tuple[dm.Database, dm.Table, dm.Table]:
    """A database with one question and one document, and its two tables."""
    db = scripted_db(**options)
    questions = db.table("questions", key="qid", columns=QUESTIONS)
    docs = db.table("docs", key="doc_id", columns=DOCS)
    questions.upsert({"qid": "w", "question": "When was Ada born?"})
    docs.upsert({"doc_id": "z", "title": "Z", "text": "Ada lived in London."})
    return db, questions, docs


def apply_step(step: tuple, questions: dm.Table, docs: dm.Table) -> None:
    if step[0] == "doc":
        docs.upsert({"doc_id": step[1], "title": step[1].upper(), "text": step[2]})
    elif step[0] == "drop_doc":
        docs.delete(step[1])
    elif step[0] == "question":
        questions.upsert({"qid": step[1], "question": step[2]})
    else:
        questions.delete(step[1])


def from_scratch(questions: dm.Table, docs: dm.Table, build_views, **options) -> dict[str, list[dict]]:
    tables = {"questions": ("qid", QUESTIONS, questions.rows()), "docs": ("doc_id", DOCS, docs.rows())}
    return recompute_from_scratch(tables, build_views, **options)[0]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=10))
def test_generate_views_equal_recompute(steps):
    db, questions, docs = seeded_db()
    build(db)
    for step in steps:
        apply_step(step, questions, docs)
        db.maintain()
        for name, rows in from_scratch(questions, docs, build).items():
            assert db.view(name).rows().rows == rows, f"view {name} diverged after {step}"
    db.close()


PHRASES = ("in 1815", "in London")  # few answers, so a changed prompt often keeps its answer


def build_verified(db: dm.Database) -> None:
    """The exact strategies on a backend that scores drafts: verify (no blend here: exact) and regenerate."""
    questions, docs = db.table("questions"), db.table("docs")
    db.generate("verify_all", prompt="Answer from the documents.", context=questions, data_source=docs,
                strategy="verify")
    db.generate("verify_top2", prompt="Answer from the documents.", context=questions, data_source=docs, retrieve=2,
                strategy="verify")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=8))
def test_verified_views_equal_recompute_and_keep_exactly_the_unchanged_answers(steps):
    from deltamem.llm.scripted import ScriptedLLM

    db, questions, docs = seeded_db(llm=ScriptedLLM(verifies=True, phrases=PHRASES))
    build_verified(db)
    for step in steps:
        before = {name: {r["qid"]: r["answer"] for r in db.view(name).rows(fresh=True).rows} for name in db.views()}
        version = db.version
        apply_step(step, questions, docs)
        db.maintain()
        expected = from_scratch(questions, docs, build_verified, llm=ScriptedLLM(phrases=PHRASES))
        for name, rows in expected.items():
            assert db.view(name).rows().rows == rows, f"view {name} diverged after {step}"
            after = {r["qid"]: r["answer"] for r in rows}
            for d in db.store.get_decisions(name):
                if d.version != db.version or db.version == version:  # a step that changed nothing made no version
                    continue
                if not any(v in d.reason for v in ("; kept", "; it changed")):
                    continue  # not a verification (a memo hit has no token ids to verify: it regenerates)
                qid = d.key.strip('"')
                # an answer is kept by verification exactly when a full recompute gives it unchanged
                assert (d.strategy == "verify") == (before[name].get(qid) == after.get(qid)), (name, d)
                assert d.calls == 1 and (d.output_tokens == 0) == (d.strategy == "verify")
    db.close()
