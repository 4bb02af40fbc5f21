"""sem_join under any sequence of changes on both sides.

Without blocking the view equals a from-scratch build and each version asks exactly the pairs whose prompt it changed.
With blocking (``candidates=2``) the view holds exactly the pairs the documented rule picks, replayed here by a plain
oracle: each row whose text arrives is compared with its 2 nearest rows of the other side present then (ties by key);
a pair stays until one of its rows leaves or changes its text. The oracle's rule, applied to all rows at once, is what
a from-scratch build gives; every blocked output is in the full join; no call is paid twice.
"""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deltamem as dm
from deltamem.llm.scripted import HashingEmbedder
from deltamem.operators.join import SCORE_DECIMALS
from tests.helpers import num_requested_calls, paid_hashes, recompute_from_scratch, scripted_db

M = 2
SIDES = ("left", "right")
COLUMNS = {"id": "int", "title": "text", "tag": "text"}
TEMPLATE = "{title:left} goes well with {title:right}"
KEYS = st.integers(min_value=0, max_value=4)
TEXTS = st.sampled_from(["red apple", "green apple", "red car", "blue car", "green tea", "apple pie", "tea"])
TAGS = st.sampled_from(["x", "y"])
WRITE = st.tuples(st.sampled_from(SIDES), KEYS, TEXTS, TAGS)
STEP = st.one_of(
    st.tuples(st.just("upsert"), WRITE),
    st.tuples(st.just("delete"), st.sampled_from(SIDES), KEYS),
    st.tuples(st.just("batch"), st.lists(WRITE, min_size=1, max_size=4)),
)


def build_views(db: dm.Database) -> None:
    left, right = db.table("left"), db.table("right")
    db.view("full", left.sem_join(right, TEMPLATE))
    db.view("blocked", left.sem_join(right, TEMPLATE, candidates=M))


class BlockingOracle:
    """The blocking rule of ``deltamem.operators.join`` on plain dicts: ``pairs`` is the set of (left, right) keys the
    blocked view has asked about and still holds."""

    def __init__(self) -> None:
        self.embedder = HashingEmbedder()
        self.texts: dict[str, dict[int, str]] = {side: {} for side in SIDES}
        self.pairs: set[tuple[int, int]] = set()

    def apply(self, changes: dict[tuple[str, int], str | None]) -> set[tuple[int, int]]:
        """Apply one version's changes ((side, key) -> new title, None for a delete); return the pairs it asked."""
        probes = []
        for (side, key), text in changes.items():
            if text is not None and self.texts[side].get(key) == text:
                continue  # the template reads nothing that changed: verdicts stay
            self.pairs = {p for p in self.pairs if p[SIDES.index(side)] != key}
            if text is None:
                self.texts[side].pop(key, None)
            else:
                self.texts[side][key] = text
                probes.append((side, key))
        asked = set()
        for side, key in probes:
            other = "right" if side == "left" else "left"
            for partner in self.nearest(self.texts[side][key], self.texts[other]):
                pair = (key, partner) if side == "left" else (partner, key)
                if pair not in self.pairs:
                    asked.add(pair)
                    self.pairs.add(pair)
        return asked

    def nearest(self, text: str, others: dict[int, str]) -> list[int]:
        keys = sorted(others)
        if len(keys) <= M:
            return keys
        vec = [float(x) for x in self.embedder.embed([text])[0]]
        scores = {}
        for k in keys:
            other = [float(x) for x in self.embedder.embed([others[k]])[0]]
            scores[k] = float(np.round(sum(a * b for a, b in zip(vec, other)), SCORE_DECIMALS))
        return sorted(keys, key=lambda k: (-scores[k], k))[:M]


def pair_of(row: dict) -> tuple[int, int]:
    return row["id"], row["id_right"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=8))
def test_join_views_follow_their_rule_under_any_changes_and_pay_each_call_once(steps):
    db = scripted_db()
    tables = {side: db.table(side, key="id", columns=COLUMNS) for side in SIDES}
    build_views(db)
    oracle = BlockingOracle()
    needed_before: dict[tuple[str, str, str], str] = {}
    for step in steps:
        requested = {view: num_requested_calls(db, view) for view in ("full", "blocked")}
        changes: dict[tuple[str, int], str | None] = {}
        if step[0] == "upsert":
            side, key, text, tag = step[1]
            tables[side].upsert({"id": key, "title": text, "tag": tag})
            changes[(side, key)] = text
        elif step[0] == "delete":
            _op, side, key = step
            if tables[side].get(key) is not None:
                changes[(side, key)] = None
            tables[side].delete(key)
        else:
            with db.batch():
                for side, key, text, tag in step[1]:
                    tables[side].upsert({"id": key, "title": text, "tag": tag})
                    changes[(side, key)] = text  # the last write of a key wins
        db.maintain()
        asked = oracle.apply(changes)

        current = {side: ("id", COLUMNS, tables[side].rows()) for side in SIDES}
        expected, needed = recompute_from_scratch(current, build_views)
        full = expected["full"]
        assert db.view("full").rows().rows == full, f"the full join diverged after {step}"
        changed = [k for k, h in needed.items() if k[:2] == ("full", "1:sem_join") and needed_before.get(k) != h]
        assert num_requested_calls(db, "full") - requested["full"] == len(changed), f"wrong calls for {step}"

        blocked = db.view("blocked").rows().rows
        assert blocked == [row for row in full if pair_of(row) in oracle.pairs], f"blocked view diverged: {step}"
        held = {tuple(json.loads(json.loads(k))) for (op, k) in db.store.get_all_state("blocked") if op == "1:sem_join"}
        assert held == oracle.pairs, f"blocked verdicts diverged after {step}"
        assert num_requested_calls(db, "blocked") - requested["blocked"] == len(asked), f"wrong calls for {step}"

        at_once = BlockingOracle()
        at_once.apply({(side, row["id"]): row["title"] for side in SIDES for row in tables[side].rows()})
        scratch = {tuple(json.loads(json.loads(key))) for (view, op, key) in needed
                   if view == "blocked" and op == "1:sem_join"}
        assert scratch == at_once.pairs, "a from-scratch blocked build is not every row's nearest at once"
        assert expected["blocked"] == [row for row in full if pair_of(row) in at_once.pairs]
        needed_before = needed
    paid = paid_hashes(db)
    assert len(paid) == len(set(paid)), "a call was paid twice"
    db.close()
