"""Versions, AS OF reads, history, subscriptions, freshness and TTL expiry."""

from __future__ import annotations

import threading

import pytest

import deltamem as dm
from deltamem.errors import FreshnessTimeout
from deltamem.llm.scripted import ScriptedLLM
from tests.helpers import scripted_db


def docs_view(db: dm.Database, **table_options) -> dm.View:
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text", "ts": "float"}, **table_options)
    return db.view("v", docs.sem_map("Summarise {text}", out="s"))


def test_every_commit_gets_the_next_version(store_path):
    db = scripted_db(store_path)
    docs = db.table("docs", key="id")
    written = [docs.upsert({"id": 1, "text": "a"}), docs.upsert({"id": 2, "text": "b"}), docs.delete(1)]
    assert [w.version for w in written] == [1, 2, 3]
    assert [(w.inserted, w.updated, w.deleted, w.unchanged) for w in written] == [(1, 0, 0, 0), (1, 0, 0, 0),
                                                                                   (0, 0, 1, 0)]
    assert db.version == 3


def test_a_write_that_changes_nothing_makes_no_version_and_counts_it_unchanged(store_path):
    clock = dm.ManualClock()
    db = scripted_db(store_path, clock=clock)
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text"}, ttl="1 day")
    assert docs.upsert([{"id": 1, "text": "a"}, {"id": 2, "text": "b"}]) == dm.Written(1, inserted=2)
    assert docs.upsert({"id": 1, "text": "a"}) == dm.Written(None, unchanged=1)  # the same row again
    assert docs.delete(7) == dm.Written(None, unchanged=1)  # a key that is not there
    with db.batch() as batch:
        docs.upsert({"id": 2, "text": "b"})
        docs.delete(8)
    assert (batch.version, batch.written) == (None, dm.Written(None, unchanged=2))
    assert db.version == 1 and db.store.get_latest_version() == 1
    mixed = docs.upsert([{"id": 1, "text": "a"}, {"id": 2, "text": "B"}, {"id": 3, "text": "c"}])
    assert mixed == dm.Written(2, inserted=1, updated=1, unchanged=1) and mixed.changed == 2
    clock.advance("20 hours")
    assert docs.upsert({"id": 1, "text": "a"}).version is None  # no version, but the TTL starts again
    clock.advance("20 hours")
    assert db.expire() == 2 and [r["id"] for r in docs.rows()] == [1]  # 2 and 3 expired; 1 was renewed


def test_as_of_reads_an_older_version_and_history_keeps_every_version(store_path):
    db = scripted_db(store_path)
    view = docs_view(db)
    docs = db.table("docs")
    v1 = docs.upsert({"id": 1, "text": "first"}).version
    db.maintain()
    v2 = docs.upsert({"id": 1, "text": "second"}).version
    db.maintain()
    v3 = docs.delete(1).version
    db.maintain()
    assert [r["text"] for r in view.rows(as_of=v1)] == ["first"]
    assert [r["text"] for r in view.rows(as_of=v2)] == ["second"]
    assert view.rows(as_of=v3).rows == [] and view.rows().rows == []
    history = view.history(1)
    assert [(h.valid_from, h.valid_to, h.row["text"]) for h in history] == [(v1, v2, "first"), (v2, v3, "second")]


def test_as_of_ahead_of_the_view_is_refused(store_path):
    db = scripted_db(store_path)
    view = docs_view(db)
    db.table("docs").upsert({"id": 1, "text": "x"})
    with pytest.raises(dm.DeltamemError, match="ahead of it. Pass fresh=True"):
        view.rows(as_of=99)


def test_subscribe_sees_inserts_updates_deletes_and_expiries_in_order(store_path):
    clock = dm.ManualClock()
    db = scripted_db(store_path, clock=clock, background=True, poll_interval=0.05)
    view = docs_view(db, ttl="1 day")
    docs = db.table("docs")
    docs.upsert({"id": 1, "text": "old", "ts": 0.0})
    view.rows(fresh=True, timeout=10)
    seen: list[dm.ChangeRow] = []
    done = threading.Event()

    def collect(change: dm.ChangeRow) -> None:
        seen.append(change)
        if len(seen) == 6:
            done.set()

    with view.subscribe(collect):
        v_ins = docs.upsert({"id": 2, "text": "new", "ts": 0.0}).version
        v_upd = docs.upsert({"id": 1, "text": "newer", "ts": 0.0}).version
        v_del = docs.delete(2).version
        clock.advance("2 days")  # the background loop expires id 1
        assert done.wait(10), seen
    versions_and_diffs = [(c.version, c.diff, c.row["text"]) for c in seen]
    assert versions_and_diffs[:5] == [
        (1, 1, "old"),  # the snapshot
        (v_ins, 1, "new"),
        (v_upd, -1, "old"),
        (v_upd, 1, "newer"),
        (v_del, -1, "new"),
    ]
    assert versions_and_diffs[5][1:] == (-1, "newer") and versions_and_diffs[5][0] > v_del
    db.close()


def test_background_maintenance_reports_lag_and_fresh_waits_for_it(store_path):
    db = scripted_db(store_path, llm=ScriptedLLM(latency=0.2), background=True)
    view = docs_view(db)
    version = db.table("docs").upsert([{"id": i, "text": f"t{i}"} for i in range(3)]).version
    stale = view.rows()
    assert stale.lag >= 1 and stale.version < version
    fresh = view.rows(fresh=True, timeout=10)
    assert (fresh.version, fresh.lag, len(fresh)) == (version, 0, 3)
    db.close()


def test_fresh_read_times_out_with_a_clear_error(store_path):
    db = scripted_db(store_path, llm=ScriptedLLM(latency=1.0), background=True)
    view = docs_view(db)
    db.table("docs").upsert([{"id": i, "text": f"t{i}"} for i in range(3)])
    with pytest.raises(FreshnessTimeout, match='View "v" reflects version'):
        view.rows(fresh=True, timeout=0.1)
    db.close()


def test_ttl_column_sets_when_a_row_expires(store_path):
    clock = dm.ManualClock(start=1000.0)
    db = scripted_db(store_path, clock=clock)
    view = docs_view(db, ttl="10 s", ttl_column="ts")
    db.table("docs").upsert([{"id": 1, "text": "early", "ts": 995.0}, {"id": 2, "text": "late", "ts": 1005.0}])
    db.maintain()
    assert db.expire() == 0
    clock.advance(6)  # now 1006: id 1 expired at 1005
    assert db.expire() == 1
    assert [r["id"] for r in view.rows(fresh=True)] == [2]
    assert [r["id"] for r in db.table("docs").rows()] == [2]


def test_a_rewrite_renews_the_ttl(store_path):
    clock = dm.ManualClock()
    db = scripted_db(store_path, clock=clock)
    docs_view(db, ttl="1 day")
    docs = db.table("docs")
    docs.upsert({"id": 1, "text": "a"})
    clock.advance("20 hours")
    docs.upsert({"id": 1, "text": "a"})
    clock.advance("20 hours")
    assert db.expire() == 0
    clock.advance("5 hours")
    assert db.expire() == 1


def test_keep_mode_frees_state_but_keeps_outputs(store_path):
    clock = dm.ManualClock()
    db = scripted_db(store_path, clock=clock)
    view = docs_view(db, ttl="1 day", expire="keep")
    db.table("docs").upsert({"id": 1, "text": "a"})
    kept = view.rows(fresh=True).rows
    clock.advance("2 days")
    assert db.expire() == 1
    assert view.rows(fresh=True).rows == kept
    assert db.table("docs").rows() == []
    assert db.store.get_all_state("v") == {}
    db.table("docs").upsert({"id": 1, "text": "b"})  # a new row under the same key replaces the kept output
    assert [r["text"] for r in view.rows(fresh=True)] == ["b"]


def test_retract_mode_retracts_outputs(store_path):
    clock = dm.ManualClock()
    db = scripted_db(store_path, clock=clock)
    view = docs_view(db, ttl="1 day")
    db.table("docs").upsert({"id": 1, "text": "a"})
    db.maintain()
    clock.advance("2 days")
    db.expire()
    assert view.rows(fresh=True).rows == []


def test_a_view_can_read_a_view(store_path):
    db = scripted_db(store_path)
    first = docs_view(db)
    second = db.view("w", first.sem_filter("{s} sounds good"))
    db.table("docs").upsert([{"id": i, "text": f"t{i}"} for i in range(12)])
    inner = {r["id"]: r for r in first.rows(fresh=True)}
    outer = second.rows(fresh=True)
    assert 0 < len(outer) < 12 and all(inner[r["id"]] == r for r in outer)
    assert second.version == first.version == db.version


def test_usage_reports_totals_by_view_and_operator_beside_full_recompute(store_path):
    db = scripted_db(store_path)
    docs_view(db)
    docs = db.table("docs")
    for i in range(4):
        docs.upsert({"id": i, "text": f"t{i}"})
        db.maintain()
    usage = db.usage()
    assert usage.calls == 4 and usage.by_view["v"].calls == 4
    assert usage.prompt_tokens > 0 and usage.output_tokens > 0 and usage.reused_tokens == 0
    full = usage.full_recompute["v"]
    # a full recompute asks for every row at every one of the 4 versions, and its memo answers those it asked before
    assert (full.refreshes, full.cost.calls, full.once_now.calls) == (4, 4, 4)
    assert usage.full_recompute_calls == 4
    # without a memo it would pay 1 + 2 + 3 + 4 calls
    assert full.no_memo.calls == usage.full_recompute_no_memo_calls == 10
