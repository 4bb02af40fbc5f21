"""The cost model (``deltamem.cost_model``) as a pure function of its inputs."""

from __future__ import annotations

import pytest

from deltamem.cost_model import CostInputs, calibrated_rates, estimate, measured_reach, prior_reach
from deltamem.store.base import Decision


def _inputs(**changes) -> CostInputs:
    base = dict(passages=1000, outputs=50, passage_tokens=100.0, sentence_tokens=25.0, question_tokens=10.0,
                output_tokens=8.0, extraction_calls=1.0, extraction_tokens=(180.0, 80.0), k=5,
                reach={"all": 1.0, "dense": 0.01, "graph": 0.002}, delete_share=0.25, edit_rate=None,
                prompt_rate=500.0, output_rate=20.0)
    return CostInputs(**{**base, **changes})


def test_each_retrieval_pays_its_prompt_its_build_and_the_answers_a_change_reaches():
    e = estimate(_inputs(), "graph")
    costs = {c.retrieval: c for c in e.costs}
    assert costs["all"].prompt_tokens == 1000 * 100 + 10
    assert costs["all"].change_calls == 50  # every answer, every change
    assert costs["dense"].change_calls == pytest.approx(0.5)
    assert costs["graph"].change_calls == pytest.approx(0.75 + 50 * 0.002)  # extraction unless a delete, answers
    assert costs["graph"].build_calls == 1000 + 50
    answer = (5 * 100 + 10) / 500 + 8 / 20
    extraction = 180 / 500 + 80 / 20
    assert costs["graph"].change_seconds == pytest.approx(0.75 * extraction + 0.1 * answer)
    assert e.cheapest_per_change == "dense" and e.cheapest_with_build == "dense"
    # A view whose changes reach its answers rarely under graph retrieval, with many answers: graph is cheapest.
    busy = estimate(_inputs(outputs=5000, reach={"all": 1.0, "dense": 0.05, "graph": 0.0005}), "graph")
    assert busy.cheapest_per_change == "graph"


def test_the_hour_figure_needs_a_measured_edit_rate_and_rates_calibrate_to_measured_seconds():
    assert all(c.hour_seconds is None for c in estimate(_inputs(), "all").costs)
    hourly = estimate(_inputs(edit_rate=60.0), "all").costs[0]
    assert hourly.hour_seconds == pytest.approx(60 * hourly.change_seconds)
    assert calibrated_rates(1000, 20, 4.0) == pytest.approx((500 * 0.75, 20 * 0.75))  # 3 s predicted, 4 taken
    assert calibrated_rates(0, 0, 0.0) is None


def test_reach_is_measured_from_data_driven_decisions_only():
    decisions = [Decision("v", '"a"', 1, "full", "the view was built"), Decision("v", '"a"', 2, "skip", "x"),
                 Decision("v", '"a"', 3, "full", "a chunk it depends on changed"),
                 Decision("v", '"b"', 3, "skip", "y"), Decision("v", '"b"', 4, "retract", "gone")]
    assert measured_reach(decisions) == pytest.approx(1 / 3)
    assert measured_reach(decisions[:1]) is None
    assert prior_reach("all", 10, 5) == 1.0 and prior_reach("dense", 1000, 5) == pytest.approx(0.01)
