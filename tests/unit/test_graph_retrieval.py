"""``retrieve="graph"`` (``deltamem.operators.graph_retrieval``) and the cost model (``deltamem.cost_model``): what
a user sees of graph answers, what a change costs them, their explain, their bad options, and the estimate."""

from __future__ import annotations

import pytest

import deltamem as dm
from deltamem.errors import SchemaError
from deltamem.llm.embedding_runs import is_embedding_operator
from deltamem.operators.generate import GenerateOperator
from deltamem.sql.executor import execute
from tests.helpers import scripted_db

PASSAGES = {"pid": "text", "text": "text"}
QUESTIONS = {"qid": "text", "question": "text"}
CORPUS = {
    "p1": "Ada Lovelace worked with Charles Babbage.",
    "p2": "Charles Babbage lived in Marylebone.",
    "p3": "Grace Hopper wrote Cobol compilers.",
    "p4": "Marie Curie won a Nobel Prize.",
    "p5": "Pierre Curie married Marie Curie.",
    "p6": "Alan Turing studied at Cambridge.",
}


def _tables(db: dm.Database, corpus: dict[str, str] = CORPUS):
    passages = db.table("passages", key="pid", columns=PASSAGES)
    questions = db.table("questions", key="qid", columns=QUESTIONS)
    passages.upsert([{"pid": k, "text": t} for k, t in corpus.items()])
    questions.upsert([{"qid": "q1", "question": "Where did the colleague of Ada Lovelace live?"},
                      {"qid": "q2", "question": "Whom did Pierre Curie marry?"}])
    return passages, questions


def _answers(db: dm.Database, **options) -> dm.View:
    options = {"retrieve": "graph", "k": 2, "strategy": "skip", **options}
    return db.generate("answers", prompt="Answer from the passages.", context=db.table("questions"),
                       data_source=db.table("passages"), **options)


def _calls(db: dm.Database, view: str = "answers") -> tuple[int, int]:
    """(extraction calls, answer calls) on the ledger, memo hits included."""
    entries = [e for e in db.store.get_ledger(view) if not is_embedding_operator(e.operator)]
    extractions = sum(e.operator.endswith("/graph") for e in entries)
    return extractions, len(entries) - extractions


def test_a_question_reaches_the_passage_its_entity_leads_to_and_explain_shows_the_path():
    with scripted_db() as db:
        _tables(db)
        view = _answers(db, k=3)
        view.rows(fresh=True)
        graph = view.explain("q1")["dependencies"]["1:llm_generate"]["graph"]
        assert graph["seeds"] == ["ada lovelace"]
        assert "p2" in graph["passages"]  # only through charles babbage: two hops from the seed
        assert graph["subgraph"]['passage "p2"'] > 0 == graph["subgraph"].get('passage "p6"', 0)
        # The fact "ada lovelace worked with charles babbage" carries the seed's mass to babbage, and on to p2.
        assert graph["paths"]["p2"] == ["entity 'ada lovelace'", "entity 'charles babbage'", 'passage "p2"']
        assert graph["subgraph"]["entity 'ada lovelace'"] == max(graph["subgraph"].values())
        assert _calls(db) == (6, 2)  # one extraction per passage, one answer per question


def test_a_delete_costs_no_extraction_an_edit_one_and_only_reached_answers_are_asked_again():
    with scripted_db() as db:
        passages, _questions = _tables(db)
        view = _answers(db)
        view.rows(fresh=True)
        passages.delete("p6")  # Alan Turing: in no answer's subgraph
        view.rows(fresh=True)
        assert _calls(db) == (6, 2)
        reasons = {d.key: d.reason for d in db.store.get_decisions("answers") if d.strategy == "skip"}
        assert all("outside its subgraph" in r for r in reasons.values()) and len(reasons) == 2
        passages.upsert({"pid": "p1", "text": "Ada Lovelace corresponded with Charles Babbage."})  # in q1's prompt
        view.rows(fresh=True)
        assert _calls(db) == (7, 3)  # its own extraction, and q1 alone
        last = [d for d in db.store.get_decisions("answers") if d.version == db.version]
        assert {d.key: d.strategy for d in last} == {'"q1"': "full", '"q2"': "skip"}
        assert 'passage "p1" in its prompt changed' in next(d.reason for d in last if d.key == '"q1"')


def test_sql_declares_a_graph_view_and_explain_prints_its_subgraph_and_the_estimate():
    with scripted_db() as db:
        _tables(db)
        execute(db, "CREATE CONTINUOUS VIEW answers AS LLM_GENERATE(PROMPT = 'Answer.', CONTEXT = questions, "
                    "DATA_SOURCE = passages, RETRIEVE = 'graph', K = 2)")
        assert len(execute(db, "SELECT * FROM answers").rows) == 2
        rows = execute(db, "EXPLAIN VIEW answers KEY 'q1'").rows
        parts = [part for part, _detail in rows]
        assert "graph seeds (1:llm_generate)" in parts and "graph subgraph (1:llm_generate)" in parts
        evidence = [detail for part, detail in rows if part.startswith("graph evidence")]
        assert any("entity 'ada lovelace' -> passage" in e for e in evidence)
        plan = execute(db, "EXPLAIN VIEW answers").rows
        assert [r[0] for r in plan] == ["1:llm_generate", "estimate inputs", "estimate sources", "estimate all",
                                        "estimate dense", "estimate graph (this view)", "estimate verdict"]
        assert "k=2" in plan[0][2] and "retrieve='graph'" in plan[0][2]


@pytest.mark.parametrize(("options", "message"), [
    ({"retrieve": 3, "k": 2}, "k=2 is the number of passages of retrieve='graph'"),
    ({"k": 0}, "k=0 is out of range"),
    ({"k": True}, "k=True is out of range"),
    ({"retrieve": "graphs"}, "retrieve='graphs' is out of range"),
    ({"reuse": "semantic"}, "cannot be combined yet"),
    ({"decompose": {"Where did {x} live?": ["Who is {x}?"]}}, "retrieve='graph' and decompose cannot be combined"),
])
def test_bad_graph_options_are_refused_naming_the_problem_and_create_nothing(options, message):
    with scripted_db() as db:
        _tables(db)
        with pytest.raises(dm.DeltamemError, match=message):
            _answers(db, **options)
        assert db.views() == []


def test_graph_retrieval_takes_no_partition():
    with pytest.raises(SchemaError, match="builds one graph over all of DATA_SOURCE; it does not take partition"):
        GenerateOperator("1:llm_generate", "Answer.", retrieve="graph", partition="topic", question="{question}",
                         document="{text}")


def test_a_restart_keeps_the_graph_and_pays_no_extraction_again(new_store_path):
    path = new_store_path()  # on both stores
    with scripted_db(path) as db:
        _tables(db)
        _answers(db).rows(fresh=True)
    with scripted_db(path) as db:
        db.table("passages").upsert({"pid": "p7", "text": "Ada Lovelace wrote Notes."})
        rows = db.view("answers").rows(fresh=True).rows
        assert _calls(db)[0] == 7  # the new passage's extraction alone
        with scripted_db() as fresh:
            _tables(fresh, {**CORPUS, "p7": "Ada Lovelace wrote Notes."})
            assert rows == _answers(fresh).rows(fresh=True).rows


def test_the_estimate_measures_the_reach_of_each_retrieval_its_views_use_and_auto_takes_the_cheapest():
    with scripted_db() as db:
        passages, _questions = _tables(db)
        _answers(db).rows(fresh=True)
        estimate = db.view("answers").estimate()
        assert estimate.current == "graph"
        assert estimate.inputs.sources["reach[graph]"] == "prior"  # no DATA_SOURCE change reached it yet
        for i in range(4):
            passages.upsert({"pid": f"n{i}", "text": f"Tea number {i} is a drink."})
        db.view("answers").rows(fresh=True)
        estimate = db.view("answers").estimate()
        assert estimate.inputs.reach["graph"] == 0.0
        assert estimate.inputs.sources["reach[graph]"] == "measured on answers"
        assert estimate.inputs.extraction_calls == 1.0 and estimate.inputs.passages == 10
        graph = next(c for c in estimate.costs if c.retrieval == "graph")
        assert graph.change_calls == pytest.approx(1.0)  # its extraction; no answer reached
        db.generate("dense", prompt="Answer.", context=db.table("questions"), data_source=passages, retrieve=1)
        db.view("dense").rows(fresh=True)
        picked = db.generate("auto", prompt="Answer.", context=db.table("questions"), data_source=passages,
                             retrieve="auto", k=2)
        auto = picked.definition.plan["auto"]
        assert auto["chose"] == min(("all", "dense", "graph"), key=lambda r: (auto[r], r))
        for i in range(4, 30):  # more rows, other estimates: a second declaration still finds the view it made
            passages.upsert({"pid": f"n{i}", "text": f"Tea number {i} is a drink."})
        again = db.generate("auto", prompt="Answer.", context=db.table("questions"), data_source=passages,
                            retrieve="auto", k=2)
        assert again.definition.plan == picked.definition.plan
        with pytest.raises(SchemaError, match="not an LLM_GENERATE view"):
            db.view("graph_of", passages.sem_graph("{text}")).estimate()


def test_the_explain_command_prints_the_seeds_and_each_passage_s_evidence_path(tmp_path):
    from typer.testing import CliRunner

    from deltamem.cli import app

    path = str(tmp_path / "g.db")
    with scripted_db(path) as db:
        _tables(db)
        _answers(db, k=3).rows(fresh=True)
    result = CliRunner().invoke(app, ["explain", path, "answers", "q1"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "seeds ada lovelace" in result.output
    assert "passage p2: entity 'ada lovelace' -> entity 'charles babbage' -> passage \"p2\"" in result.output


def test_a_re_ranked_prompt_with_a_passage_no_edit_touched_is_not_appended_as_a_delta():
    with scripted_db() as db:
        passages, _questions = _tables(db)
        view = _answers(db, strategy="auto")  # on the test backend auto may append a delta as a new turn
        view.rows(fresh=True)
        before = view.explain("q1")["dependencies"]["1:llm_generate"]["graph"]["passages"]
        gone = next(p for p in before if p != "p1")
        passages.delete(gone)  # a prompt passage leaves; re-ranking brings in one that no edit touched
        view.rows(fresh=True)
        last = next(d for d in db.store.get_decisions("answers", '"q1"') if d.version == db.version)
        assert last.strategy == "full" and f'passage "{gone}" in its prompt changed' in last.reason
