"""LLM_GENERATE views: answers per CONTEXT row, provenance, strategies and their decision log."""

from __future__ import annotations

import pytest

from deltamem.errors import SchemaError, TemplateError
from tests.helpers import ExtractiveLLM, scripted_db

QUESTIONS = {"qid": "text", "question": "text"}
DOCS = {"doc_id": "text", "title": "text", "text": "text"}


@pytest.fixture
def db():
    db = scripted_db()
    db.table("questions", key="qid", columns=QUESTIONS).upsert(
        [{"qid": "q1", "question": "When was Ada born?"}, {"qid": "q2", "question": "Where did Alan study?"}]
    )
    db.table("docs", key="doc_id", columns=DOCS).upsert([
        {"doc_id": "ada", "title": "Ada Lovelace", "text": "Ada was born in 1815. Ada lived in London."},
        {"doc_id": "alan", "title": "Alan Turing", "text": "Alan was born in 1912. Alan studied at Cambridge."},
        {"doc_id": "tea", "title": "Tea", "text": "Tea is a drink. Tea grows on bushes."},
    ])
    yield db
    db.close()


def generate(db, name="answers", **options):
    return db.generate(name, prompt="Answer from the documents.", context=db.table("questions"),
                       data_source=db.table("docs"), **options)


def test_one_answer_per_context_row_and_a_delete_retracts_it(db):
    view = generate(db)
    rows = view.rows(fresh=True)
    assert [r["qid"] for r in rows] == ["q1", "q2"] and all(r["answer"] for r in rows)
    db.table("questions").delete("q2")
    assert [r["qid"] for r in view.rows(fresh=True)] == ["q1"]
    assert db.usage().calls == 2  # the delete cost nothing


def test_retrieval_skips_outputs_a_document_change_cannot_reach(db):
    view = generate(db, retrieve=2)
    view.rows(fresh=True)
    db.table("docs").upsert({"doc_id": "tea", "title": "Tea", "text": "Tea is a drink. Green tea grows in Asia."})
    view.rows(fresh=True)
    last = \
        [d for d in db.store.get_decisions("answers") if d.version == db.version]
    assert {d.strategy for d in last} == {"skip"} and db.usage().calls == 2
    assert all("k-th" in d.reason or "identical" in d.reason for d in last)


def test_retrieval_refreshes_the_output_whose_chunk_changed(db):
    view = generate(db, retrieve=2, strategy="skip")
    before = {r["qid"]: r["answer"] for r in view.rows(fresh=True)}
    explained = view.explain("q1")
    chunks = explained["operators"]["1:llm_generate"]["value"]["chunks"]
    assert any(doc == '"ada"' for doc, _position, _hash in chunks)
    db.table("docs").upsert({"doc_id": "ada", "title": "Ada Lovelace", "text": "Ada was born in 1816. Ada lived in London."})
    after = {r["qid"]: r["answer"] for r in view.rows(fresh=True)}
    q1 = view.explain("q1")["decisions"]
    assert q1[-1]["strategy"] == "full" and q1[-1]["reason"] == "a chunk it depends on changed"
    assert q1[-1]["calls"] == 1 and q1[-1]["prompt_tokens"] > 0
    assert after["q2"] == before["q2"]


def test_full_strategy_recomputes_every_output_at_every_change(db):
    generate(db, strategy="full", retrieve=2).rows(fresh=True)
    db.table("docs").upsert({"doc_id": "tea", "title": "Tea", "text": "Tea is a drink. Green tea grows in Asia."})
    db.maintain()
    decisions = [d for d in db.store.get_decisions("answers") if d.version == db.version]
    # both are asked again; a prompt the change did not alter is answered by the memo, the others are paid
    assert sorted(d.key for d in decisions) == ['"q1"', '"q2"']
    assert all((d.strategy, d.calls) in (("full", 1), ("memo", 0)) for d in decisions)


def test_as_of_now_answers_once(db):
    view = generate(db, refresh="as_of_now")
    first = view.rows(fresh=True).rows
    db.table("docs").delete("ada")
    assert view.rows(fresh=True).rows == first and db.usage().calls == 2
    db.table("questions").upsert({"qid": "q3", "question": "What is tea?"})
    assert len(view.rows(fresh=True)) == 3 and db.usage().calls == 3


def test_bad_arguments_are_named_and_change_nothing(db):
    questions, docs = db.table("questions"), db.table("docs")
    with pytest.raises(SchemaError, match="retrieve=0 is out of range"):
        generate(db, retrieve=0)
    with pytest.raises(SchemaError, match="Unknown strategy 'fastest'"):
        generate(db, strategy="fastest")
    with pytest.raises(SchemaError, match="CONTEXT of 'v' must be a table"):
        db.generate("v", prompt="p", context=questions.sem_map("{question}", out="x"), data_source=docs)
    with pytest.raises(SchemaError, match="must be two tables"):
        db.generate("v", prompt="p", context=docs, data_source=docs)
    with pytest.raises(TemplateError, match=r"reads column 'qestion'.*Did you mean 'question'"):
        generate(db, question="{qestion}")
    assert db.views() == []


def test_the_default_templates_use_question_title_and_text(db):
    view = generate(db, retrieve="all")
    view.rows(fresh=True)
    state = view.explain("q1")["operators"]["1:llm_generate"]["value"]
    assert state["question"] == "When was Ada born?"
    assert len(state["chunks"]) == 6  # every sentence of every document


def test_auto_patches_a_substituted_value_the_answer_copies():
    db = scripted_db(llm=ExtractiveLLM())
    questions = db.table("questions", key="qid", columns=QUESTIONS)
    docs = db.table("docs", key="doc_id", columns=DOCS)
    questions.upsert({"qid": "q1", "question": "Where did Alan study?"})
    docs.upsert({"doc_id": "alan", "title": "Alan Turing", "text": "Alan was born in 1912. Alan studied at Cambridge."})
    view = generate(db, strategy="auto", shadow=1.0)
    assert view.rows(fresh=True)[0]["answer"] == "Alan studied at Cambridge."
    docs.upsert({"doc_id": "alan", "title": "Alan Turing", "text": "Alan was born in 1912. Alan studied at Oxford."})
    (row,) = view.rows(fresh=True)
    patch, shadow = view.explain("q1")["decisions"][-2:]
    assert (patch["strategy"], patch["calls"]) == ("patch", 0)
    assert "replaced 'Cambridge' by 'Oxford'" in patch["reason"]
    assert (shadow["strategy"], shadow["reason"]) == ("shadow", "patch: agrees with full recompute")
    assert row["answer"] == "Alan studied at Oxford."


def test_auto_on_a_backend_that_verifies_tests_the_answer_exactly_instead_of_patching_it():
    db = scripted_db(llm=ExtractiveLLM(verifies=True))
    questions = db.table("questions", key="qid", columns=QUESTIONS)
    docs = db.table("docs", key="doc_id", columns=DOCS)
    questions.upsert({"qid": "q1", "question": "Where did Alan study?"})
    docs.upsert({"doc_id": "alan", "title": "Alan Turing", "text": "Alan was born in 1912. Alan studied at Cambridge."})
    view = generate(db, strategy="auto", shadow=1.0)
    view.rows(fresh=True)
    docs.upsert({"doc_id": "alan", "title": "Alan Turing", "text": "Alan was born in 1912. Alan studied at Oxford."})
    (row,) = view.rows(fresh=True)
    (decision,) = [d for d in view.explain("q1")["decisions"] if d["version"] == db.version]
    assert (decision["strategy"], decision["calls"]) == ("regenerate", 1)
    assert decision["reason"].endswith("it changed: decoded from the first divergence (exact)")
    assert row["answer"] == "Alan studied at Oxford."


def test_auto_skips_an_edit_that_neither_question_nor_answer_mentions_and_shadow_checks_it(db):
    view = generate(db, strategy="auto", shadow=1.0)
    view.rows(fresh=True)
    db.table("docs").upsert({"doc_id": "tea", "title": "Tea", "text": "Tea is a drink. Tea grows on shrubs."})
    view.rows(fresh=True)
    latest = [d for d in db.store.get_decisions("answers") if d.version == db.version]
    assert {d.strategy for d in latest} == {"skip", "shadow"}
    assert all(d.reason.startswith("skip: ") for d in latest if d.strategy == "shadow")


def test_append_adds_the_delta_as_a_new_turn_within_its_budget(db):
    view = generate(db, strategy="append", append_budget=60)
    view.rows(fresh=True)
    db.table("docs").upsert({"doc_id": "tea", "title": "Tea", "text": "Tea is a drink. Green tea grows in Asia."})
    view.rows(fresh=True)
    first = view.explain("q1")
    assert first["decisions"][-1]["strategy"] == "append"
    base = first["operators"]["1:llm_generate"]["value"]["base"]
    assert len(base["log"]) == 1 and base["log"][0][0].startswith("The documents changed")
    db.table("docs").upsert({"doc_id": "tea", "title": "Tea", "text": "Tea is a drink. Black tea grows in India."})
    db.table("docs").upsert({"doc_id": "ada", "title": "Ada", "text": "Ada was born in 1815. Ada lived in Paris."})
    view.rows(fresh=True)
    strategies = [d["strategy"] for d in view.explain("q1")["decisions"]]
    assert "full" in strategies[2:]  # past the budget, a full recompute compacts the log into the base


def test_a_partition_limits_answers_to_their_own_documents():
    db = scripted_db()
    questions = db.table("questions", key="qid", columns={"qid": "text", "topic": "text", "question": "text"})
    docs = db.table("docs", key="doc_id", columns={"doc_id": "text", "topic": "text", "text": "text"})
    questions.upsert([{"qid": "q1", "topic": "ada", "question": "When was Ada born?"},
                      {"qid": "q2", "topic": "alan", "question": "Where did Alan study?"}])
    docs.upsert([{"doc_id": "d1", "topic": "ada", "text": "Ada was born in 1815."},
                 {"doc_id": "d2", "topic": "alan", "text": "Alan studied at Cambridge."}])
    view = generate(db, partition="topic", strategy="full")
    view.rows(fresh=True)
    prompt_q1 = view.explain("q1")["operators"]["1:llm_generate"]["value"]["chunks"]
    assert [doc for doc, _p, _h in prompt_q1] == ['"d1"']
    docs.upsert({"doc_id": "d2", "topic": "alan", "text": "Alan studied at Oxford."})
    view.rows(fresh=True)
    assert [d.key for d in db.store.get_decisions("answers") if d.version == db.version] == ['"q2"']
    with pytest.raises(SchemaError, match="partition column 'topc' is not a column"):
        generate(db, name="other", partition="topc")
