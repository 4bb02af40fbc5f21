"""LLM_GENERATE with DECOMPOSE: composite questions answered from shared base questions, refreshed through them."""

from __future__ import annotations

import json

import pytest

from deltamem.errors import NoView, SchemaError, TemplateError
from deltamem.sql import execute
from tests.helpers import ExtractiveLLM, scripted_db

QUESTIONS = {"qid": "text", "topic": "text", "question": "text"}
FILMS = {"doc_id": "text", "topic": "text", "text": "text"}
RELEASED = ["When was the film {a} released?", "When was the film {b} released?"]
DECOMPOSE = {"Which film came out first, {a} or {b}?": RELEASED, "Which film came out last, {a} or {b}?": RELEASED}
COMPOSE, BASE = "1:llm_compose", "1:llm_compose/base"


@pytest.fixture
def db():
    db = scripted_db(llm=ExtractiveLLM())
    db.table("films", key="doc_id", columns=FILMS).upsert([
        {"doc_id": "alien", "topic": "films",
         "text": "Alien was released in 1979. Alien was directed by Ridley Scott."},
        {"doc_id": "heat", "topic": "films", "text": "Heat was released in 1995. Heat was directed by Michael Mann."},
        {"doc_id": "up", "topic": "films", "text": "Up was released in 2009. Up was directed by Pete Docter."},
        {"doc_id": "alien_r", "topic": "remakes", "text": "Alien was released in 2031. Heat was released in 2030."},
    ])
    db.table("questions", key="qid", columns=QUESTIONS).upsert([
        {"qid": "q1", "topic": "films", "question": "Which film came out first, Alien or Heat?"},
        {"qid": "q2", "topic": "films", "question": "which film came out LAST,  alien or heat"},
        {"qid": "q3", "topic": "films", "question": "Which film came out first, Heat or Up?"},
        {"qid": "q4", "topic": "remakes", "question": "Which film came out first, Alien or Heat?"},
    ])
    yield db
    db.close()


def compose(db, name="films_q", **options):
    options.setdefault("decompose", DECOMPOSE)
    return db.generate(name, prompt="Answer from the facts.", context=db.table("questions"),
                       data_source=db.table("films"), document="{text}", partition="topic", **options)


def calls(db, operator, version=None):
    """The LLM calls of ``operator`` on the ledger (at ``version``, if given): paid or answered by the memo."""
    return [e for e in db.store.get_ledger() if e.operator == operator and version in (None, e.version)]


def composed_at(db, view, version):
    return sorted(d.key.strip('"') for d in db.store.get_decisions(view) if d.version == version
                  and d.strategy == "compose")


def bases(db, view="films_q"):
    return sorted(json.loads(key) for (op, key) in db.store.get_all_state(view) if op == BASE)


def test_composites_share_their_base_questions_and_pay_each_once(db):
    view = compose(db)
    rows = {r["qid"]: r for r in view.rows(fresh=True)}
    assert set(rows) == {"q1", "q2", "q3", "q4"} and all(r["answer"] for r in rows.values())
    # Alien, Heat and Up for the films; Alien and Heat again for the remakes (another partition): 5 base calls for 8
    # base questions, one composition call per composite.
    assert bases(db) == ['base["films"]: when was the film alien released?',
                         'base["films"]: when was the film heat released?',
                         'base["films"]: when was the film up released?',
                         'base["remakes"]: when was the film alien released?',
                         'base["remakes"]: when was the film heat released?']
    assert len(calls(db, BASE)) == 5 and len(calls(db, COMPOSE)) == 4
    decisions = [d for d in db.store.get_decisions("films_q") if d.strategy == "compose"]
    assert all(d.calls == 1 and d.prompt_tokens > 0 and "composed from 'When was the film" in d.reason
               for d in decisions)


def test_a_document_edit_refreshes_only_the_bases_it_reaches_then_only_their_composites(db):
    view = compose(db, retrieve=1, strategy="skip")
    before = {r["qid"]: r["answer"] for r in view.rows(fresh=True)}
    db.table("films").upsert({"doc_id": "alien", "topic": "films",
                              "text": "Alien was released in 1980. Alien was directed by Ridley Scott."})
    after = {r["qid"]: r["answer"] for r in view.rows(fresh=True)}
    version = db.version
    # Only the films' Alien base read the edited sentence; Heat and Up skip on retrieval evidence, the remakes'
    # bases read another partition and are not even considered.
    base_decisions = {d.key: d.strategy for d in db.store.get_decisions("films_q") if d.version == version
                      and d.key.startswith('"base')}
    assert base_decisions == {'"base[\\"films\\"]: when was the film alien released?"': "full",
                              '"base[\\"films\\"]: when was the film heat released?"': "skip",
                              '"base[\\"films\\"]: when was the film up released?"': "skip"}
    assert len(calls(db, BASE, version)) == 1
    assert composed_at(db, "films_q", version) == ["q1", "q2"] and len(calls(db, COMPOSE, version)) == 2
    assert after["q3"] == before["q3"] and after["q4"] == before["q4"]
    q1 = view.explain("q1")["dependencies"][COMPOSE]["decomposition"]["bases"]
    assert q1[0]["answer"] == "Alien was released in 1980."


def test_a_base_refreshed_to_the_same_text_costs_its_composites_nothing(db):
    view = compose(db, strategy="regenerate")  # every document of its partition in every base prompt, no skip
    before = view.rows(fresh=True).rows
    db.table("films").upsert({"doc_id": "heat", "topic": "films",
                              "text": "Heat was released in 1995. Heat was directed by Michael Mann in Los Angeles."})
    assert view.rows(fresh=True).rows == before
    version = db.version
    assert len(calls(db, BASE, version)) == 3  # the three films' bases read the edit and are asked again
    assert calls(db, COMPOSE, version) == [] and composed_at(db, "films_q", version) == []


def test_a_question_that_matches_no_pattern_is_answered_over_the_documents_as_a_shared_base(db):
    view = compose(db)
    view.rows(fresh=True)
    paid = len(calls(db, BASE)), len(calls(db, COMPOSE))
    db.table("questions").upsert({"qid": "q5", "topic": "films", "question": "When was the film Up released?"})
    rows = {r["qid"]: r["answer"] for r in view.rows(fresh=True)}
    assert rows["q5"] == "Up was released in 2009."
    assert (len(calls(db, BASE)), len(calls(db, COMPOSE))) == paid  # the base q3 asked already answers it
    explained = view.explain("q5")
    decomposition = explained["dependencies"][COMPOSE]["decomposition"]
    assert decomposition["pattern"] is None and [b["question"] for b in decomposition["bases"]] == [
        "When was the film Up released?"]
    assert explained["decisions"][-1]["strategy"] == "direct" and explained["decisions"][-1]["calls"] == 0


def test_a_base_lives_while_a_composite_uses_it(db):
    view = compose(db)
    view.rows(fresh=True)
    db.table("questions").delete("q2")  # q1 still reads the films' Alien and Heat
    view.rows(fresh=True)
    assert len(bases(db)) == 5 and calls(db, BASE, db.version) == []
    db.table("questions").delete("q3")  # the last composite to read the films' Up
    view.rows(fresh=True)
    assert 'base["films"]: when was the film up released?' not in bases(db) and len(bases(db)) == 4
    retracted = [d for d in db.store.get_decisions("films_q") if d.version == db.version]
    assert {(d.key.strip('"'), d.strategy) for d in retracted} == {
        ("q3", "retract"), ('base[\\"films\\"]: when was the film up released?', "retract")}
    db.table("questions").delete(["q1", "q4"])
    view.rows(fresh=True)
    assert bases(db) == [] and view.rows().rows == []


def test_a_fact_asked_in_two_spellings_is_one_base_asked_in_the_least_of_them(db):
    view = compose(db)
    view.rows(fresh=True)
    key = 'base["films"]: when was the film alien released?'

    def asked_as():
        return {json.loads(k): e.input_row["question"] for (op, k), e in db.store.get_all_state("films_q").items()
                if op == BASE}

    assert asked_as()[key] == "When was the film Alien released?"  # q1's spelling; q2 writes "alien"
    db.table("questions").delete("q1")
    view.rows(fresh=True)
    assert asked_as()[key] == "When was the film alien released?"  # what a build from the rows left would ask
    assert len(calls(db, BASE, db.version)) == 1  # Alien, asked again (q3 still spells Heat as q1 did)


def test_explain_shows_the_decomposition_and_the_base_answers_read(db):
    view = compose(db)
    view.rows(fresh=True)
    explained = view.explain("q2")
    decomposition = explained["dependencies"][COMPOSE]["decomposition"]
    assert decomposition["pattern"] == "Which film came out last, {a} or {b}?"
    assert [(b["question"], b["answer"]) for b in decomposition["bases"]] == [
        ("When was the film alien released?", "Alien was released in 1979."),
        ("When was the film heat released?", "Heat was released in 1995.")]
    first = decomposition["bases"][0]
    assert first["key"] == 'base["films"]: when was the film alien released?'
    assert {p["doc"] for p in first["provenance"]["provenance"]} == {"alien", "heat", "up"}  # decoded keys
    stored = explained["operators"][COMPOSE]["value"]
    assert stored["base_answers"] == ["Alien was released in 1979.", "Heat was released in 1995."]
    assert "composed from 'When was the film alien released?'" in explained["decisions"][-1]["reason"]


def test_a_failed_base_fails_its_composites_until_it_is_retried():
    db = scripted_db(llm=ExtractiveLLM(failures={"Heat was released": 3}))
    db.table("films", key="doc_id", columns=FILMS).upsert([
        {"doc_id": "alien", "topic": "films", "text": "Alien was released in 1979."},
        {"doc_id": "heat", "topic": "films", "text": "Heat was released in 1995."}])
    db.table("questions", key="qid", columns=QUESTIONS).upsert(
        {"qid": "q1", "topic": "films", "question": "Which film came out first, Alien or Heat?"})
    view = compose(db, retrieve=1)
    [row] = view.rows(fresh=True).rows
    assert row["answer"] is None
    assert row["_error"].startswith("base question 'When was the film Heat released?' failed: ")
    db.refresh()  # the failure is retried: the base, then the composite
    [row] = view.rows(fresh=True).rows
    assert row["answer"] and "_error" not in row
    assert [(e.operator, e.reason, e.outcome) for e in db.store.get_ledger()[-2:]] == [
        (BASE, "retry", "paid"), (COMPOSE, "retry", "paid")]
    db.close()


@pytest.mark.parametrize("decompose, error, message", [
    ({"Which film came out first, {a} or {b}?": ["When was the film {c} released?"]}, TemplateError,
     "Base question 'When was the film {c} released?' of pattern 'Which film came out first, {a} or {b}?' reads "
     "{c}, which is neither a slot of the pattern (a, b) nor a column of CONTEXT table 'questions'."),
    ({"Which film came out first, {a} or {b}?": ["When was {a} released in {topik}?"]}, TemplateError,
     "Did you mean 'topic'?"),
    ({"Which film came out first, {a} or {b}?": []}, SchemaError,
     "decompose pattern 'Which film came out first, {a} or {b}?' names no base question"),
    ({"Which film came out first, {a} or {b}?": "When was {a} released?"}, SchemaError, "names no base question"),
    ({}, SchemaError, "decompose names no pattern"),
    ('["When was {a} released?"]', SchemaError, "decompose must be a JSON object"),
    ("{not json", SchemaError, "decompose is not valid JSON"),
])
def test_a_bad_decomposition_is_refused_at_definition_and_creates_nothing(db, decompose, error, message):
    with pytest.raises(error) as caught:
        compose(db, decompose=decompose)
    assert message in str(caught.value)
    assert "films_q" not in db.views()
    with pytest.raises(NoView):
        db.view("films_q")
    assert db.store.get_ledger() == []


def test_a_base_template_may_read_context_columns(db):
    view = compose(db, decompose={"Which film came out first, {a} or {b}?": ["When was the {topic} {a} released?"]})
    view.rows(fresh=True)
    assert view.explain("q4")["dependencies"][COMPOSE]["decomposition"]["bases"][0]["question"] == \
        "When was the remakes Alien released?"


def test_the_sql_form_takes_decompose_as_json_text(db):
    decompose = json.dumps(DECOMPOSE).replace("'", "''")
    execute(db, f"""
        CREATE CONTINUOUS VIEW races AS LLM_GENERATE(
          PROMPT = 'Answer from the facts.', CONTEXT = STREAM(questions), DATA_SOURCE = STREAM(films),
          DOCUMENT = '{{text}}', PARTITION = 'topic', DECOMPOSE = '{decompose}')
    """)
    rows = {r["qid"]: r["answer"] for r in db.view("races").rows(fresh=True)}
    assert set(rows) == {"q1", "q2", "q3", "q4"} and len(calls(db, COMPOSE)) == 4 and len(calls(db, BASE)) == 5
    assert db.view("races").explain("q1")["dependencies"][COMPOSE]["decomposition"]["pattern"] == \
        "Which film came out first, {a} or {b}?"
    with pytest.raises(SchemaError, match="names no base question"):
        execute(db, "CREATE CONTINUOUS VIEW bad AS LLM_GENERATE(PROMPT = 'p', CONTEXT = STREAM(questions), "
                    "DATA_SOURCE = STREAM(films), DECOMPOSE = '{\"Who won, {a} or {b}?\": []}')")
    assert "bad" not in db.views()


def test_a_paraphrase_finds_a_pattern_declared_in_other_words_and_never_one_of_the_other_direction(db):
    view = compose(db, decompose={"Which film came out first, {a} or {b}?": RELEASED})
    view.rows(fresh=True)
    before = set(bases(db))
    db.table("questions").upsert([
        {"qid": "p1", "topic": "films", "question": "Which film was released earlier, Heat or Alien?"},
        {"qid": "p2", "topic": "films", "question": "Which film was released more recently, Heat or Alien?"}])
    view.rows(fresh=True)
    p1 = view.explain("p1")["dependencies"][COMPOSE]["decomposition"]
    assert p1["pattern"] == "Which film came out first, {a} or {b}?"
    assert {b["question"].lower() for b in p1["bases"]} == {"when was the film alien released?",
                                                            "when was the film heat released?"}
    assert set(bases(db)) - before == {"base[\"films\"]: which film was released more recently, heat or alien?"}
    p2 = view.explain("p2")["dependencies"][COMPOSE]["decomposition"]
    assert p2["pattern"] is None  # "more recently" is the other direction: answered over the documents


def test_composites_in_shards_equal_them_unsharded(db):
    sharded, plain = compose(db, shards=2), compose(db, name="plain")
    assert sharded.rows(fresh=True).rows == plain.rows(fresh=True).rows
    db.table("films").upsert({"doc_id": "alien", "topic": "films", "text": "Alien was released in 1980."})
    db.table("questions").upsert({"qid": "q3", "topic": "remakes", "question": "Which film came out first, Heat "
                                                                              "or Up?"})  # to the other partition
    assert sharded.rows(fresh=True).rows == plain.rows(fresh=True).rows
