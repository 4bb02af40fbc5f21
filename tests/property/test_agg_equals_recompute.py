"""sem_agg's core property: after any sequence of upserts, deletes and batches, a tree-mode aggregate equals a
from-scratch build node for node (same node keys, same prompt hashes, same digest), and each version asks for exactly
the node summaries whose prompt it changed.

``fold=True`` is order-dependent, so it is checked for what it promises instead: an insert-only version costs one
call per new row; any other version leaves it equal to the from-scratch tree (and asks for exactly the nodes whose
prompt differs from what it had stored, the pending ones included); its tree's shape always equals the from-scratch
one.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deltamem as dm
from tests.helpers import paid_hashes, scripted_db

KEYS = st.integers(min_value=0, max_value=40)
TEXTS = st.sampled_from(["alpha", "beta", "gamma", "delta", "a much longer text about gamma rays"])
TAGS = st.sampled_from(["x", "y", "z"])
ROWS = st.tuples(KEYS, TEXTS, TAGS)

STEP = st.one_of(
    st.tuples(st.just("upsert"), ROWS),
    st.tuples(st.just("delete"), KEYS),
    st.tuples(st.just("batch"), st.lists(ROWS, min_size=1, max_size=20), st.lists(KEYS, max_size=20)),
)
COLUMNS = {"id": "int", "text": "text", "tag": "text"}
TREE_VIEWS = ("agg", "grouped")


def build_views(db: dm.Database) -> None:
    """A deep tree (fanout 2: its cap of 6 children is often reached), one tree per tag, and a fold view."""
    docs = db.table("docs")
    db.view("agg", docs.sem_agg("Write a digest of {text}", fanout=2))
    db.view("grouped", docs.sem_agg("Write a digest of {text}", fanout=3, group_by="tag", out="summary"))
    db.view("folded", docs.sem_agg("Write a digest of {text}", fanout=2, fold=True))


def node_state(db: dm.Database, view: str) -> dict[str, str]:
    """Every tree node of a view: its key (group, level, last row key) -> its fingerprint (the prompt's hash)."""
    return {key: entry.fingerprint for (_op, key), entry in db.store.get_all_state(view).items()
            if key.startswith('["node"')}


def from_scratch(rows: list[dict]) -> tuple[dict[str, list[dict]], dict[str, dict[str, str]]]:
    """Each view's rows and node state when built at once over ``rows`` in a fresh database."""
    db = scripted_db()
    docs = db.table("docs", key="id", columns=COLUMNS)
    if rows:
        docs.upsert(rows)
    build_views(db)
    db.maintain()
    views = db.views()
    result = {view: db.view(view).rows().rows for view in views}, {view: node_state(db, view) for view in views}
    db.close()
    return result


def num_requested(db: dm.Database, view: str) -> int:
    return len(db.store.get_ledger(view))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=8))
def test_sem_agg_equals_recompute_and_asks_only_for_changed_prompts(steps):
    db = scripted_db()
    docs = db.table("docs", key="id", columns=COLUMNS)
    build_views(db)
    before_nodes = {view: {} for view in (*TREE_VIEWS, "folded")}
    for step in steps:
        rows_before = {row["id"]: row for row in docs.rows()}
        requested = {view: num_requested(db, view) for view in before_nodes}
        if step[0] == "upsert":
            key, text, tag = step[1]
            docs.upsert({"id": key, "text": text, "tag": tag})
        elif step[0] == "delete":
            docs.delete(step[1])
        else:
            with db.batch():
                upserts = {key: (text, tag) for key, text, tag in step[1]}  # one write per key in a batch
                docs.upsert([{"id": key, "text": text, "tag": tag} for key, (text, tag) in upserts.items()])
                deletes = [key for key in step[2] if key not in upserts]
                if deletes:
                    docs.delete(deletes)
        db.maintain()
        rows_after = {row["id"]: row for row in docs.rows()}
        expected, scratch_nodes = from_scratch(list(rows_after.values()))
        for view in TREE_VIEWS:
            assert db.view(view).rows().rows == expected[view], f"view {view} diverged after {step}"
            assert node_state(db, view) == scratch_nodes[view], f"tree of {view} diverged after {step}"
            changed = [k for k, h in scratch_nodes[view].items() if before_nodes[view].get(k) != h]
            assert num_requested(db, view) - requested[view] == len(changed), f"calls of {view} after {step}"
            before_nodes[view] = scratch_nodes[view]

        folded = node_state(db, "folded")
        assert folded.keys() == scratch_nodes["folded"].keys(), f"fold tree shape diverged after {step}"
        entered = rows_after.keys() - rows_before.keys()
        left = rows_before.keys() - rows_after.keys()
        edited = [k for k in rows_after.keys() & rows_before.keys() if rows_after[k]["text"] != rows_before[k]["text"]]
        num_calls = num_requested(db, "folded") - requested["folded"]
        if rows_before and entered and not left and not edited:
            assert num_calls == len(entered), f"a fold costs one call per new row, after {step}"
            assert [r["num_rows"] for r in db.view("folded").rows()] == [len(rows_after)]
        elif entered or left or edited:
            assert db.view("folded").rows().rows == expected["folded"], f"fold did not fall back after {step}"
            assert folded == scratch_nodes["folded"]
            changed = [k for k, h in folded.items() if before_nodes["folded"].get(k) != h]
            assert num_calls == len(changed), f"fold fallback asked for other calls after {step}"
        before_nodes["folded"] = folded
    paid = paid_hashes(db)
    assert len(paid) == len(set(paid)), "a call was paid twice"
    db.close()
