"""``usage().full_recompute``: what a full recompute at every refresh would really pay, in the same engine.

The counterfactual asks for every output again at every version that changed a view's inputs, and the memo answers
any call identical to one paid before. So a view run with ``strategy="full"`` paid exactly its own baseline, and a
view run with ``auto`` over the same edits gets the same baseline, whatever it skipped.
"""

from __future__ import annotations

from tests.helpers import scripted_db

QUESTIONS = {"qid": "text", "question": "text"}
DOCS = {"doc_id": "text", "qid": "text", "title": "text", "text": "text"}
NUM_QUESTIONS = 5


def _docs(q: int) -> list[dict]:
    return [{"doc_id": f"q{q}-{i}", "qid": f"q{q}", "title": f"Person {q}.{i}",
             "text": f"Person {q}.{i} was born in {1900 + 10 * q + i}. They lived in City {q}{i}."} for i in range(2)]


def _edits(q: int) -> list[dict | str]:
    """Four edits of question q's documents: a substitution, an irrelevant edit, its revert, a delete."""
    first, second = _docs(q)
    return [
        {**first, "text": first["text"].replace(f"{1900 + 10 * q}", f"{1950 + 10 * q}")},
        {**second, "text": second["text"] + " They liked tea."},
        second,  # back to its old text: the prompt of an earlier version, which the memo holds
        first["doc_id"],  # deleted
    ]


def _run_generate(strategy: str):
    db = scripted_db()
    db.table("questions", key="qid", columns=QUESTIONS).upsert(
        [{"qid": f"q{q}", "question": f"When was Person {q}.0 born?"} for q in range(NUM_QUESTIONS)])
    docs = db.table("docs", key="doc_id", columns=DOCS)
    docs.upsert([row for q in range(NUM_QUESTIONS) for row in _docs(q)])
    view = db.generate("answers", prompt="Answer from the documents.", context=db.table("questions"),
                       data_source=docs, partition="qid", strategy=strategy, question="{question}",
                       document="{title}: {text}")
    view.rows(fresh=True)
    for q in range(NUM_QUESTIONS):
        for edit in _edits(q):
            docs.delete(edit) if isinstance(edit, str) else docs.upsert(edit)
            view.rows(fresh=True)
    usage = db.usage()
    strategies = {d.strategy for d in db.store.get_decisions("answers")}
    db.close()
    return usage, strategies


def test_llm_generate_with_strategy_full_paid_exactly_its_full_recompute_baseline():
    usage, _ = _run_generate("full")
    paid, full = usage.by_view["answers"], usage.full_recompute["answers"]
    assert full.refreshes == 1 + 4 * NUM_QUESTIONS
    # 5 first answers, then per question 3 new prompts (the revert is answered by the memo; so is the partition
    # of every other question, whose prompt did not change)
    assert paid.calls == NUM_QUESTIONS * 4 == full.cost.calls == usage.full_recompute_calls
    assert (full.cost.prompt_tokens, full.cost.output_tokens) == (paid.prompt_tokens, paid.output_tokens)
    # the old figure, kept apart: every stored answer paid again at every refresh
    assert full.no_memo.calls == NUM_QUESTIONS * full.refreshes == usage.full_recompute_no_memo_calls


def test_llm_generate_with_auto_gets_the_baseline_of_a_full_run_over_the_same_edits():
    full_run, _ = _run_generate("full")
    auto_run, strategies = _run_generate("auto")
    assert {"skip", "append"} <= strategies  # auto answered otherwise than a full recompute would
    assert auto_run.full_recompute["answers"].cost.calls == full_run.by_view["answers"].calls == 20
    assert auto_run.full_recompute["answers"].refreshes == full_run.full_recompute["answers"].refreshes


def test_a_row_wise_view_pays_what_its_full_recompute_would_with_the_memo():
    db = scripted_db()
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text", "tag": "text"})
    docs.upsert([{"id": i, "text": f"text {i}", "tag": "a"} for i in range(6)])
    view = db.view("v", docs.sem_map("Summarise {text}", out="s"))
    view.rows(fresh=True)
    changes = [
        lambda: docs.upsert({"id": 0, "text": "text 0, edited", "tag": "a"}),  # 1 new prompt
        lambda: docs.upsert({"id": 1, "text": "text 1", "tag": "b"}),  # an unread column: the same prompt
        lambda: docs.delete(2),  # nothing to ask
        lambda: docs.upsert({"id": 2, "text": "text 2", "tag": "a"}),  # back: the memo answers it
        lambda: docs.upsert({"id": 6, "text": "text 3", "tag": "a"}),  # a prompt another row already had
        lambda: docs.upsert({"id": 0, "text": "text 0", "tag": "a"}),  # its old text: the memo again
    ]
    for change in changes:
        change()
        view.rows(fresh=True)
    usage = db.usage()
    full = usage.full_recompute["v"]
    assert usage.by_view["v"].calls == full.cost.calls == 6 + 1
    assert full.refreshes == 1 + len(changes)
    assert full.no_memo.calls == 6 + 6 + 6 + 5 + 6 + 7 + 7  # every stored value at every refresh
    db.close()


def test_the_baseline_memo_remembers_what_the_counterfactual_paid_where_deltamem_skipped():
    """An edit auto skipped, reverted, then made again: a full recompute would have paid the edited prompt the first
    time only (its memo answers the second), though deltamem's memo never saw that call."""
    db = scripted_db()
    db.table("questions", key="qid", columns=QUESTIONS).upsert({"qid": "q0", "question": "When was Person 0.0 born?"})
    docs = db.table("docs", key="doc_id", columns=DOCS)
    docs.upsert(_docs(0))
    view = db.generate("answers", prompt="Answer from the documents.", context=db.table("questions"),
                       data_source=docs, strategy="auto", question="{question}", document="{title}: {text}")
    view.rows(fresh=True)
    original = _docs(0)[0]
    substituted = _edits(0)[0]
    for row in (substituted, original, substituted):
        docs.upsert(row)
        view.rows(fresh=True)
    decisions = [(d.version, d.strategy) for d in db.store.get_decisions("answers")]
    usage = db.usage()
    assert decisions[1][1] == "skip"  # the first substitution: no call
    # a full recompute: the first answer, the substituted prompt once; the revert and the redo are memo hits
    assert usage.full_recompute["answers"].cost.calls == 2
    assert usage.full_recompute["answers"].no_memo.calls == 4
    db.close()
