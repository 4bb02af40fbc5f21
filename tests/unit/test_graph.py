"""``sem_graph`` (``deltamem.operators.graph``): what a user sees of the graph, its bad inputs and its failures."""

from __future__ import annotations

import json

import pytest

from deltamem.errors import SchemaError, TemplateError
from deltamem.llm.embedding_runs import is_embedding_operator
from deltamem.llm.scripted import ScriptedLLM
from deltamem.operators.graph import MAX_MALFORMED, MAX_NAME, parse_extraction
from tests.helpers import scripted_db

PASSAGES = {"pid": "text", "text": "text"}


class GarblingLLM(ScriptedLLM):
    """Answers an extraction of a passage that contains a key of ``replies`` with that reply, as given."""

    def __init__(self, replies: dict[str, str]):
        super().__init__()
        self.replies = replies

    def answer(self, request):
        passage = request.messages[1].content
        for needle, reply in self.replies.items():
            if needle in passage:
                return reply
        return super().answer(request)


def _graph(db, threshold: float = 0.6):
    passages = db.table("passages", key="pid", columns=PASSAGES)
    return passages, db.view("graph", passages.sem_graph("{text}", synonym_threshold=threshold))


def test_nodes_and_edges_keep_the_passages_that_assert_them_and_synonyms_join_close_names():
    with scripted_db() as db:
        passages, graph = _graph(db)
        passages.upsert([{"pid": "a", "text": "Ada Lovelace worked with Charles Babbage."},
                         {"pid": "b", "text": "Charles Babbage lived in London. Lovelace met Babbage."}])
        rows = {(r["kind"], r["subject"], r["relation"], r["object"]): r for r in graph.rows(fresh=True).rows}
        assert rows[("node", "charles babbage", None, None)]["passages"] == ['"a"', '"b"']
        assert rows[("edge", "ada lovelace", "worked with", "charles babbage")]["passages"] == ['"a"']
        assert rows[("synonym", "babbage", "synonym", "charles babbage")]["similarity"] >= 0.6
        passages.delete("a")  # its contributions leave; what b asserts stays
        rows = {(r["kind"], r["subject"], r["relation"], r["object"]): r for r in graph.rows(fresh=True).rows}
        assert ("node", "ada lovelace", None, None) not in rows
        assert ("synonym", "ada lovelace", "synonym", "lovelace") not in rows
        assert rows[("node", "charles babbage", None, None)]["passages"] == ['"b"']
        assert graph.columns == ("kind", "subject", "relation", "object", "passages", "similarity")


def test_a_malformed_extraction_is_the_passage_s_error_shown_in_the_view_and_asked_again_at_the_next_refresh():
    llm = GarblingLLM({"Garbled": "Sure! Here are the entities: Ada, London"})
    with scripted_db(llm=llm) as db:
        passages, graph = _graph(db)
        passages.upsert([{"pid": "a", "text": "Ada Lovelace lived in London."},
                         {"pid": "g", "text": "Garbled Ada lived in London."}])
        errors = [r for r in graph.rows(fresh=True).rows if r["kind"] == "error"]
        assert len(errors) == 1 and errors[0]["passages"] == ['"g"']
        assert errors[0]["_error"].startswith("malformed extraction of passage 'g': the extraction is not JSON")
        assert all("garbled" not in (r["subject"] or "") for r in graph.rows().rows)  # it contributed nothing
        llm.replies.clear()  # the model now answers it well
        db.refresh()
        rows = graph.rows(fresh=True).rows
        assert not [r for r in rows if r["kind"] == "error"]
        assert any(r["kind"] == "node" and r["subject"] == "garbled ada" and r["passages"] == ['"g"'] for r in rows)


@pytest.mark.parametrize(("reply", "why"), [
    ('{"entities": ["Ada"]}', "needs the lists entities and triples"),
    ('{"entities": [""], "triples": []}', "an entity name is empty"),
    (json.dumps({"entities": ["x" * (MAX_NAME + 1)], "triples": []}), f"longer than {MAX_NAME} characters"),
    ('{"entities": [], "triples": [["Ada", "met"]]}', "is not [subject, relation, object]"),
    ('{"entities": [3], "triples": []}', "an entity is not a string"),
])
def test_each_kind_of_malformed_extraction_is_refused_naming_what_is_wrong(reply, why):
    with pytest.raises(ValueError, match=why.replace("[", r"\[").replace("]", r"\]")):
        parse_extraction(reply)
    with scripted_db(llm=GarblingLLM({"Ada": reply})) as db:
        passages, graph = _graph(db)
        passages.upsert({"pid": "p7", "text": "Ada lived in London."})
        (row,) = graph.rows(fresh=True).rows
        assert row["kind"] == "error" and row["passages"] == ['"p7"'] and "of passage 'p7':" in row["_error"]


def test_a_failed_extraction_call_is_the_passage_s_error_and_retried():
    with scripted_db(llm=ScriptedLLM(failures={"Ada": 3})) as db:  # the runner's 3 attempts all fail
        passages, graph = _graph(db)
        passages.upsert({"pid": "a", "text": "Ada lived in London."})
        (row,) = graph.rows(fresh=True).rows
        assert row["kind"] == "error" and "scripted failure" in row["_error"]
        db.refresh()
        assert {r["kind"] for r in graph.rows(fresh=True).rows} == {"node", "edge"}


def test_a_graph_over_a_table_without_the_column_or_with_a_bad_threshold_is_refused_at_definition():
    with scripted_db() as db:
        passages = db.table("passages", key="pid", columns=PASSAGES)
        with pytest.raises(TemplateError, match="body"):
            passages.sem_graph("{body}")
        for bad in (0, 1.5, "0.9", True):
            with pytest.raises(SchemaError, match="synonym_threshold must be in"):
                passages.sem_graph("{text}", synonym_threshold=bad)
        assert db.views() == []


def test_sql_defines_a_graph_view_with_sem_graph_in_from():
    from deltamem.sql import execute

    with scripted_db() as db:
        execute(db, "CREATE TABLE passages (pid TEXT PRIMARY KEY, text TEXT)")
        execute(db, "INSERT INTO passages VALUES ('a', 'Ada Lovelace worked with Charles Babbage.')")
        execute(db, "CREATE CONTINUOUS VIEW graph AS SELECT * FROM SEM_GRAPH(passages, '{text}', "
                    "synonym_threshold => 0.6)")
        rows = execute(db, "SELECT kind, subject, relation, object FROM graph WHERE kind = 'edge'").rows
        assert rows == [("edge", "ada lovelace", "worked with", "charles babbage")]
        with pytest.raises(SchemaError, match="SEM_GRAPH has no option 'threshold'"):
            execute(db, "CREATE CONTINUOUS VIEW g2 AS SELECT * FROM SEM_GRAPH(passages, '{text}', threshold => 0.6)")


def test_the_graph_and_its_node_vectors_survive_a_restart_on_both_stores(new_store_path):
    path = new_store_path()
    with scripted_db(path) as db:
        passages, graph = _graph(db)
        passages.upsert({"pid": "a", "text": "Ada Lovelace worked with Charles Babbage."})
        graph.rows(fresh=True)
    with scripted_db(path) as db:  # another process: the names' vectors come from the store, not embedded again
        db.table("passages").upsert({"pid": "b", "text": "Lovelace met Babbage in London."})
        rows = db.view("graph").rows(fresh=True).rows
        embedded = [e for e in db.store.get_ledger("graph")
                    if is_embedding_operator(e.operator) and e.outcome == "paid"]
    with scripted_db() as fresh:
        passages, graph = _graph(fresh)
        passages.upsert([{"pid": "a", "text": "Ada Lovelace worked with Charles Babbage."},
                         {"pid": "b", "text": "Lovelace met Babbage in London."}])
        assert rows == graph.rows(fresh=True).rows
    assert len(embedded) == 2 + 3  # ada lovelace, charles babbage; then lovelace, babbage, london: each name once


def test_a_passage_edited_to_other_columns_keeps_asking_again_after_a_malformed_reply():
    llm = GarblingLLM({"Garbled": "not json"})
    with scripted_db(llm=llm) as db:
        passages = db.table("passages", key="pid", columns={**PASSAGES, "tag": "text"})
        graph = db.view("graph", passages.sem_graph("{text}"))
        passages.upsert({"pid": "g", "text": "Garbled Ada lived in London.", "tag": "x"})
        graph.rows(fresh=True)
        llm.replies.clear()
        passages.upsert({"pid": "g", "text": "Garbled Ada lived in London.", "tag": "y"})  # the same passage text
        assert {r["kind"] for r in graph.rows(fresh=True).rows} == {"node", "edge"}


def test_a_passage_malformed_max_times_is_not_asked_again_until_it_changes():
    llm = GarblingLLM({"Garbled": "not json"})
    with scripted_db(llm=llm) as db:
        passages, graph = _graph(db)
        passages.upsert({"pid": "g", "text": "Garbled Ada lived in London."})
        graph.rows(fresh=True)
        for _ in range(MAX_MALFORMED + 2):
            db.refresh()
            graph.rows(fresh=True)
        asked = [e for e in db.store.get_ledger("graph") if not is_embedding_operator(e.operator)]
        assert len(asked) == MAX_MALFORMED
        error = next(r for r in graph.rows().rows if r["kind"] == "error")["_error"]
        assert f"after {MAX_MALFORMED} malformed replies, asked again only when the passage changes" in error
        llm.replies.clear()
        passages.upsert({"pid": "g", "text": "Garbled Ada lived in Paris."})
        assert not [r for r in graph.rows(fresh=True).rows if r["kind"] == "error"]
