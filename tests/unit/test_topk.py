"""sem_topk: pairwise comparisons stored and reused; inserts placed by binary insertion; deletes promote from the
reserve with no call when its best is known, with the fewest comparisons otherwise."""

from __future__ import annotations

import hashlib
import math

import pytest

import deltamem as dm
from deltamem.changes import RowKey, encode_key, key_order
from deltamem.errors import BackendError, SchemaError, TemplateError
from deltamem.llm.runner import RetryPolicy
from deltamem.llm.scripted import ScriptedLLM
from deltamem.operators.topk import ORDER_KEY, SemTopK, check_state, parse_choice
from tests.helpers import num_requested_calls, paid_hashes, scripted_db

INSTRUCTION = "the {text} makes the most outrageous claim"
OP_ID = "1:sem_topk"
COLUMNS = {"id": "int", "text": "text", "tag": "text"}


def score(text: str) -> bytes:
    """The test backend's opinion of a row: larger is better (see ``ScriptedLLM``)."""
    return hashlib.sha256(("rank:text: " + text).encode()).digest()


def expected_ids(rows: list[dict], k: int) -> list[int]:
    """The top k ids in rank order, computed without the operator: by score, equal texts by smaller id."""
    return [r["id"] for r in sorted(rows, key=lambda r: (_neg(score(r["text"])), r["id"]))[:k]]


def _neg(digest: bytes) -> bytes:
    return bytes(255 - b for b in digest)


def topk_db(n: int, k: int = 10, **options) -> tuple[dm.Database, dm.Table, dm.View]:
    db = scripted_db(**options)
    docs = db.table("docs", key="id", columns=COLUMNS)
    if n:
        docs.upsert([{"id": i, "text": f"claim {i}", "tag": "a"} for i in range(n)])
    view = db.view("top", docs.sem_topk(INSTRUCTION, k=k))
    view.rows(fresh=True)
    return db, docs, view


def cost(db: dm.Database, change) -> int:
    """Comparisons the change asked for (paid or memo hits)."""
    before = num_requested_calls(db)
    change()
    db.maintain()
    return num_requested_calls(db) - before


def ranked(view: dm.View) -> list[int]:
    return [r["id"] for r in sorted(view.rows(fresh=True), key=lambda r: r["rank"])]


def check(db: dm.Database, k: int = 10) -> None:
    check_state(db.store, "top", SemTopK(OP_ID, INSTRUCTION, k=k))


def num_candidates(db: dm.Database) -> int:
    """The documented promotion cost rule, read off the stored state: reserve rows from the latest ``was_top`` row
    on that have no stored loss to another reserve row."""
    order = db.store.get_state("top", OP_ID, [ORDER_KEY])[ORDER_KEY].value
    reserve = order["reserve"]
    start = max((i for i, (_k, was_top) in enumerate(reserve) if was_top), default=0)
    inside = {k for k, _t in reserve}
    suffix = [k for k, _t in reserve[start:]]
    entries = db.store.get_state("top", OP_ID, suffix)
    return sum(1 for k in suffix if not set(entries[k].value["lost_to"]) & inside)


def test_build_ranks_the_k_best_rows_with_rank_1_to_k():
    db, docs, view = topk_db(200)
    assert ranked(view) == expected_ids(docs.rows(), 10)
    assert sorted(r["rank"] for r in view.rows()) == list(range(1, 11))
    assert view.columns == ("id", "text", "tag", "rank")
    check(db)


def test_insert_that_cannot_enter_costs_exactly_one_comparison():
    db, docs, view = topk_db(200)
    outside = 0
    for i in range(200, 260):
        top_before = ranked(view)
        paid = cost(db, lambda i=i: docs.upsert({"id": i, "text": f"late claim {i}", "tag": "a"}))
        if ranked(view) == top_before:
            outside += 1
            assert paid == 1, f"row {i} did not enter the top but cost {paid} comparisons"
    assert outside > 50
    check(db)


def test_inserts_that_enter_cost_at_most_log2_k_plus_one_comparisons():
    db, docs, view = topk_db(200)
    bound = math.ceil(math.log2(10)) + 1
    entered = []
    for i in range(200, 600):
        paid = cost(db, lambda i=i: docs.upsert({"id": i, "text": f"late claim {i}", "tag": "a"}))
        if i in ranked(view):
            entered.append(paid)
        else:
            assert paid == 1
    assert bound == 5 and entered and max(entered) <= bound, entered
    assert ranked(view) == expected_ids(docs.rows(), 10)
    check(db)


def test_rows_below_k_are_placed_by_binary_insertion():
    db, docs, view = topk_db(0, k=10)
    for n in range(10):  # the (n+1)-th row: ceil(log2(n+1)) comparisons at most
        paid = cost(db, lambda n=n: docs.upsert({"id": n, "text": f"claim {n}", "tag": "a"}))
        assert paid <= math.ceil(math.log2(n + 1))
    assert ranked(view) == expected_ids(docs.rows(), 10)


def test_delete_from_the_top_with_a_known_successor_costs_nothing():
    db, docs, view = topk_db(200)
    i = 200
    while True:  # insert until one row enters: the row it pushes out becomes the known best of the reserve
        docs.upsert({"id": i, "text": f"late claim {i}", "tag": "a"})
        db.maintain()
        if i in ranked(view):
            break
        i += 1
    pushed_out = [k for k, was_top in db.store.get_state("top", OP_ID, [ORDER_KEY])[ORDER_KEY].value["reserve"]
                  if was_top][-1]
    assert num_candidates(db) == 1
    assert cost(db, lambda: docs.delete(ranked(view)[0])) == 0
    assert ranked(view)[-1] == int(pushed_out)
    assert ranked(view) == expected_ids(docs.rows(), 10)
    check(db)


def test_delete_needing_comparisons_costs_candidates_minus_one_and_then_fewer():
    db, docs, view = topk_db(256)
    costs = []
    for _ in range(3):
        c = num_candidates(db)
        paid = cost(db, lambda: docs.delete(ranked(view)[0]))
        assert paid == c - 1, (paid, c)
        costs.append(paid)
        assert ranked(view) == expected_ids(docs.rows(), 10)
    assert costs[0] > 0
    check(db)


def test_delete_of_a_reserve_row_costs_nothing_and_changes_no_output():
    db, docs, view = topk_db(50)
    outside = next(r["id"] for r in docs.rows() if r["id"] not in ranked(view))
    version = db.version
    assert cost(db, lambda: docs.delete(outside)) == 0
    assert view.changes(version + 1, db.version) == []
    check(db)


def test_rank_changes_are_output_updates():
    _db, docs, view = topk_db(30, k=5)
    before = {r["id"]: r["rank"] for r in view.rows()}
    top = ranked(view)[0]
    docs.delete(top)
    rows = view.rows(fresh=True)
    changes = view.changes(rows.version, rows.version)
    moved = {c.row["id"] for c in changes if c.diff > 0}
    assert moved == set(ranked(view))  # every remaining row moved up one rank (and one entered at rank 5)
    assert {(c.row["id"], c.row["rank"]) for c in changes if c.diff < 0} == set(before.items())
    assert {r["id"]: r["rank"] for r in rows} == {k: before[k] - 1 for k in before if k != top} | {
        ranked(view)[-1]: 5}


def test_update_of_an_unread_column_costs_nothing_and_updates_the_row():
    db, docs, view = topk_db(40)
    first = ranked(view)[0]
    assert cost(db, lambda: docs.upsert({"id": first, "text": f"claim {first}", "tag": "b"})) == 0
    row = next(r for r in view.rows() if r["id"] == first)
    assert (row["tag"], row["rank"]) == ("b", 1)
    check(db)


def test_update_of_the_text_is_a_delete_and_an_insert_of_the_new_text():
    db, docs, view = topk_db(100)
    first = ranked(view)[0]
    docs.upsert({"id": first, "text": "a completely different claim", "tag": "a"})
    db.maintain()
    assert ranked(view) == expected_ids(docs.rows(), 10)
    check(db)  # the old text's verdicts are gone, the others are kept
    entry = db.store.get_state("top", OP_ID, [encode_key(first)])[encode_key(first)]
    assert entry.fingerprint == hashlib.sha256(b"text: a completely different claim").hexdigest()


def test_verdicts_are_reused_across_refreshes_and_a_known_text_pays_nothing():
    db, docs, view = topk_db(100)
    kth = encode_key(ranked(view)[-1])
    beaten = db.store.get_state("top", OP_ID, [kth])[kth].value["beat"]
    victim = next(r for r in docs.rows() if encode_key(r["id"]) in beaten)  # its last comparison was with the K-th
    paid = len(paid_hashes(db))
    docs.delete(victim["id"])
    db.maintain()
    assert cost(db, lambda: docs.upsert(victim)) == 1  # the same key and text again: a memo hit, nothing paid
    assert len(paid_hashes(db)) == paid
    assert cost(db, lambda: docs.upsert({**victim, "tag": "b"})) == 0  # its stored verdict stands: not even asked
    assert ranked(view) == expected_ids(docs.rows(), 10)
    verdicts = [e for (op, _k), e in db.store.get_all_state("top").items() if op == f"{OP_ID}/cmp"]
    assert verdicts and all(e.cost.calls == 1 and e.value["winner"] for e in verdicts)


def test_equal_texts_are_never_compared_and_the_smaller_key_ranks_higher():
    db, docs, view = topk_db(0, k=3)
    assert cost(db, lambda: docs.upsert([{"id": i, "text": "same claim", "tag": "a"} for i in (5, 2, 9, 7)])) == 0
    assert ranked(view) == [2, 5, 7]


def test_a_failed_comparison_shows_the_row_unranked_and_is_retried_at_the_next_refresh():
    db, docs, view = topk_db(30, llm=ScriptedLLM(failures={"poison": 3}), retry=RetryPolicy(3, base_delay=0.0))
    docs.upsert({"id": 99, "text": "poison claim", "tag": "a"})
    rows = {r["id"]: r for r in view.rows(fresh=True)}
    assert rows[99]["rank"] is None and "scripted failure" in rows[99]["_error"]
    assert len(rows) == 11 and db.usage().failures == 1
    check(db)
    db.refresh()
    rows = {r["id"]: r for r in view.rows(fresh=True)}
    assert all("_error" not in r for r in rows.values())
    assert ranked(view) == expected_ids(docs.rows(), 10)
    last = db.store.get_ledger()[-1]
    assert last.reason == "retry" and last.outcome in ("paid", "memo")
    check(db)


class FailsAfterTheFirst(ScriptedLLM):
    """Answers the first call about "poison", fails the next ``times`` such calls, then answers again."""

    def __init__(self, times: int):
        super().__init__()
        self.seen = 0
        self.times = times

    def complete(self, request):
        if "poison" in request.messages[-1].content:
            self.seen += 1
            if 1 < self.seen <= 1 + self.times:
                raise BackendError("scripted failure after the first poison call")
        return super().complete(request)


def test_a_placement_that_failed_midway_keeps_its_verdicts_for_the_retry():
    db, docs, view = topk_db(30, llm=FailsAfterTheFirst(3), retry=RetryPolicy(3, base_delay=0.0))
    text = max((f"poison claim {i}" for i in range(1000)), key=score)  # it wins the gate, then binary insertion
    docs.upsert({"id": 99, "text": text, "tag": "a"})
    (row,) = [r for r in view.rows(fresh=True) if r["id"] == 99]
    assert row["rank"] is None and "after the first poison call" in row["_error"]
    gate = [e.call_hash for e in db.store.get_ledger() if e.outcome == "paid"][-1]
    asked = cost(db, db.refresh)
    assert ranked(view) == expected_ids(docs.rows(), 10) and ranked(view)[0] == 99
    assert asked == 4  # binary insertion to rank 1 among the 9 rows above the K-th: the gate verdict was kept
    assert [e.call_hash for e in db.store.get_ledger()].count(gate) == 1
    check(db)


class FailsOnOnePair(ScriptedLLM):
    """Fails the first ``times`` calls that compare the two texts "poison one" and "poison two"."""

    def __init__(self, times: int):
        super().__init__()
        self.left = times

    def complete(self, request):
        user = request.messages[-1].content
        if "poison one" in user and "poison two" in user and self.left > 0:
            self.left -= 1
            raise BackendError("scripted failure for the poison pair")
        return super().complete(request)


def test_a_failed_promotion_shows_both_rows_unranked_and_is_retried():
    poison = max(score("poison one"), score("poison two"))
    best = next(f"claim {i}" for i in range(100_000) if score(f"claim {i}") > poison)
    db, docs, view = topk_db(0, k=1, llm=FailsOnOnePair(3), retry=RetryPolicy(3, base_delay=0.0))
    docs.upsert({"id": 1, "text": best, "tag": "a"})
    docs.upsert([{"id": 2, "text": "poison one", "tag": "a"}, {"id": 3, "text": "poison two", "tag": "a"}])
    db.maintain()
    assert ranked(view) == [1]
    docs.delete(1)  # the reserve's best is not known: 2 and 3 must meet, and that call fails
    rows = view.rows(fresh=True)
    assert [(r["id"], r["rank"]) for r in rows] == [(2, None), (3, None)]
    assert all("poison pair" in r["_error"] for r in rows)
    check(db, k=1)
    db.refresh()
    assert ranked(view) == expected_ids(docs.rows(), 1)
    assert all("_error" not in r for r in view.rows())
    check(db, k=1)


class CyclicLLM(ScriptedLLM):
    """A comparator with rock-paper-scissors cycles: each text gets a class 0..2 and class c beats class c+1."""

    def answer(self, request):
        user = request.messages[-1].content
        if not user.endswith("Answer A or B."):
            return super().answer(request)
        a, b = user.split("Item A:\n", 1)[1].split("\n\nItem B:\n", 1)
        b = b.rsplit("\n\n", 1)[0]
        ca, cb = score(a)[0] % 3, score(b)[0] % 3
        if ca == cb:
            return super().answer(request)
        return "A" if (cb - ca) % 3 == 1 else "B"


def test_non_transitive_verdicts_give_a_deterministic_view_and_are_each_asked_once():
    def run() -> tuple[list[int], list[str]]:
        db, docs, view = topk_db(40, k=5, llm=CyclicLLM())
        for i in range(40, 70):
            docs.upsert({"id": i, "text": f"claim {i}", "tag": "a"})
            db.maintain()
        for i in range(0, 70, 3):
            docs.delete(i)
            db.maintain()
        check(db, k=5)
        asked = [e.call_hash for e in db.store.get_ledger()]
        return ranked(view), asked

    first, asked = run()
    assert len(first) == 5 and run() == (first, asked)
    assert len(asked) == len(set(asked)), "a pair was asked twice"


def test_an_upstream_error_passes_through_unranked():
    db = scripted_db(llm=ScriptedLLM(failures={"poison": 99}))
    docs = db.table("docs", key="id", columns=COLUMNS)
    view = db.view("v", docs.sem_filter("{text} is a claim").sem_topk(INSTRUCTION, k=2))
    docs.upsert({"id": 1, "text": "poison", "tag": "a"})
    (row,) = view.rows(fresh=True)
    assert row["rank"] is None and row["_error"].startswith("scripted failure")
    assert db.usage().by_operator.get(("v", "2:sem_topk")) is None


@pytest.mark.parametrize("params, message", [
    ({"k": 0}, "k=0"), ({"k": "3"}, "k='3'"), ({"k": True}, "k=True"), ({"k": 3, "max_tokens": 0}, "max_tokens=0"),
])
def test_bad_parameters_raise_naming_the_value_and_change_nothing(params, message):
    db = scripted_db()
    docs = db.table("docs", key="id", columns=COLUMNS)
    with pytest.raises(SchemaError, match=message):
        db.view("top", docs.sem_topk(INSTRUCTION, **params))
    assert db.views() == []


def test_unknown_column_or_no_column_raises_before_any_call():
    db = scripted_db()
    docs = db.table("docs", key="id", columns=COLUMNS)
    with pytest.raises(TemplateError, match="'txt'.*Did you mean 'text'"):
        docs.sem_topk("the {txt} is best", k=3)
    with pytest.raises(TemplateError, match="reads no column"):
        docs.sem_topk("the best one", k=3)
    assert db.views() == [] and num_requested_calls(db) == 0


def test_parse_choice_reads_a_or_b_and_otherwise_defers_to_the_tie_rule():
    answers = ("A", "b)", "Item B is better", "**A**", "The answer is A.", "both", "either A or B")
    assert [parse_choice(t) for t in answers] == ["A", "B", "B", "A", "A", None, None]


def test_order_entry_key_is_not_a_row_key():
    with pytest.raises(ValueError):
        key_order(RowKey(ORDER_KEY))
