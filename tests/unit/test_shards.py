"""Sharded views (``deltamem.shards``): what a user sees of one, and workers that share its shards."""

from __future__ import annotations

import json

import pytest

import deltamem as dm
from deltamem.changes import Delta, RowKey
from deltamem.errors import DependentViews, NoRow, SchemaError
from deltamem.leases import ViewLeases
from deltamem.shards import ShardFilter, shard_of
from deltamem.sql.executor import execute
from deltamem.store.sqlite import SQLiteStore
from tests.helpers import paid_hashes, scripted_db
from tests.unit.test_worker import _start_worker, _stop, _views_by_pid, _wait

QUESTIONS = {"qid": "text", "question": "text", "part": "int"}
DOCS = {"doc_id": "text", "text": "text", "part": "int"}


def _tables(db: dm.Database, parts: int = 6) -> tuple[dm.Table, dm.Table]:
    questions = db.table("questions", key="qid", columns=QUESTIONS)
    docs = db.table("docs", key="doc_id", columns=DOCS)
    if not questions.rows():
        questions.upsert([{"qid": f"q{p}", "question": f"What happened in part {p}?", "part": p}
                          for p in range(parts)])
        docs.upsert([{"doc_id": f"d{p}", "text": f"Part {p} had a storm.", "part": p} for p in range(parts)])
    return questions, docs


def _answers(db: dm.Database, shards: int, name: str = "answers") -> dm.View:
    questions, docs = _tables(db)
    return db.generate(name, prompt="Answer from the documents.", context=questions, data_source=docs,
                       partition="part", strategy="regenerate", max_tokens=8, shards=shards)


def test_a_shard_is_a_stable_hash_and_a_row_that_changes_shard_leaves_one_and_enters_the_other():
    assert shard_of("q1", 4) == shard_of("q1", 4) == 2  # the same in every process: blake2b, not hash()
    assert [shard_of(p, 1) for p in range(5)] == [0] * 5
    first, second = (next(p for p in range(100) if shard_of(p, 2) == s) for s in (0, 1))
    before, after = {"k": 1, "part": first}, {"k": 1, "part": second}
    move = Delta(RowKey("1"), before, after)
    assert ShardFilter("part", 0, 2).delta(move) == Delta(RowKey("1"), before, None)
    assert ShardFilter("part", 1, 2).delta(move) == Delta(RowKey("1"), None, after)
    stay = Delta(RowKey("1"), before, {**before, "text": "x"})
    assert ShardFilter("part", 0, 2).delta(stay) is stay and ShardFilter("part", 1, 2).delta(stay) is None


def test_a_sharded_view_is_listed_read_explained_costed_and_dropped_as_one_view():
    sharded, unsharded = scripted_db(), scripted_db()
    view, twin = _answers(sharded, 3), _answers(unsharded, 1)
    assert view.rows(fresh=True).rows == twin.rows(fresh=True).rows  # built
    for db in (sharded, unsharded):
        db.table("docs").upsert({"doc_id": "d0", "text": "Part 0 had a flood.", "part": 4})  # moves 0 -> 4
        db.table("questions").delete("q2")
    assert view.rows(fresh=True).rows == twin.rows(fresh=True).rows
    assert sharded.views() == ["answers"] and len(sharded._views) == 4  # the view and its 3 shard views
    assert view.definition.describe() == "context 'questions' and data_source 'docs' -> llm_generate in 3 shards"
    assert view.columns == twin.columns
    report = view.explain("q4")
    assert report["shard"].startswith("answers#") and report["row"] == twin.explain("q4")["row"]
    assert "flood" in json.dumps(report["dependencies"])
    with pytest.raises(NoRow, match="in any of its 3 shards"):
        view.explain("nope")
    usage, plain = sharded.usage(), unsharded.usage()
    assert set(usage.by_view) == set(usage.full_recompute) == {"answers"}  # shards' costs under their view
    assert usage.by_view["answers"].calls == plain.by_view["answers"].calls == 6 + 2  # built, then parts 0 and 4
    assert usage.full_recompute["answers"].cost == plain.full_recompute["answers"].cost
    assert usage.full_recompute["answers"].once_now == plain.full_recompute["answers"].once_now
    with pytest.raises(DependentViews, match='view "answers" reads table "docs". Drop') as refused:
        sharded.drop_table("docs")
    assert refused.value.views == ("answers",)
    with pytest.raises(SchemaError, match='"answers#0" is a shard of view "answers": drop that view'):
        sharded.drop_view("answers#0")
    assert sharded.drop_view("answers").views == ("answers",)
    assert sharded._views == {} and sharded.store.get_view_defs() == []
    assert _answers(sharded, 2).rows(fresh=True).rows == twin.rows().rows  # the names are free again
    sharded.close()
    unsharded.close()


@pytest.mark.parametrize(("options", "error"), [
    ({"shards": 2}, "shards=2 needs partition=<column>"),
    ({"shards": 0, "partition": "part"}, "shards must be an integer from 1 to 256, got 0"),
    ({"shards": "4", "partition": "part"}, "shards must be an integer from 1 to 256, got '4'"),
    ({"shards": True, "partition": "part"}, "got True"),
])
def test_bad_shards_are_refused_naming_what_is_wrong_and_create_nothing(options, error):
    with scripted_db() as db:
        questions, docs = _tables(db)
        with pytest.raises(SchemaError, match=error):
            db.generate("answers", prompt="Answer.", context=questions, data_source=docs, **options)
        assert db.store.get_view_defs() == []


def test_a_sharded_view_is_declared_again_unchanged_or_refused_and_goes_on_after_a_restart(tmp_path):
    path = str(tmp_path / "s.db")
    with scripted_db(path) as db:
        _answers(db, 3).rows(fresh=True)
        assert _answers(db, 3).name == "answers"  # the same definition: the view it is
        with pytest.raises(dm.DeltamemError, match='View "answers" exists with another definition'):
            _answers(db, 2)
    with scripted_db(path) as db:  # another process, later
        assert db.views() == ["answers"]
        db.table("docs").upsert({"doc_id": "d1", "text": "Part 1 had snow.", "part": 5})
        rows = db.view("answers").rows(fresh=True).rows
        with scripted_db() as fresh:
            _tables(fresh)
            fresh.table("docs").upsert({"doc_id": "d1", "text": "Part 1 had snow.", "part": 5})
            assert rows == _answers(fresh, 1).rows(fresh=True).rows


def test_sql_creates_and_explains_a_sharded_view():
    with scripted_db() as db:
        _tables(db)
        execute(db, "CREATE CONTINUOUS VIEW answers AS LLM_GENERATE(PROMPT = 'Answer.', CONTEXT = questions, "
                    "DATA_SOURCE = docs, PARTITION = 'part', SHARDS = 2)")
        assert len(execute(db, "SELECT * FROM answers").rows) == 6
        graph = execute(db, "EXPLAIN VIEW answers").rows
        assert [row[0] for row in graph][:2] == ["1:llm_generate", "shard_union"]  # then the cost estimate
        assert graph[1][1:] == ("answers#0, answers#1", "shards=2, partition='part'")
        assert "CASCADE dropped view answers" in execute(db, "DROP TABLE docs CASCADE").status


def test_fair_share_gives_each_owner_its_share_of_the_shards_and_shares_the_union_apart(tmp_path):
    store = SQLiteStore(str(tmp_path / "f.db"))
    views, light = ["v#0", "v#1", "v#2", "v#3", "v"], {"v"}
    first, second = ViewLeases(store, timeout=30.0, fair_share=True), ViewLeases(store, timeout=30.0, fair_share=True)
    assert first.hold(views, light=light) == set(views)  # alone: every view
    assert second.hold(views, light=light) == set()
    assert first.hold(views, light=light) == {"v#0", "v#1", "v"}  # 2 of 4 shards; the union on top
    assert second.hold(views, light=light) == {"v#2", "v#3"}
    store.close()


def test_two_workers_share_the_shards_of_one_view_and_pay_each_call_once(new_store_path):
    path = new_store_path()  # on both stores
    with scripted_db(path) as db:
        _answers(db, 4)
    workers = [_start_worker(path) for _ in range(2)]
    try:
        with scripted_db(path) as db:
            shards = [f"answers#{i}" for i in range(4)]
            _wait(lambda: sorted(_views_by_pid(db.store).values()) in ([2, 3], [3, 2]), what="two shards each")
            held = {lease.view: lease.pid for lease in db.store.get_leases() if lease.view in shards}
            assert sorted(list(held.values()).count(w.pid) for w in workers) == [2, 2]
            docs = db.table("docs")
            for j in range(12):  # one version each; every third moves a document to another part
                version = docs.upsert({"doc_id": f"d{j % 6}", "text": f"revision {j}", "part": (j + j // 3) % 6}).version
            _wait(lambda: (db.store.get_applied_version("answers") or -1) >= version, what="the stream to drain")
            paid = paid_hashes(db)
            assert len(paid) == len(set(paid))
            with scripted_db() as fresh:
                fresh.table("questions", key="qid", columns=QUESTIONS).upsert(db.table("questions").rows())
                fresh.table("docs", key="doc_id", columns=DOCS).upsert(docs.rows())
                assert db.view("answers").rows().rows == _answers(fresh, 1).rows(fresh=True).rows
    finally:
        for worker in workers:
            _stop(worker)

