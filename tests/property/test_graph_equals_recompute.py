"""``sem_graph``: after any sequence of passage inserts, edits and deletes the graph equals the graph built from the
final passages, and a change costs the extraction calls it must: 0 for a delete, 1 for a passage whose text
changed (its own), whatever the graph's size."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deltamem as dm
from deltamem.llm.embedding_runs import is_embedding_operator
from tests.helpers import recompute_from_scratch, scripted_db

PASSAGES = {"pid": "text", "text": "text"}
SENTENCE = st.sampled_from([
    "Ada Lovelace was born in London.", "Ada Lovelace worked with Charles Babbage.", "Charles Babbage lived in London.",
    "Alan Turing studied at Cambridge.", "Alan Turing was born in London.", "Grace Hopper served in the Navy.",
    "Lovelace wrote the first program.", "Tea is a drink.",
])
TEXT = st.lists(SENTENCE, min_size=1, max_size=3).map(" ".join)
STEP = st.one_of(
    st.tuples(st.just("put"), st.sampled_from("abcde"), TEXT),
    st.tuples(st.just("delete"), st.sampled_from("abcde")),
)


def build(db: dm.Database) -> None:
    db.view("graph", db.table("passages").sem_graph("{text}", synonym_threshold=0.6))


def extraction_calls(db: dm.Database) -> int:
    return sum(1 for e in db.store.get_ledger("graph") if not is_embedding_operator(e.operator))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=12))
def test_the_graph_equals_the_graph_of_the_final_passages_and_a_change_asks_only_its_own_extraction(steps):
    db = scripted_db()
    passages = db.table("passages", key="pid", columns=PASSAGES)
    passages.upsert({"pid": "z", "text": "Ada Lovelace lived in London."})
    build(db)
    graph = db.view("graph")
    graph.rows(fresh=True)
    for step in steps:
        before, asked = passages.get(step[1]), extraction_calls(db)
        if step[0] == "put":
            passages.upsert({"pid": step[1], "text": step[2]})
        else:
            passages.delete(step[1])
        rows = graph.rows(fresh=True).rows
        changed = step[0] == "put" and (before is None or before["text"] != step[2])
        assert extraction_calls(db) - asked == (1 if changed else 0), step
        expected, _ = recompute_from_scratch({"passages": ("pid", PASSAGES, passages.rows())}, build)
        assert rows == expected["graph"], f"the graph diverged after {step}"
    db.close()
