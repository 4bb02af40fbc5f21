"""Per-row operators: outputs stored per row, replayed on retraction, and paid once per distinct call."""

from __future__ import annotations

import deltamem as dm
from deltamem.llm.runner import RetryPolicy
from deltamem.llm.scripted import ScriptedLLM
from tests.helpers import scripted_db


def mapped_view(db: dm.Database) -> dm.View:
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text", "tag": "text"})
    return db.view("summaries", docs.sem_map("Summarise {text}", out="summary"))


def test_issue_example_costs_exactly_13_calls():
    db = scripted_db()
    view = mapped_view(db)
    docs = db.table("docs")
    changes = [lambda i=i: docs.upsert({"id": i, "text": f"passage number {i}", "tag": "a"}) for i in range(10)]
    changes += [lambda i=i: docs.upsert({"id": i, "text": f"rewritten passage {i}", "tag": "a"}) for i in range(3)]
    changes += [lambda: docs.delete(8), lambda: docs.delete(9)]
    changes += [lambda: docs.upsert({"id": 9, "text": "passage number 9", "tag": "a"})]  # old content: a memo hit
    for change in changes:
        change()
        db.maintain()  # as the background thread would, between commits
    rows = view.rows(fresh=True)
    usage = db.usage()
    assert (usage.calls, usage.memo_hits) == (13, 1)
    assert [r["id"] for r in rows] == [0, 1, 2, 3, 4, 5, 6, 7, 9]
    assert usage.by_operator[("summaries", "1:sem_map")].calls == 13


def test_update_of_an_unread_column_makes_no_call_but_updates_the_row():
    db = scripted_db()
    view = mapped_view(db)
    db.table("docs").upsert({"id": 1, "text": "t", "tag": "a"})
    view.rows(fresh=True)
    calls = db.usage().calls
    db.table("docs").upsert({"id": 1, "text": "t", "tag": "b"})
    rows = view.rows(fresh=True)
    assert db.usage().calls == calls
    assert db.usage().memo_hits == 0  # not even a memo lookup: the stored value was reused
    assert rows[0]["tag"] == "b"


def test_delete_replays_the_stored_value_with_no_call():
    db = scripted_db()
    view = mapped_view(db)
    db.table("docs").upsert([{"id": 1, "text": "t", "tag": "a"}, {"id": 2, "text": "u", "tag": "a"}])
    first = view.rows(fresh=True)
    db.table("docs").delete(1)
    rows = view.rows(fresh=True)
    assert db.usage().calls == 2
    assert [r["id"] for r in rows] == [2]
    retracted = [c for c in view.changes(rows.version, rows.version)]
    assert [(c.diff, c.row) for c in retracted] == [(-1, first[0])]


def test_filter_then_map_calls_map_only_for_rows_that_pass():
    db = scripted_db()
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
    view = db.view("v", docs.sem_filter("{text} is positive").sem_map("Summarise {text}", out="s"))
    docs.upsert([{"id": i, "text": f"text {i}"} for i in range(20)])
    rows = view.rows(fresh=True)
    usage = db.usage()
    assert usage.by_operator[("v", "1:sem_filter")].calls == 20
    assert usage.by_operator[("v", "2:sem_map")].calls == len(rows)
    assert 0 < len(rows) < 20


def test_memo_survives_a_restart(tmp_path):
    path = str(tmp_path / "memo.db")
    db = scripted_db(path)
    mapped_view(db)
    db.table("docs").upsert([{"id": i, "text": f"t{i}", "tag": "a"} for i in range(5)])
    db.maintain()
    db.close()
    db = scripted_db(path)
    again = db.view("again", db.table("docs").sem_map("Summarise {text}", out="summary"))
    assert [r["summary"] for r in again.rows(fresh=True)] == [r["summary"] for r in db.view("summaries").rows()]
    assert (db.usage().calls, db.usage().memo_hits) == (5, 5)
    db.close()


def test_failed_call_is_shown_as_an_error_and_retried_at_the_next_refresh():
    backend = ScriptedLLM(failures={"poison": 3})
    db = scripted_db(llm=backend, retry=RetryPolicy(attempts=3, base_delay=0.0))
    view = mapped_view(db)
    db.table("docs").upsert([{"id": 1, "text": "poison pill", "tag": "a"}, {"id": 2, "text": "fine", "tag": "a"}])
    rows = view.rows(fresh=True)
    assert rows[0]["summary"] is None and "scripted failure" in rows[0]["_error"]
    assert "_error" not in rows[1]
    assert db.usage().failures == 1
    db.refresh()
    rows = view.rows(fresh=True)
    assert rows[0]["summary"] and "_error" not in rows[0]
    last = db.store.get_ledger()[-1]
    assert (last.reason, last.outcome) == ("retry", "paid")


def test_a_failed_filter_shows_the_row_and_downstream_passes_it_through():
    db = scripted_db(llm=ScriptedLLM(failures={"poison": 99}))
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
    view = db.view("v", docs.sem_filter("{text} is positive").sem_map("Summarise {text}", out="s"))
    docs.upsert({"id": 1, "text": "poison"})
    (row,) = view.rows(fresh=True)
    assert row["s"] is None and row["_error"].startswith("scripted failure")
    assert db.usage().by_operator.get(("v", "2:sem_map")) is None  # no call for an errored row
    assert db.store.count_view_rows("v") == (1, 1)  # rows, and rows with an _error
    docs.upsert([{"id": 2, "text": "poison too"}, {"id": 3, "text": "fine"}])
    rows = view.rows(fresh=True)
    assert db.store.count_view_rows("v") == (len(rows), 2)


def test_extract_adds_one_column_per_field():
    db = scripted_db()
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
    view = db.view("v", docs.sem_extract("From {text}", fields={"person": "who", "year": "when"}))
    docs.upsert({"id": 1, "text": "Ada Lovelace wrote the first program in 1843."})
    (row,) = view.rows(fresh=True)
    assert set(row) == {"id", "text", "person", "year"}
    assert isinstance(row["person"], str) and row["person"]


def test_parsers_turn_answers_into_values():
    from deltamem.operators.rowwise import parse_bool, parse_fields

    assert parse_bool("Yes, it is.", False) is True
    assert parse_bool("I think this is false.", True) is False
    assert parse_bool("unclear", True) is True
    assert parse_fields("person: Ada\nyear: 1843", ["person", "year"]) == {"person": "Ada", "year": "1843"}


def test_two_databases_in_one_process_share_nothing():
    one, two = scripted_db(), scripted_db()
    mapped_view(one)
    one.table("docs").upsert({"id": 1, "text": "t", "tag": "a"})
    one.maintain()
    assert two.tables() == [] and two.usage().calls == 0


def test_building_a_view_over_an_empty_table_does_not_load_the_model():
    from deltamem.engine import Database
    from deltamem.llm import LazyBackend
    from deltamem.store.sqlite import SQLiteStore

    loads = []

    def load_scripted():
        loads.append(1)
        return ScriptedLLM()

    db = Database(SQLiteStore(":memory:"), llm=LazyBackend(load_scripted), embedder=LazyBackend(lambda: None),
                  background=False)
    docs = db.table("docs", key="id", columns={"id": "text", "text": "text"})
    db.view("gists", docs.sem_filter("{text} is long").sem_map("Summarise {text}", out="gist"))
    db.maintain()
    assert loads == []  # loading SmolLM2 takes about 30 s; an empty build needs no model
    docs.upsert({"id": "a", "text": "now there is work"})
    db.maintain()
    assert loads == [1] and len(db.view("gists").rows()) in (0, 1)
    db.close()
