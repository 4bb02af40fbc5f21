"""``retrieve="graph"``: after any sequence of passage and question changes, every answer equals the answer built
from scratch over the final rows (its prompt too, by fingerprint), and the answer calls a change asks are exactly
those of the answers whose prompt a from-scratch build changes: the bound never skips an answer whose passages
moved, and no answer whose passages stayed is asked again."""

from __future__ import annotations

from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deltamem as dm
from deltamem.memory import graph_ppr
from tests.helpers import recompute_from_scratch, scripted_db

PASSAGES = {"pid": "text", "text": "text"}
QUESTIONS = {"qid": "text", "question": "text"}
# Four topics that share no entity, so the graph has parts a change cannot reach, and some that share a few.
SENTENCE = st.sampled_from([
    "Ada Lovelace was born in London.", "Ada Lovelace worked with Charles Babbage.", "Charles Babbage lived in London.",
    "Alan Turing studied at Cambridge.", "Alan Turing was born in Maida Vale.", "Cambridge lies in England.",
    "Grace Hopper served in the Navy.", "The Navy has Ships.", "Grace Hopper wrote Cobol.",
    "Marie Curie won the Nobel Prize.", "Pierre Curie married Marie Curie.", "Nobel Prize winners visit Stockholm.",
    "Lovelace wrote the first program.", "Tea is a drink.",
])
TEXT = st.lists(SENTENCE, min_size=1, max_size=2).map(" ".join)
QUESTION = st.sampled_from([
    "Where was Ada Lovelace born?", "Who worked with Charles Babbage?", "Where did Alan Turing study?",
    "What did Grace Hopper do?", "Whom did Pierre Curie marry?", "Is tea a drink?",
])
STEP = st.one_of(
    st.tuples(st.just("put"), st.sampled_from("abcdefghijkl"), TEXT),
    st.tuples(st.just("delete"), st.sampled_from("abcdefghijkl")),
    st.tuples(st.just("ask"), st.sampled_from("xyz"), QUESTION),
    st.tuples(st.just("unask"), st.sampled_from("xyz")),
)
ANSWERS = "1:llm_generate"


def build(db: dm.Database) -> None:
    db.generate("answers", prompt="Answer from the passages.", context=db.table("questions"),
                data_source=db.table("passages"), retrieve="graph", k=3, strategy="skip")


def prompts(needed: dict) -> dict[str, str]:
    return {key: h for (view, op, key), h in needed.items() if view == "answers" and op == ANSWERS}


def scratch(passages, questions):
    return recompute_from_scratch({"passages": ("pid", PASSAGES, passages.rows()),
                                   "questions": ("qid", QUESTIONS, questions.rows())}, build)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=16), subgraph=st.sampled_from([3, 6, graph_ppr.MAX_SUBGRAPH]))
def test_graph_answers_equal_a_recompute_and_a_change_asks_exactly_the_answers_whose_passages_moved(steps, subgraph):
    # A small subgraph leaves nodes with mass outside it, so the bound's gap test decides some changes.
    with mock.patch.object(graph_ppr, "MAX_SUBGRAPH", subgraph):
        _check(steps)


def _check(steps) -> None:
    db = scripted_db()
    passages = db.table("passages", key="pid", columns=PASSAGES)
    questions = db.table("questions", key="qid", columns=QUESTIONS)
    passages.upsert([{"pid": "z", "text": "Ada Lovelace lived in London."},
                     {"pid": "y", "text": "Alan Turing worked at Cambridge."}])
    questions.upsert({"qid": "w", "question": "Where did Ada Lovelace live?"})
    build(db)
    view = db.view("answers")
    view.rows(fresh=True)
    _rows, needed = scratch(passages, questions)
    before = prompts(needed)
    for step in steps:
        version = db.version
        if step[0] == "put":
            passages.upsert({"pid": step[1], "text": step[2]})
        elif step[0] == "delete":
            passages.delete(step[1])
        elif step[0] == "ask":
            questions.upsert({"qid": step[1], "question": step[2]})
        else:
            questions.delete(step[1])
        rows = view.rows(fresh=True).rows
        expected, needed = scratch(passages, questions)
        assert rows == expected["answers"], f"the answers diverged after {step}"
        now = prompts(needed)
        stored = {key: e.fingerprint for (op, key), e in db.store.get_all_state("answers").items() if op == ANSWERS}
        assert stored == now, f"a prompt diverged from the recompute's after {step}"
        asked = sorted(d.key for d in db.store.get_decisions("answers")
                       if d.version > version and d.strategy not in ("skip", "retract"))
        assert asked == sorted(key for key, h in now.items() if before.get(key) != h), step
        before = now
    db.close()
