"""Embeddings in operator state: the ``Vector`` value, the store's binary column for it, and the upgrade of stores
that kept embeddings inside the JSON values (SQLite schema 6, PostgreSQL schema 2)."""

from __future__ import annotations

import base64
import json
import sqlite3

import numpy as np
import psycopg
from hypothesis import given
from hypothesis import strategies as st

from deltamem.store.state_vectors import Vector, pack_vectors, unpack_vectors, upgrade_legacy_value
from tests.helpers import scripted_db

DOCS = [{"id": i, "text": text} for i, text in enumerate(
    ["red apple pie", "blue sky at noon", "a green apple tree", "the deep blue sea", "apples and pears"])]
QUESTIONS = [{"qid": "q1", "question": "Which fruit is red?"}, {"qid": "q2", "question": "What colour is the sky?"}]
BASE64_KEYS = ("vector", "query_vec", "centroid")  # how schema 6 wrote these; the other vectors were JSON lists

vectors = st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=8).map(Vector)
scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=5) | vectors
json_with_vectors = vectors | st.dictionaries(  # vectors at the top, in a dict, in a list in a dict, in a dict in a list
    st.text(max_size=5),
    scalars | st.lists(scalars | st.dictionaries(st.text(max_size=3), scalars, max_size=3), max_size=4), max_size=5)


@given(json_with_vectors)
def test_pack_then_unpack_gives_the_value_back(value):
    stripped, blob = pack_vectors(value)
    json.dumps(stripped, allow_nan=False)  # what the store writes as JSON holds no vector
    assert unpack_vectors(json.loads(json.dumps(stripped)), blob) == value


def test_a_vector_compares_by_value_and_reads_back_as_float32():
    vector = Vector([0.5, -1.0, 2.0])
    assert vector == Vector(np.array([0.5, -1.0, 2.0], dtype=np.float64)) and hash(vector) == hash(Vector([.5, -1, 2]))
    assert vector != Vector([0.5, -1.0]) and vector != [0.5, -1.0, 2.0]
    array = np.asarray(vector)
    assert array.dtype == np.float32 and array.tolist() == [0.5, -1.0, 2.0]
    array[0] = 9  # a copy: the vector is immutable
    assert np.asarray(vector)[0] == 0.5 and len(vector) == 3
    assert pack_vectors({"a": 1}) == ({"a": 1}, None)


def test_an_extracted_field_called_vector_is_not_taken_for_an_old_embedding():
    value = {"vector": "AACAPw==", "text": "x"}
    assert upgrade_legacy_value("1:sem_extract", value) == value
    assert upgrade_legacy_value("1:sem_index", value)["vector"] == Vector([1.0])


def build(path: str):
    """A database with every operator that keeps embeddings: an index, a standing search, many searches, a join with
    blocking, and generation with retrieval and answer reuse."""
    db = scripted_db(path)
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
    queries = db.table("queries", key="qid", columns={"qid": "int", "query": "text"})
    questions = db.table("questions", key="qid", columns={"qid": "text", "question": "text"})
    docs.upsert(DOCS)
    queries.upsert([{"qid": 1, "query": "red fruit"}, {"qid": 2, "query": "the ocean"}])
    questions.upsert(QUESTIONS)
    db.view("idx", docs.sem_index("text"))
    db.view("top", docs.sem_search("red apple", k=2, column="text"))
    db.view("many", docs.sem_search_many(queries, k=2, column="text"))
    db.view("pairs", docs.sem_join(queries, "{text:left} answers {query:right}", candidates=2))
    db.generate("answers", prompt="Answer.", context=questions, data_source=docs, retrieve=2, reuse="semantic")
    db.maintain()
    return db


VIEWS = ("idx", "top", "many", "pairs", "answers")


def snapshot(db) -> tuple[dict, dict]:
    return ({view: db.store.get_all_state(view) for view in VIEWS},
            {view: sorted(map(json.dumps, db.view(view).rows(fresh=True))) for view in VIEWS})


def test_the_store_keeps_embeddings_in_binary_and_reads_them_back(store_kind, new_store_path):
    path = new_store_path()
    db = build(path)
    state, rows = snapshot(db)
    db.close()
    reopened = scripted_db(path)
    assert snapshot(reopened) == (state, rows)
    reopened.close()
    with _raw(store_kind, path) as conn:
        value, blob = conn.execute("SELECT value, vectors FROM op_state WHERE view = 'idx' LIMIT 1").fetchone()
    value = json.loads(value) if isinstance(value, str) else value
    assert value["vector"] is None and len(bytes(blob)) > 4 * len(next(iter(state["idx"].values())).value["vector"])


def test_a_store_of_the_previous_schema_is_upgraded_and_its_views_go_on(store_kind, new_store_path):
    path = new_store_path()
    db = build(path)
    state, rows = snapshot(db)
    db.close()
    _write_as_previous_schema(store_kind, path)

    reopened = scripted_db(path)
    assert snapshot(reopened) == (state, rows)  # every vector came back exactly from the old JSON
    expected = build(":memory:")  # the same views, never upgraded, to compare what the next change costs and gives
    embedded = {}
    for name, database in (("upgraded", reopened), ("never upgraded", expected)):
        before = database.embedder.num_texts
        database.table("docs").upsert({"id": 5, "text": "a red apple in the blue sea"})
        database.table("docs").delete(0)
        database.maintain()
        embedded[name] = database.embedder.num_texts - before
    assert snapshot(reopened)[1] == snapshot(expected)[1]
    assert embedded["upgraded"] == embedded["never upgraded"] > 0  # no stored vector was embedded again
    reopened.close()


class _raw:
    """A plain connection to the store at ``path``, committed on exit."""

    def __init__(self, store_kind: str, path: str):
        self.conn = sqlite3.connect(path) if store_kind == "sqlite" else psycopg.connect(path)
        self.kind = store_kind

    def __enter__(self):
        return self

    def execute(self, sql: str, params=()):
        return self.conn.execute(sql if self.kind == "sqlite" else sql.replace("?", "%s"), params)

    def __exit__(self, *exc):
        self.conn.commit()
        self.conn.close()


def _write_as_previous_schema(store_kind: str, path: str) -> None:
    """Rewrite the store as the previous schema had it: vectors inside the values, no ``vectors`` column."""
    with _raw(store_kind, path) as conn:
        found = conn.execute("SELECT view, op, key, value, vectors FROM op_state WHERE vectors IS NOT NULL").fetchall()
        assert {view for view, *_ in found} == set(VIEWS)  # each view keeps embeddings
        for view, op, key, value, blob in found:
            value = json.loads(value) if isinstance(value, str) else value
            legacy = json.dumps(_legacy(unpack_vectors(value, bytes(blob))))
            conn.execute("UPDATE op_state SET value = ? WHERE view = ? AND op = ? AND key = ?", (legacy, view, op, key))
        conn.execute("ALTER TABLE op_state DROP COLUMN vectors")
        conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", ("6" if store_kind == "sqlite" else "2",))


def _legacy(value, key=None):
    if isinstance(value, Vector):
        array = np.asarray(value)
        return base64.b64encode(array.tobytes()).decode() if key in BASE64_KEYS else array.tolist()
    if isinstance(value, dict):
        return {k: _legacy(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_legacy(v, key) for v in value]
    return value
