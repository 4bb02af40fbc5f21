"""Any sequence of changes leaves sem_search and sem_search_many views equal to a from-scratch recompute, and
``View.search`` over a sem_index view equal to exact search over the view's rows."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deltamem as dm
from deltamem.relation import Relation
from tests.helpers import apply_doc_step, doc_steps, recompute_from_scratch, scripted_db
from tests.unit.test_search import assert_many_is_exact, assert_search_is_exact

KEYS = st.integers(min_value=0, max_value=4)
# Texts of a few words from a small vocabulary: scores take many values, and equal scores (ties broken by key order)
# are frequent. None is a row with no text, "" one whose vector is zero.
WORDS = st.sampled_from(["red", "apple", "sky", "tree", "blue"])
PHRASES = st.lists(WORDS, max_size=4).map(" ".join)
TEXTS = st.one_of(PHRASES, PHRASES, PHRASES, st.none())
QUERIES = st.lists(WORDS, min_size=1, max_size=3).map(" ".join)
STEP = st.one_of(  # upserts weigh more: rows must pile up for a delete to reach into a full top k
    st.tuples(st.just("upsert"), KEYS, TEXTS, st.sampled_from(["x", "y"])),
    doc_steps(KEYS, TEXTS, batch_size=4, max_days=2),
    st.tuples(st.just("query"), st.integers(min_value=0, max_value=3), QUERIES),
    st.tuples(st.just("unquery"), st.integers(min_value=0, max_value=3)),
)

DOCS = {"id": "int", "text": "text", "tag": "text"}
QUERY_COLUMNS = {"qid": "int", "query": "text"}


def build_views(db: dm.Database) -> None:
    docs, queries = db.table("docs"), db.table("queries")
    db.view("top", docs.sem_search("red apple", k=2, column="text"))
    db.view("filtered_top", docs.sem_filter("{text} is nice").sem_search("sky", k=3, column="text"))
    db.view("many", docs.sem_search_many(queries, k=2, column="text"))
    tight = docs.sem_search_many(queries, k=1, column="text")  # many small clusters: pruning at work
    db.view("many_tight", Relation(db, {**tight.plan, "radius": 0.05}))
    db.view("idx", docs.sem_index("text"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=14))
def test_search_views_equal_recompute(steps):
    clock = dm.ManualClock()
    db = scripted_db(clock=clock)
    docs = db.table("docs", key="id", columns=DOCS, ttl="3 days")
    queries = db.table("queries", key="qid", columns=QUERY_COLUMNS)
    build_views(db)
    for step in steps:
        if not apply_doc_step(db, docs, step, clock):  # a step on the standing queries
            if step[0] == "query":
                queries.upsert({"qid": step[1], "query": step[2]})
            else:
                queries.delete(step[1])
        db.maintain()
        expected, _calls = recompute_from_scratch(
            {"docs": ("id", DOCS, docs.rows()), "queries": ("qid", QUERY_COLUMNS, queries.rows())}, build_views)
        for name, rows in expected.items():
            assert db.view(name).rows().rows == rows, f"view {name} diverged after {step}"
        for query in ("apple", "red sky"):
            assert_search_is_exact(db.view("idx").search(query, 3), docs.rows(), query, 3)
    db.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    queries=st.lists(QUERIES, min_size=1, max_size=12),
    batches=st.lists(st.lists(st.tuples(st.integers(0, 9), TEXTS), min_size=1, max_size=4), min_size=1, max_size=8),
    radius=st.sampled_from([0.05, 0.4, 0.7, 1.2]),
    k=st.integers(min_value=1, max_value=3),
)
def test_cluster_pruning_never_changes_a_top_k(queries, batches, radius, k):
    """Many queries, rows arriving in batches after them: every skip the bound allows must be right."""
    db = scripted_db()
    docs = db.table("docs", key="id", columns=DOCS)
    table = db.table("queries", key="qid", columns=QUERY_COLUMNS)
    table.upsert([{"qid": i, "query": q} for i, q in enumerate(queries)])
    many = docs.sem_search_many(table, k=k, column="text")
    view = db.view("many", Relation(db, {**many.plan, "radius": radius}))
    for batch in batches:
        with db.batch():
            for key, text in batch:
                if text == "red":  # a delete now and then
                    docs.delete(key)
                else:
                    docs.upsert({"id": key, "text": text, "tag": "x"})
        assert_many_is_exact(view, docs, table, k)
    db.close()
