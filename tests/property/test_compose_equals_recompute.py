"""LLM_GENERATE with DECOMPOSE: any sequence of CONTEXT and DATA_SOURCE changes leaves the view, its base answers and
every prompt equal to a from-scratch build, and each step asks exactly the calls whose prompt changed: a base only
when its documents or its question did, a composite only when its question or a base answer it read did."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import deltamem as dm
from deltamem.llm.scripted import ScriptedLLM
from tests.helpers import recompute_from_scratch, scripted_db

QUESTIONS = {"qid": "text", "question": "text"}
DOCS = {"doc_id": "text", "title": "text", "text": "text"}
BORN = ["When was {a} born?", "When was {b} born?"]
DECOMPOSE = {"Who was born first, {a} or {b}?": BORN, "Who was born last, {a} or {b}?": BORN}
COMPOSE, BASE = "1:llm_compose", "1:llm_compose/base"
PHRASES = ("in 1815", "in London")  # few answers, so a refreshed base often keeps its text

SENTENCES = st.sampled_from([
    "Ada was born in 1815.", "Ada lived in London.", "Alan was born in 1912.", "Alan studied at Cambridge.",
    "Grace was born in 1906.", "Grace served in the navy.", "Tea is a drink.",
])
DOC_TEXT = st.lists(SENTENCES, min_size=1, max_size=3).map(" ".join)
QUESTION = st.sampled_from([
    "Who was born first, Ada or Alan?", "who was born LAST, ada or grace", "Who was born first, Grace or Ada?",
    "Who was born last, Alan or Grace?", "When was Ada born?", "Where did Alan study?",
])
STEP = st.one_of(
    st.tuples(st.just("doc"), st.sampled_from("abcd"), DOC_TEXT),
    st.tuples(st.just("drop_doc"), st.sampled_from("abcd")),
    st.tuples(st.just("question"), st.sampled_from("wxyz"), QUESTION),
    st.tuples(st.just("drop_question"), st.sampled_from("wxyz")),
)


def build(db: dm.Database) -> None:
    """The exact strategies, over every document and over the 2 most similar sentences."""
    questions, docs = db.table("questions"), db.table("docs")
    for name, options in (("all_docs", {"strategy": "regenerate"}), ("top2", {"retrieve": 2, "strategy": "regenerate"}),
                          ("top2_skip", {"retrieve": 2, "strategy": "skip"})):
        db.generate(name, prompt="Answer.", context=questions, data_source=docs, decompose=DECOMPOSE, **options)


def apply_step(step: tuple, questions: dm.Table, docs: dm.Table) -> None:
    if step[0] == "doc":
        docs.upsert({"doc_id": step[1], "title": step[1].upper(), "text": step[2]})
    elif step[0] == "drop_doc":
        docs.delete(step[1])
    elif step[0] == "question":
        questions.upsert({"qid": step[1], "question": step[2]})
    else:
        questions.delete(step[1])


def fingerprints(db: dm.Database, view: str, op: str) -> dict[str, str]:
    return {key: e.fingerprint for (o, key), e in db.store.get_all_state(view).items() if o == op}


def asked(db: dm.Database, view: str, op: str, version: int) -> set[str]:
    """The calls ``op`` of ``view`` asked for at ``version`` (paid or answered by the memo)."""
    return {e.call_hash for e in db.store.get_ledger(view) if e.operator == op and e.version == version}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=10))
# A document edited around a sentence of the same text as another's: the prompt is unchanged, its chunks are not.
@example(steps=[("doc", "a", "Ada was born in 1815. Ada was born in 1815."),
                ("doc", "b", "Ada was born in 1815. Ada was born in 1815."), ("doc", "a", "Ada was born in 1815."),
                ("drop_doc", "b")])
def test_compose_views_equal_recompute_and_ask_only_the_calls_whose_prompt_changed(steps):
    db = scripted_db(llm=ScriptedLLM(phrases=PHRASES))
    questions = db.table("questions", key="qid", columns=QUESTIONS)
    docs = db.table("docs", key="doc_id", columns=DOCS)
    questions.upsert({"qid": "w", "question": "Who was born first, Ada or Alan?"})
    docs.upsert({"doc_id": "z", "title": "Z", "text": "Ada lived in London. Alan was born in 1912."})
    build(db)
    db.maintain()
    for step in steps:
        before = {(name, op): fingerprints(db, name, op) for name in db.views() for op in (COMPOSE, BASE)}
        version = db.version
        apply_step(step, questions, docs)
        db.maintain()
        tables = {"questions": ("qid", QUESTIONS, questions.rows()), "docs": ("doc_id", DOCS, docs.rows())}
        expected, needed = recompute_from_scratch(tables, build, llm=ScriptedLLM(phrases=PHRASES))
        for name, rows in expected.items():
            assert db.view(name).rows().rows == rows, f"view {name} diverged after {step}"
            state = db.store.get_all_state(name)
            assert {(op, key): e.fingerprint for (op, key), e in state.items()} == {
                (op, key): h for (view, op, key), h in needed.items() if view == name}, f"{name}: prompts diverged"
            if db.version == version:
                continue  # the step changed nothing and made no version
            composites = {key: e for (op, key), e in state.items() if op == COMPOSE}
            changed = {e.fingerprint for key, e in composites.items() if e.value["pattern"] is not None
                       and before[(name, COMPOSE)].get(key) != e.fingerprint}
            assert asked(db, name, COMPOSE, db.version) == changed, f"{name}: composition calls after {step}"
            moved = {h for key, h in fingerprints(db, name, BASE).items() if before[(name, BASE)].get(key) != h}
            assert asked(db, name, BASE, db.version) == moved, f"{name}: base calls after {step}"
    db.close()
