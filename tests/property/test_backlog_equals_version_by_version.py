"""A backlog of versions maintained in passes (``Maintainer._apply_pass``: several versions computed, then committed
together) leaves every version of every view as maintaining each version on its own does, and pays the same calls,
each once: checked against a twin database maintained after every step, with ``rows(as_of=v)`` at every version;
also with each pass's calls planned and paid before it is computed (``deltamem.pass_plan``), as on PostgreSQL."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deltamem as dm
from tests.helpers import apply_doc_step, doc_steps, paid_hashes, scripted_db
from tests.property.test_incremental_equals_recompute import COLUMNS, build_views

STEP = doc_steps(st.integers(min_value=0, max_value=5),
                 st.sampled_from(["alpha", "beta", "gamma", "a much longer text about gamma rays"]))


def open_twin() -> tuple[dm.Database, dm.Table, dm.ManualClock]:
    clock = dm.ManualClock()
    db = scripted_db(":memory:", clock=clock)
    docs = db.table("docs", key="id", columns=COLUMNS, ttl="2 days")
    build_views(db)
    db.maintain()
    return db, docs, clock


@pytest.mark.parametrize("planned", [False, True], ids=["computed-as-it-goes", "planned-and-prepaid"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=2, max_size=12))
def test_a_backlog_maintained_in_passes_keeps_every_version_and_pays_each_call_once(planned, steps):
    stepwise, stepwise_docs, stepwise_clock = open_twin()
    backlog, backlog_docs, backlog_clock = open_twin()
    backlog.store.remote = planned  # as on PostgreSQL: each pass's calls planned by a dry run and paid in one round
    expected: dict[int, dict[str, list]] = {}
    for step in steps:
        apply_doc_step(stepwise, stepwise_docs, step, stepwise_clock)
        stepwise.maintain()
        expected[stepwise.version] = {name: stepwise.view(name).rows().rows for name in stepwise.views()}
        apply_doc_step(backlog, backlog_docs, step, backlog_clock)  # committed, not maintained yet
    assert backlog.version == stepwise.version
    backlog.maintain()
    for version, views in expected.items():
        for name, rows in views.items():
            assert backlog.view(name).rows(as_of=version).rows == rows, f"view {name} differs at version {version}"
    paid = paid_hashes(backlog)
    assert len(paid) == len(set(paid)), "a call was paid twice"
    assert set(paid) == set(paid_hashes(stepwise))
    # The baselines too: each version of the pass counted its own refresh, as if committed alone.
    assert backlog.store.get_costs_by_version() == stepwise.store.get_costs_by_version()
    for name, baseline in stepwise.store.get_baselines().items():
        other = backlog.store.get_baselines()[name]
        assert (other.refreshes, other.cost.calls, other.cost.prompt_tokens) == \
            (baseline.refreshes, baseline.cost.calls, baseline.cost.prompt_tokens), name
        assert (other.no_memo.calls, other.no_memo.prompt_tokens) == \
            (baseline.no_memo.calls, baseline.no_memo.prompt_tokens), name
    stepwise.close()
    backlog.close()
