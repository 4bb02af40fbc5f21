"""The edit-stream benchmark's answer figures: the gold-answer metrics, the paired bootstrap, the gold after each
edit, and the figures recomputed from the result's JSON alone."""

from __future__ import annotations

import json

import pytest

from deltamem.bench.answer_quality import contains_match, normalize_answer, paired_bootstrap_ci, token_f1
from deltamem.bench.datasets import Question, default_data_dir
from deltamem.bench.edit_stream import Edit, gold_answers, headline_figures, run_edit_stream


@pytest.mark.parametrize("answer, gold, contains, f1", [
    ("The Eiffel Tower.", "eiffel tower", True, 1.0),
    ("It is in Paris, France", "Paris", True, 1 / 3),  # precision 1/5, recall 1
    ("an apple", "The Apple!", True, 1.0),  # articles and punctuation do not count
    ("London", "Paris", False, 0.0),
    ("yes", "Yes.", True, 1.0),
    ("yes indeed", "yes", True, 0.0),  # yes/no/noanswer match whole or not at all
    ("no", "noanswer", False, 0.0),
])
def test_contains_match_and_token_f1_normalise_like_squad(answer, gold, contains, f1):
    assert contains_match(answer, gold) is contains
    assert token_f1(answer, gold) == pytest.approx(f1)


def test_normalize_answer_drops_articles_only_as_words():
    assert normalize_answer("Theodore and the Anthem") == "theodore and anthem"


def test_the_paired_bootstrap_is_seeded_and_brackets_the_difference():
    a, b = [1, 0, 1, 1, 0, 1, 1, 1], [1, 0, 0, 1, 0, 0, 1, 0]
    low, high = paired_bootstrap_ci(a, b, seed=3)
    assert paired_bootstrap_ci(a, b, seed=3) == (low, high)
    assert 0 <= low <= sum(a) / 8 - sum(b) / 8 <= high <= 1
    assert paired_bootstrap_ci([], []) is None
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap_ci([1], [1, 0])


def test_the_gold_is_the_substituted_answer_from_its_substitution_on():
    questions = [Question("q1", "Who?", "Ada", (), ()), Question("q2", "When?", "1815", (), ())]
    edits = [Edit("q1", "distractor add", False, "q1/x", {}), Edit("q2", "answer substitution", True, "q2/y", {},
                                                                    new_answer="1817"),
             Edit("q1", "answer substitution", True, "q1/z", {}, new_answer="Grace"),
             Edit("q1", "supporting deletion", True, "q1/z", None), Edit("q2", "distractor add", False, "q2/w", {})]
    assert gold_answers(edits, questions) == ["Ada", "1817", "Grace", "Grace", "1817"]


def _edit(qid, relevant, gold, new_answer=None, **by_strategy):
    return {"qid": qid, "kind": "k", "relevant": relevant, "doc_id": f"{qid}/d", "new_answer": new_answer, "gold": gold,
            "strategies": {s: {"answer": a, "decided": d, "contains": contains_match(a, gold), "f1": token_f1(a, gold)}
                           for s, (a, d) in by_strategy.items()}}


def test_headline_figures_count_verifications_and_score_against_the_gold():
    result = {
        "config": {"bootstrap_resamples": 1000, "bootstrap_seed": 0},
        "strategies": {"full": {}, "auto": {}},
        "initial_answers": {"q1": "Ada", "q2": "Paris"},
        "edits": [
            _edit("q1", False, "Ada", full=("Ada Lovelace", ["full"]), auto=("Ada", ["verify"])),
            _edit("q2", False, "Paris", full=("in Paris", ["full"]), auto=("Paris", ["verify"])),
            _edit("q1", True, "Grace", "Grace", full=("Grace", ["full"]), auto=("Ada", ["verify"])),
            _edit("q2", True, "Paris", full=("London", ["full"]), auto=("London", ["regenerate"])),
            _edit("q1", False, "Grace", full=("Grace", ["full"]), auto=("Grace", ["skip", "shadow"])),
        ],
    }
    figures = headline_figures(result)
    assert figures["full_changed_on_irrelevant"] == pytest.approx(2 / 3)  # Ada -> Ada Lovelace, Paris -> in Paris
    full, auto = figures["strategies"]["full"], figures["strategies"]["auto"]
    assert (full["contains"], auto["contains"]) == (pytest.approx(4 / 5), pytest.approx(3 / 5))
    assert auto["agreement"] == pytest.approx(2 / 5) and auto["takeup"] == 0.0 and auto["takeup_cases"] == 1
    assert (auto["verify_count"], auto["verify_precision"], auto["verify_recall"]) == (3, pytest.approx(2 / 3),
                                                                                       pytest.approx(2 / 3))
    assert auto["skip_count"] == 0 and auto["skip_precision"] is None  # the shadow check kept full's answer
    assert (auto["kept_count"], auto["kept_agreement"]) == (3, 0.0)  # the three kept answers all differ from full's
    assert full["contains_vs_full_ci"] is None
    low, high = auto["contains_vs_full_ci"]
    assert -1 <= low <= -1 / 5 <= high <= 0


def test_the_headline_figures_recompute_from_the_json_alone():
    result = run_edit_stream(data_file=default_data_dir() / "2wikimultihopqa" / "dev_000_099.json", llm="test",
                             num_questions=3, edits_per_question=4, seed=0, strategies=["auto", "regenerate"])
    saved = json.loads(json.dumps(result))
    assert len(saved["edits"]) == saved["config"]["edits"] and set(saved["initial_answers"]) == {
        e["qid"] for e in saved["edits"]}
    for edit in saved["edits"]:  # the per-edit scores are the metrics of the listed answer and gold
        for answer in edit["strategies"].values():
            assert answer["contains"] == contains_match(answer["answer"], edit["gold"])
            assert answer["f1"] == token_f1(answer["answer"], edit["gold"])
    figures = headline_figures(saved)
    assert figures["full_changed_on_irrelevant"] == saved["config"]["full_changed_on_irrelevant"]
    for strategy, numbers in figures["strategies"].items():
        assert numbers == {name: saved["strategies"][strategy][name] for name in numbers}, strategy
    skipped = [e["strategies"]["auto"]["decided"] == ["skip"] for e in saved["edits"]]
    assert saved["strategies"]["auto"]["skip_count"] == sum(skipped) > 0
