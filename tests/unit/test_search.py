"""Vector search: the sem_index view and its HNSW index, the standing sem_search, and clustered sem_search_many."""

from __future__ import annotations

import numpy as np
import pytest

import deltamem as dm
from deltamem.changes import encode_key, key_order
from deltamem.errors import SchemaError
from deltamem.llm.scripted import HashingEmbedder
from deltamem.memory.vector_index import SearchIndexes, VectorIndex
from deltamem.operators.search_many import SemSearchMany
from deltamem.operators.vectors import similarities
from deltamem.relation import build_operators
from tests.helpers import scripted_db

COLUMNS = {"id": "int", "text": "text", "tag": "text"}
TEXTS = ["red apple pie", "green apple", "blue sky at night", "apple tree in red soil", "sky high", "deep blue sea",
         "a pie of cherries", "night train to the sea", "the green tree", "red night sky"]


def docs_table(db: dm.Database, **options) -> dm.Table:
    docs = db.table("docs", key="id", columns=COLUMNS, **options)
    docs.upsert([{"id": i, "text": t, "tag": "a"} for i, t in enumerate(TEXTS)])
    return docs


def exact_top(rows: list[dict], query: str, k: int, column: str = "text") -> list[tuple[object, float]]:
    """The exact top k (key, score) of ``rows`` for ``query`` on the test embedder, ties by key order."""
    embed = HashingEmbedder().embed
    scored = [r for r in rows if r.get(column) is not None]
    if not scored:
        return []
    sims = similarities(embed([str(r[column]) for r in scored]), embed([query]))[:, 0]
    pairs = [(r["id"], float(s)) for r, s in zip(scored, sims, strict=True)]
    return sorted(pairs, key=lambda p: (-p[1], key_order(encode_key(p[0]))))[:k]


def assert_search_is_exact(hits: list[dict], rows: list[dict], query: str, k: int) -> None:
    """Scores equal the exact top k's, and each hit's score is its row's exact score (ties may pick either row)."""
    expected = exact_top(rows, query, len(rows))
    exact = dict(expected)
    assert [round(h["score"], 5) for h in hits] == [round(s, 5) for _k, s in expected[:k]]
    assert all(abs(exact[h["id"]] - h["score"]) < 1e-5 for h in hits)


# --- sem_index and View.search -----------------------------------------------------------------------------------


def test_search_equals_exact_search_on_small_data():
    db = scripted_db()
    docs = docs_table(db)
    index = db.view("idx", docs.sem_index("text"))
    db.maintain()
    for query in ["red apple", "blue sea at night", "tree"]:
        hits = index.search(query, 4)
        assert len(hits) == 4
        assert all(set(h) == {"id", "text", "tag", "score"} for h in hits)
        assert_search_is_exact(hits, docs.rows(), query, 4)


def test_index_graph_search_finds_the_exact_top_k_on_distinct_vectors():
    db = scripted_db()
    docs = docs_table(db)
    db.view("idx", docs.sem_index("text"))
    db.maintain()
    inputs, operators = db._view_plan("idx")
    graph = SearchIndexes(db.store, exact_below=0)  # always the HNSW graph, never a scan
    for query in ["red apple", "blue sea at night"]:
        hits = graph.search("idx", inputs, operators, db.embedder, query, 3, runner=db.runner)
        assert_search_is_exact(hits, docs.rows(), query, 3)


def test_index_stays_fresh_across_inserts_updates_and_deletes_without_a_rebuild():
    db = scripted_db()
    docs = docs_table(db)
    index = db.view("idx", docs.sem_index("text"))
    db.maintain()
    index.search("apple", 3)
    cached = db._search_indexes._indexes["idx"]
    docs.upsert({"id": 20, "text": "violet apple", "tag": "b"})
    docs.upsert({"id": 2, "text": "apple apple", "tag": "a"})
    docs.delete(1)
    db.maintain()
    hits = index.search("apple", 3)
    assert db._search_indexes._indexes["idx"] is cached and cached.version == index.version  # patched in place
    assert hits[0]["id"] == 2 and 1 not in {h["id"] for h in hits} and 20 in {h["id"] for h in hits}
    assert_search_is_exact(hits, docs.rows(), "apple", 3)
    rebuilt = SearchIndexes(db.store).search("idx", *db._view_plan("idx"), db.embedder, "apple", 3, runner=db.runner)
    assert rebuilt == hits


def test_update_that_keeps_the_indexed_column_costs_no_embedding():
    db = scripted_db()
    docs = docs_table(db)
    index = db.view("idx", docs.sem_index("text"))
    db.maintain()
    embedded = db.embedder.num_texts
    docs.upsert({"id": 0, "text": TEXTS[0], "tag": "changed"})
    db.maintain()
    assert db.embedder.num_texts == embedded
    docs.upsert({"id": 0, "text": "a new text", "tag": "changed"})
    db.maintain()
    assert db.embedder.num_texts == embedded + 1
    assert index.search("a new text", 1)[0] == {"id": 0, "text": "a new text", "tag": "changed",
                                                "score": pytest.approx(1.0)}


def test_ttl_expiry_removes_vectors_from_the_index():
    clock = dm.ManualClock()
    db = scripted_db(clock=clock)
    docs = docs_table(db, ttl="2 days")
    index = db.view("idx", docs.sem_index("text"))
    db.maintain()
    assert {h["id"] for h in index.search("apple", 10)} >= {0, 1, 3}
    clock.advance("1 day")
    docs.upsert({"id": 1, "text": "green apple", "tag": "renewed"})
    clock.advance("1.5 days")
    assert db.expire() == len(TEXTS) - 1
    db.maintain()
    assert [h["id"] for h in index.search("apple", 10)] == [1]


def test_ttl_keep_frees_the_vector_and_the_index_agrees_with_a_rebuild():
    clock = dm.ManualClock()
    db = scripted_db(clock=clock)
    docs = docs_table(db, ttl="1 day", expire="keep")
    index = db.view("idx", docs.sem_index("text"))
    db.maintain()
    index.search("apple", 3)
    clock.advance("2 days")
    db.expire()
    db.maintain()
    assert len(index.rows()) == len(TEXTS)  # the rows stay...
    assert index.search("apple", 3) == []  # ...but their vectors were freed
    assert SearchIndexes(db.store).search("idx", *db._view_plan("idx"), db.embedder, "apple", 3, runner=db.runner) == []


def test_reopened_database_rebuilds_the_index_from_the_store(tmp_path):
    path = str(tmp_path / "search.db")
    db = scripted_db(path)
    docs = docs_table(db)
    before = db.view("idx", docs.sem_index("text")).search("red sky", 5, fresh=True)
    db.close()
    db = scripted_db(path)
    assert db.view("idx").search("red sky", 5) == before
    assert db.embedder.num_texts == 0  # every row's vector came from the store, and the query's from the memo
    db.close()


def test_search_needs_a_sem_index_and_sane_arguments():
    db = scripted_db()
    docs = docs_table(db)
    plain = db.view("plain", docs.sem_filter("{text} is nice"))
    index = db.view("idx", docs.sem_index("text"))
    db.maintain()
    with pytest.raises(SchemaError, match='View "plain" has no sem_index'):
        plain.search("apple", 3)
    with pytest.raises(SchemaError, match="k=0 is out of range"):
        index.search("apple", 0)
    with pytest.raises(SchemaError, match="non-empty query"):
        index.search(" ", 3)
    with pytest.raises(SchemaError, match="Did you mean 'text'"):
        docs.sem_index("txt")


def test_vector_index_replaces_removes_and_compacts():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    keys = [encode_key(i) for i in range(3000)]
    index = VectorIndex.build(8, keys, vectors, exact_below=0)
    assert index.search(vectors[7], 1)[0][0] == keys[7]
    index.add([keys[7]], vectors[8][None, :])  # replace
    assert len(index) == 3000 and np.allclose(index.get(keys[7]), vectors[8])
    assert index.remove(keys[:2500]) == 2500 and len(index) == 500
    assert index._num_removed == 0  # compacted: the tombstones outnumbered the live vectors
    found = index.search(vectors[2999], 3)
    assert found[0][0] == keys[2999] and all(key not in keys[:2500] for key, _s in found)


# --- sem_search ----------------------------------------------------------------------------------------------------


def test_standing_search_equals_the_exact_top_k():
    db = scripted_db()
    docs = docs_table(db)
    top = db.view("top", docs.sem_search("red apple", k=3, column="text"))
    rows = top.rows(fresh=True).rows
    expected = exact_top(docs.rows(), "red apple", 3)
    assert sorted((r["id"], r["score"]) for r in rows) == sorted(expected)
    assert set(rows[0]) == {"id", "text", "tag", "score"}


def test_standing_search_makes_one_embedding_per_new_row_and_none_for_other_columns():
    db = scripted_db()
    docs = docs_table(db)
    top = db.view("top", docs.sem_search("red apple", k=3, column="text"))
    db.maintain()
    assert db.embedder.num_texts == len(TEXTS) + 1  # every row, and the query once
    docs.upsert({"id": 30, "text": "red apple", "tag": "b"})
    db.maintain()
    assert db.embedder.num_texts == len(TEXTS) + 1  # the row's text is the query's: the memo embedded it
    assert (db.usage().embeddings, db.usage().embedding_memo_hits) == (len(TEXTS) + 1, 1)
    assert top.rows().rows[-1] == {"id": 30, "text": "red apple", "tag": "b", "score": pytest.approx(1.0)}
    docs.upsert({"id": 30, "text": "red apple", "tag": "c"})
    db.maintain()
    assert db.embedder.num_texts == len(TEXTS) + 1
    assert top.rows().rows[-1]["tag"] == "c"
    docs.upsert({"id": 31, "text": "red apples", "tag": "b"})
    db.maintain()
    assert db.embedder.num_texts == len(TEXTS) + 2


def test_delete_from_the_top_k_promotes_the_next_best_without_an_embedding():
    db = scripted_db()
    docs = docs_table(db)
    top = db.view("top", docs.sem_search("red apple", k=3, column="text"))
    db.maintain()
    embedded = db.embedder.num_texts
    best = exact_top(docs.rows(), "red apple", 4)
    docs.delete(best[0][0])
    db.maintain()
    assert db.embedder.num_texts == embedded
    assert sorted((r["id"], r["score"]) for r in top.rows()) == sorted(best[1:])


def test_ttl_keep_leaves_expired_outputs_and_promotes_the_next_best():
    clock = dm.ManualClock()
    db = scripted_db(clock=clock)
    docs = db.table("docs", key="id", columns=COLUMNS, ttl="1 day", expire="keep")
    docs.upsert([{"id": 1, "text": "red apple", "tag": "old"}, {"id": 2, "text": "apple", "tag": "old"}])
    top = db.view("top", docs.sem_search("red apple", k=2, column="text"))
    db.maintain()
    clock.advance("12 hours")
    docs.upsert([{"id": 3, "text": "red", "tag": "new"}, {"id": 4, "text": "blue sky", "tag": "new"}])
    clock.advance("18 hours")
    assert db.expire() == 2
    db.maintain()
    # The expired rows' outputs stay as they were ("keep"); the two best live rows now hold the top 2.
    assert [(r["id"], r["tag"]) for r in top.rows()] == [(1, "old"), (2, "old"), (3, "new"), (4, "new")]


def test_standing_search_checks_its_parameters():
    db = scripted_db()
    docs = docs_table(db)
    with pytest.raises(SchemaError, match="Did you mean 'text'"):
        docs.sem_search("apple", k=3, column="txt")
    with pytest.raises(SchemaError, match="k=0 is out of range"):
        docs.sem_search("apple", k=0, column="text")
    with pytest.raises(SchemaError, match="non-empty query"):
        docs.sem_search("", k=2, column="text")


# --- sem_search_many -----------------------------------------------------------------------------------------------


def queries_table(db: dm.Database, queries: list[str]) -> dm.Table:
    table = db.table("queries", key="qid", columns={"qid": "int", "query": "text"})
    table.upsert([{"qid": i, "query": q} for i, q in enumerate(queries)])
    return table


def assert_many_is_exact(view: dm.View, docs: dm.Table, queries: dm.Table, k: int) -> None:
    got: dict[int, list] = {}
    for row in view.rows(fresh=True):
        got.setdefault(row["query_key"], []).append((row["id"], row["score"]))
    expected = {q["qid"]: sorted(exact_top(docs.rows(), q["query"], k)) for q in queries.rows()}
    assert {q: sorted(pairs) for q, pairs in got.items()} == {q: p for q, p in expected.items() if p}


def test_many_standing_searches_equal_each_querys_exact_top_k():
    db = scripted_db()
    docs = docs_table(db)
    queries = queries_table(db, ["red apple", "blue sky", "sea", "tree of apples"])
    view = db.view("many", docs.sem_search_many(queries, k=2, column="text"))
    assert_many_is_exact(view, docs, queries, 2)
    row = view.rows()[0]
    assert set(row) == {"query_key", "id", "text", "tag", "score"}
    docs.delete([0, 1])
    docs.upsert({"id": 40, "text": "the apple tree", "tag": "z"})
    queries.upsert({"qid": 2, "query": "night"})
    queries.delete(1)
    assert_many_is_exact(view, docs, queries, 2)


def topic_workload(num_topics: int, per_topic: int) -> tuple[list[str], list[str]]:
    """Queries and rows in ``num_topics`` topics: four topic words each, plus one word of their own."""
    topics = [[f"t{t}w{w}" for w in range(4)] for t in range(num_topics)]
    queries = [" ".join(topics[t] + [f"q{t}x{i}"]) for t in range(num_topics) for i in range(per_topic)]
    rows = [" ".join(topics[i % num_topics] + [f"r{i}"]) for i in range(num_topics * per_topic)]
    return queries, rows


def test_clustered_queries_compute_fewer_similarities_than_every_query_per_row():
    db = scripted_db()
    queries_text, rows_text = topic_workload(num_topics=5, per_topic=20)
    docs = db.table("docs", key="id", columns=COLUMNS)
    docs.upsert([{"id": i, "text": t, "tag": "seed"} for i, t in enumerate(rows_text[:10])])
    queries = queries_table(db, queries_text)
    view = db.view("many", docs.sem_search_many(queries, k=2, column="text"))
    db.maintain()
    operator = build_operators(db._view_def("many").plan)[0]
    assert isinstance(operator, SemSearchMany)
    built = operator.get_stats(db.store, "many")
    assert built.num_queries == 100 and 5 <= built.num_clusters <= 8  # a topic each (hash collisions may split one)
    for start in range(10, len(rows_text), 10):
        docs.upsert([{"id": i, "text": rows_text[i], "tag": "new"} for i in range(start, start + 10)])
        db.maintain()
    stats = operator.get_stats(db.store, "many")
    new_rows = len(rows_text) - 10
    pass_similarities = stats.num_similarities - built.num_similarities
    assert stats.num_exhaustive - built.num_exhaustive == new_rows * 100  # every new row against every query
    # Per new row: the leaders, then about its own topic's 20 queries; the other topics' clusters are skipped.
    assert pass_similarities < 0.35 * new_rows * 100
    assert_many_is_exact(view, docs, queries, 2)


def test_many_searches_check_their_columns():
    db = scripted_db()
    docs = docs_table(db)
    queries = queries_table(db, ["apple"])
    with pytest.raises(SchemaError, match="Did you mean 'query'"):
        docs.sem_search_many(queries, k=2, column="text", query_column="querry")
    with pytest.raises(SchemaError, match="column 'body'"):
        docs.sem_search_many(queries, k=2, column="body")
    with pytest.raises(SchemaError, match="k=-1 is out of range"):
        docs.sem_search_many(queries, k=-1, column="text")
