"""Dropping tables and views: one store transaction, RESTRICT or CASCADE, nothing left behind but the ledger, and
maintenance, readers and subscribers that stop cleanly when what they work on is dropped under them."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from deltamem import open_store
from deltamem.changes import RowWrite
from deltamem.errors import ConfigError, DependentViews, NoTable, NoView
from deltamem.llm.scripted import ScriptedLLM
from deltamem.store.base import TableDef, ViewCommit, ViewDef
from tests.helpers import scripted_db

DELTAMEM = [sys.executable, "-m", "deltamem"]


def _docs(db, rows=({"id": 1, "text": "alpha"}, {"id": 2, "text": "beta"})):
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
    docs.upsert(list(rows))
    return docs


def _everything(store, view):
    """What the store keeps for a view, apart from the ledger."""
    return (store.get_view_rows(view), store.get_all_state(view), store.get_decisions(view),
            store.get_view_changes(view, 0, store.get_latest_version()), store.get_applied_version(view))


# --- the store --------------------------------------------------------------------------------------------------------

def test_store_drop_removes_a_view_and_its_dependents_in_one_transaction(new_store_path):
    store = open_store(new_store_path())
    store.put_table_def(TableDef("docs", "id"))
    store.commit([RowWrite("docs", "1", {"id": 1})], committed_at=0.0)
    first = store.put_view_def(ViewDef("a", {"op": "sem_map", "input": {"source": "table", "name": "docs"}}))
    store.put_view_def(ViewDef("b", {"op": "sem_map", "input": {"source": "view", "name": "a"}}))
    assert store.commit_view(ViewCommit("a", 1, view_id=first.id, outputs={"1": {"id": 1, "s": "x"}}))
    version = store.get_latest_version()

    with pytest.raises(DependentViews, match='view "b" reads view "a"'):
        store.drop([], ["a"], cascade=False, committed_at=1.0, writes=[RowWrite("docs", "2", {"id": 2})])
    assert store.get_latest_version() == version  # not even the writes that came with the drop
    assert store.get_row("docs", "2") is None and store.get_view_rows("a") == {"1": {"id": 1, "s": "x"}}

    dropped = store.drop([], ["a"], cascade=True, committed_at=1.0, note="drop view a")
    assert (dropped.views, dropped.version) == (("a", "b"), version + 1)
    assert [v.name for v in store.get_view_defs()] == [] and store.get_view_id("a") is None
    assert _everything(store, "a") == ({}, {}, [], [], None)
    # a commit computed for the dropped view lands nowhere, not even in a view created again under its name
    again = store.put_view_def(ViewDef("a", {"op": "sem_map", "input": {"source": "table", "name": "docs"}}))
    assert again.id != first.id
    assert not store.commit_view(ViewCommit("a", 5, view_id=first.id, outputs={"1": {"id": 1, "s": "stale"}}))
    assert store.get_view_rows("a") == {} and store.get_applied_version("a") is None
    store.close()


def test_store_drop_table_takes_its_rows_and_change_log_and_refuses_later_writes(new_store_path):
    store = open_store(new_store_path())
    store.put_table_def(TableDef("docs", "id"))
    store.put_table_def(TableDef("other", "id"))
    store.commit([RowWrite("docs", "1", {"id": 1}), RowWrite("other", "1", {"id": 1})], committed_at=0.0)
    store.drop(["docs"], [], cascade=False, committed_at=1.0)
    assert store.get_rows("docs") == {} and store.get_changes(0, 10, ["docs"]) == []
    assert [c.table for c in store.get_changes(0, 10, ["docs", "other"])] == ["other"]
    with pytest.raises(NoTable, match='Table "docs" does not exist'):  # e.g. a process that still caches it
        store.commit([RowWrite("docs", "2", {"id": 2})], committed_at=2.0)
    with pytest.raises(NoTable, match="Table \"docs\" does not exist. Valid names: 'other'"):
        store.drop(["docs"], [], cascade=False, committed_at=2.0)
    store.close()


def test_table_columns_keep_their_declared_order_when_reopened(new_store_path):
    path = new_store_path()
    db = scripted_db(path)
    docs = db.table("docs", key="zid", columns={"zid": "text", "title": "text", "body": "text"})
    db.view("v", docs.sem_map("Sum up {body}", out="gist"))
    db.close()
    db = scripted_db(path)  # a new process: everything from the store
    assert db.table("docs").columns == ("zid", "title", "body")
    assert db.view("v").columns == ("zid", "title", "body", "gist")
    db.close()


# --- the engine -------------------------------------------------------------------------------------------------------

def test_restrict_names_the_dependents_and_changes_nothing(store_path):
    db = scripted_db(store_path)
    docs = _docs(db)
    summaries = db.view("summaries", docs.sem_map("Summarise {text}", out="summary"))
    db.view("short", summaries.sem_filter("{summary} is short"))
    summaries.rows(fresh=True)
    before = (db.version, db.tables(), db.views(), docs.rows(), summaries.rows().rows, db.usage().calls)
    with pytest.raises(DependentViews) as caught:
        db.drop_table("docs")
    assert caught.value.views == ("summaries", "short")
    assert 'view "summaries" reads table "docs", view "short" reads view "summaries"' in str(caught.value)
    with pytest.raises(NoTable, match=r"\"summaries\" is a view, not a table; drop it with drop_view\('summaries'\)"):
        db.drop_table("summaries")
    with pytest.raises(NoView, match="Did you mean 'summaries'"):
        db.drop_view("sumaries")
    assert (db.version, db.tables(), db.views(), docs.rows(), summaries.rows().rows, db.usage().calls) == before
    db.close()


def test_cascade_drops_dependents_and_keeps_what_was_paid_on_the_ledger(store_path):
    db = scripted_db(store_path)
    docs = _docs(db)
    summaries = db.view("summaries", docs.sem_map("Summarise {text}", out="summary"))
    db.view("short", summaries.sem_filter("{summary} is short"))
    db.maintain()
    paid = db.usage()
    dropped = db.drop_table("docs", cascade=True)
    assert (dropped.tables, dropped.views, dropped.version) == (("docs",), ("summaries", "short"), db.version)
    assert (db.tables(), db.views()) == ([], [])
    assert _everything(db.store, "summaries")[:4] == ({}, {}, [], [])
    after = db.usage()
    assert (after.calls, after.by_view["summaries"].calls) == (paid.calls, paid.by_view["summaries"].calls) == \
        (paid.calls, 2)
    kept, before = after.full_recompute["summaries"], paid.full_recompute["summaries"]
    assert (kept.refreshes, kept.cost) == (before.refreshes, before.cost)  # the baseline stays beside it
    assert kept.once_now.calls == 0  # recomputing a dropped view now costs nothing
    db.close()


def test_drop_then_recreate_gives_a_fresh_view_that_recomputes(store_path):
    db = scripted_db(store_path)
    docs = _docs(db)
    view = db.view("v", docs.sem_map("Summarise {text}", out="s"))
    old = view.rows(fresh=True).rows
    docs.upsert({"id": 1, "text": "alpha, edited"})  # history before the drop
    view.rows(fresh=True)
    db.drop_view("v")
    dropped_at = db.version
    with pytest.raises(NoView):
        view.rows()

    same = db.view("v", docs.sem_map("Summarise {text}", out="s"))  # the same definition: rebuilt from scratch
    assert [r["s"] for r in same.rows(fresh=True)] != [r["s"] for r in old]  # row 1 changed since
    assert [h.valid_from for h in same.history(1)] == [dropped_at]  # no history from the first view
    outcomes = [(e.version, e.outcome) for e in db.store.get_ledger("v") if e.version == dropped_at]
    assert sorted(outcomes) == [(dropped_at, "memo"), (dropped_at, "memo")]  # recomputed; identical calls from the memo

    db.drop_view("v")
    other = db.view("v", docs.sem_filter("{text} is about alpha"))
    assert other.columns == ("id", "text") and all("s" not in row for row in other.rows(fresh=True))
    assert {op for op, _key in db.store.get_all_state("v")} == {"1:sem_filter"}
    db.close()


def test_drops_in_a_batch_commit_with_its_writes_or_not_at_all(store_path):
    db = scripted_db(store_path)
    docs = _docs(db)
    db.table("notes", key="id", columns={"id": "int", "note": "text"})
    db.view("v", docs.sem_map("Summarise {text}", out="s"))
    version = db.version
    with pytest.raises(DependentViews):
        with db.batch():
            db.table("notes").upsert({"id": 1, "note": "kept only if the drop works"})
            db.drop_table("docs")
    assert db.version == version and db.table("notes").rows() == [] and "docs" in db.tables()
    with db.batch() as batch:
        db.table("notes").upsert({"id": 1, "note": "committed with the drop"})
        assert db.drop_view("v") is None  # applied when the batch commits
    assert batch.dropped.views == ("v",) and batch.version == batch.dropped.version == version + 1
    assert db.table("notes").get(1) == {"id": 1, "note": "committed with the drop"}
    with pytest.raises(ConfigError, match="one cascade setting"):
        with db.batch():
            db.drop_table("notes")
            db.drop_table("docs", cascade=True)
    db.close()


def test_search_index_of_a_dropped_view_is_not_reused_by_a_new_one(store_path):
    db = scripted_db(store_path)
    docs = _docs(db, [{"id": 1, "text": "red apples"}, {"id": 2, "text": "green pears"}])
    view = db.view("idx", docs.sem_index("text"))
    assert [r["id"] for r in view.search("red apples", 1, fresh=True)] == [1]
    db.drop_view("idx")
    docs.delete(1)
    again = db.view("idx", docs.sem_index("text"))
    assert [r["id"] for r in again.search("red apples", 2, fresh=True)] == [2]
    db.close()


# --- concurrency ------------------------------------------------------------------------------------------------------

class GatedLLM(ScriptedLLM):
    """Answers only once ``gate`` opens; ``waiting`` is set when the first call arrives."""

    def __init__(self):
        super().__init__()
        self.gate, self.waiting = threading.Event(), threading.Event()

    def complete(self, request):
        self.waiting.set()
        assert self.gate.wait(60), "test: the gate was never opened"
        return super().complete(request)


def test_a_drop_that_races_with_a_build_discards_the_build_and_maintenance_goes_on(store_path):
    llm = GatedLLM()
    db = scripted_db(store_path, llm=llm, background=True)
    docs = _docs(db)
    db.view("v", docs.sem_map("Summarise {text}", out="s"))
    assert llm.waiting.wait(60)  # the maintenance thread is inside the build of the first "v"
    reader_error: list[BaseException] = []

    def read() -> None:
        try:
            db.view("v").rows(fresh=True, timeout=60)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            reader_error.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    db.drop_view("v")  # does not wait for the build
    reader.join(30)
    assert not reader.is_alive() and isinstance(reader_error[0], NoView)  # woken by the drop, not left waiting
    assert 'View "v" was dropped' in str(reader_error[0])
    replacement = db.view("v", docs.sem_filter("{text} is about alpha"))
    llm.gate.set()
    rows = replacement.rows(fresh=True, timeout=60)
    assert db.maintainer.error is None
    assert {op for op, _key in db.store.get_all_state("v")} == {"1:sem_filter"}  # nothing of the old build landed
    assert all("s" not in row for row in rows)
    db.close()


def test_a_subscriber_to_a_dropped_view_stops_cleanly(store_path):
    db = scripted_db(store_path, background=True)
    docs = _docs(db)
    view = db.view("v", docs.sem_map("Summarise {text}", out="s"))
    view.rows(fresh=True, timeout=60)
    seen = []
    subscription = view.subscribe(seen.append)
    db.drop_view("v")
    subscription._thread.join(30)
    assert not subscription._thread.is_alive()
    assert isinstance(subscription.error, NoView) and "was dropped" in str(subscription.error)
    db.view("v", docs.sem_map("Summarise {text}", out="s"))  # a new view under the name
    docs.upsert({"id": 3, "text": "gamma"})
    db.view("v").rows(fresh=True, timeout=60)
    assert [c.diff for c in seen] == [1, 1]  # the first view's snapshot, nothing of the new one
    db.close()


def test_the_subscribe_command_ends_with_an_error_when_another_process_drops_the_view(new_store_path):
    path = new_store_path()
    db = scripted_db(path)
    docs = _docs(db)
    db.view("v", docs.sem_map("Summarise {text}", out="s"))
    db.maintain()
    proc = subprocess.Popen([*DELTAMEM, "subscribe", path, "v", "--llm", "test", "--embedder", "test"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().rstrip("\n") == "version\tdiff\tid\ttext\ts"
        snapshot = [proc.stdout.readline().split("\t")[:3] for _ in range(2)]  # it has subscribed
        db.drop_view("v")
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert snapshot == [["1", "+1", "1"], ["1", "+1", "2"]]
    assert proc.returncode == 1 and out == ""  # nothing after the drop
    assert err.strip() == 'Error: View "v" was dropped; the subscription ended'
    db.close()
