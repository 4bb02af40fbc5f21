"""Planned passes (``deltamem.pass_plan``): on a remote store a backlog's calls are claimed and paid in one round per
pass, each still on the ledger at the version that asks for it; a slow backend is planned a version at a time.
(That the views and the calls paid equal maintenance version by version is the hypothesis property in
``tests/property/test_backlog_equals_version_by_version.py``.)"""

from __future__ import annotations

from deltamem.changes import encode_key
from deltamem.llm.scripted import ScriptedLLM
from tests.helpers import paid_hashes, scripted_db


def backlog(llm="test", versions: int = 40, rows: int = 5, **options):
    """A ``sem_map`` view built empty, then ``versions`` committed versions of ``rows`` new rows each, not yet
    maintained, on a store that counts its claim rounds and says it is remote (as PostgreSQL does)."""
    db = scripted_db(llm=llm, **options)
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
    view = db.view("gists", docs.sem_map("Summarise {text}", out="gist"))
    db.maintain()
    db.store.remote = True
    rounds = []
    claim_calls = db.store.claim_calls
    db.store.claim_calls = lambda calls, **kw: rounds.append(len(calls)) or claim_calls(calls, **kw)
    first = db.version + 1
    for v in range(versions):
        docs.upsert([{"id": v * rows + i, "text": f"note {v} {i}"} for i in range(rows)])
    return db, view, rounds, first


def test_a_backlog_is_claimed_a_pass_at_a_time_and_each_call_is_on_the_ledger_at_its_version():
    db, view, rounds, first = backlog()
    db.maintain()
    assert len(view.rows()) == 200 and len(set(paid_hashes(db))) == len(paid_hashes(db)) == 200
    assert len(rounds) < 40 and sum(rounds) == 200  # fewer rounds than versions, each call claimed once
    version_of = {e.call_hash: e.version for e in db.store.get_ledger() if e.outcome == "paid"}
    for row in view.rows():
        assert version_of[_hash_of(db, row["id"])] == first + row["id"] // 5  # the version that inserted it


def test_a_slow_backend_is_planned_a_version_at_a_time():
    db, view, rounds, _first = backlog(llm=ScriptedLLM(latency=0.02), versions=4, max_concurrency=1)
    db.maintain()
    assert len(view.rows()) == 20
    assert rounds == [5, 5, 5, 5]  # one call takes 20 ms and a pass about 50: one version a pass


def test_a_row_changed_twice_in_one_pass_pays_both_versions_calls_once_each():
    db, view, rounds, _first = backlog(versions=0)
    docs = db.table("docs")
    docs.upsert({"id": 1, "text": "first"})
    docs.upsert({"id": 1, "text": "second"})
    docs.upsert({"id": 1, "text": "first"})  # back again: the memo answers it
    docs.upsert({"id": 2, "text": "other"})
    db.maintain()
    # Before any call has returned the backend's speed is unknown: the first pass is one version, the next the rest.
    assert len(paid_hashes(db)) == 3 and rounds == [1, 3]
    assert [r["gist"] for r in view.rows()] == [r["gist"] for r in _fresh_gists(docs.rows())]


def _hash_of(db, key: int) -> str:
    return db.store.get_state("gists", "1:sem_map", [encode_key(key)])[encode_key(key)].fingerprint


def _fresh_gists(rows):
    fresh = scripted_db()
    docs = fresh.table("docs", key="id", columns={"id": "int", "text": "text"})
    docs.upsert(rows)
    return fresh.view("gists", docs.sem_map("Summarise {text}", out="gist")).rows(fresh=True)
