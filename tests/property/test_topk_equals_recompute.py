"""sem_topk's core property: with a transitive comparator (the test backend), any sequence of upserts, deletes,
batches and expiries leaves the view equal to a from-scratch recompute (and to the order the comparator defines);
every comparison asked for is one the stored state did not know, and no call is paid twice."""

from __future__ import annotations

import hashlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deltamem as dm
from deltamem.operators.topk import SemTopK, check_state
from tests.helpers import apply_doc_step, doc_steps, paid_hashes, recompute_from_scratch, scripted_db

KEYS = st.integers(min_value=0, max_value=7)
TEXTS = st.sampled_from(["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "alpha"])
STEP = doc_steps(KEYS, TEXTS, batch_size=4)

COLUMNS = {"id": "int", "text": "text", "tag": "text"}
INSTRUCTION = "the {text} makes the boldest claim"
VIEWS = {"top3": ("1:sem_topk", 3), "top1": ("1:sem_topk", 1), "kept": ("2:sem_topk", 2)}


def build_views(db: dm.Database) -> None:
    """Two top-k views over the table, and one over a filter (so rows also leave and return through it)."""
    docs = db.table("docs")
    db.view("top3", docs.sem_topk(INSTRUCTION, k=3))
    db.view("top1", docs.sem_topk(INSTRUCTION, k=1))
    db.view("kept", docs.sem_filter("{tag} {text} is kept").sem_topk(INSTRUCTION, k=2))


def expected_top(rows: list[dict], k: int) -> list[tuple[int, int]]:
    """(id, rank) of the k best rows by the test backend's score; equal texts rank by smaller id."""
    def score(row: dict) -> tuple[bytes, int]:
        digest = hashlib.sha256(("rank:text: " + row["text"]).encode()).digest()
        return bytes(255 - b for b in digest), row["id"]
    return [(row["id"], rank) for rank, row in enumerate(sorted(rows, key=score)[:k], start=1)]


def verdict_keys(db: dm.Database, view: str, op_id: str) -> set[str]:
    return {key for (op, key) in db.store.get_all_state(view) if op == f"{op_id}/cmp"}


def requested(db: dm.Database, view: str, op_id: str) -> int:
    return sum(1 for e in db.store.get_ledger(view) if e.operator == op_id)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=10))
def test_incremental_topk_equals_recompute_and_asks_each_comparison_once(steps):
    clock = dm.ManualClock()
    db = scripted_db(clock=clock)
    docs = db.table("docs", key="id", columns=COLUMNS, ttl="2 days")
    build_views(db)
    for step in steps:
        known = {name: verdict_keys(db, name, op_id) for name, (op_id, _k) in VIEWS.items()}
        asked = {name: requested(db, name, op_id) for name, (op_id, _k) in VIEWS.items()}
        apply_doc_step(db, docs, step, clock)
        db.maintain()
        expected, _needed = recompute_from_scratch({"docs": ("id", COLUMNS, docs.rows())}, build_views)
        top3 = [(r["id"], r["rank"]) for r in sorted(db.view("top3").rows().rows, key=lambda r: r["rank"])]
        assert top3 == expected_top(docs.rows(), 3), f"top3 is not the comparator's order after {step}"
        for name, (op_id, k) in VIEWS.items():
            assert db.view(name).rows().rows == expected[name], f"view {name} diverged after {step}"
            check_state(db.store, name, SemTopK(op_id, INSTRUCTION, k=k))
            # Every comparison asked for in this step is a pair the stored state did not hold before it.
            new = verdict_keys(db, name, op_id) - known[name]
            assert requested(db, name, op_id) - asked[name] == len(new), f"{name}: a known pair was asked again"
    paid = paid_hashes(db)
    assert len(paid) == len(set(paid)), "a call was paid twice"
    db.close()
