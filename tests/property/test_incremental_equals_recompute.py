"""The core property: any sequence of changes leaves every view equal to a from-scratch recompute; at each version
the operators ask for exactly the calls whose prompt that version changed, and each distinct call is paid once. On both
stores (``store_kind``): each example opens a new, empty one."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deltamem as dm
from tests.helpers import apply_doc_step, doc_steps, num_requested_calls, paid_hashes, recompute_from_scratch, scripted_db

KEYS = st.integers(min_value=0, max_value=5)
TEXTS = st.sampled_from(["alpha", "beta", "gamma", "delta", "a much longer text about gamma rays"])
STEP = doc_steps(KEYS, TEXTS)


COLUMNS = {"id": "int", "text": "text", "tag": "text"}


def build_views(db: dm.Database) -> None:
    """A filter-then-map chain, an extract, and a view that reads a view."""
    docs = db.table("docs")
    mapped = db.view("mapped", docs.sem_filter("{text} is interesting").sem_map("Summarise {text}", out="summary"))
    db.view("extracted", docs.sem_extract("Read {text}", fields={"topic": "the topic", "mood": "the mood"}))
    db.view("shortened", mapped.sem_map("Shorten {summary}", out="short"))


# function_scoped_fixture: the fixtures give a store kind and a factory, which every example calls for a new store.
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(steps=st.lists(STEP, min_size=1, max_size=10))
def test_incremental_views_equal_recompute_and_pay_each_needed_call_once(store_kind, new_store_path, steps):
    clock = dm.ManualClock()
    db = scripted_db(":memory:" if store_kind == "sqlite" else new_store_path(), clock=clock)
    docs = db.table("docs", key="id", columns=COLUMNS, ttl="2 days")
    build_views(db)
    needed_ever: set[str] = set()
    needed_before: dict[tuple[str, str, str], str] = {}
    for step in steps:
        requested_before = num_requested_calls(db)
        apply_doc_step(db, docs, step, clock)
        db.maintain()
        expected, needed = recompute_from_scratch({"docs": ("id", COLUMNS, docs.rows())}, build_views)
        assert sorted(expected) == ["extracted", "mapped", "shortened"]
        for name, rows in expected.items():
            assert db.view(name).rows().rows == rows, f"view {name} diverged after {step}"
        changed = [k for k, h in needed.items() if needed_before.get(k) != h]
        assert num_requested_calls(db) - requested_before == len(changed), f"wrong number of calls for {step}"
        needed_before = needed
        needed_ever |= set(needed.values())
    paid = paid_hashes(db)
    assert len(paid) == len(set(paid)), "a call was paid twice"
    assert set(paid) == needed_ever, "paid calls differ from the calls some version needed"
    db.close()
