"""The ``Store`` contract, on both stores: every method, through ``dm.connect`` where the API reaches it and on the
store itself where it does not (leases, claims, calls in flight). Each test runs on SQLite and on PostgreSQL
(``store_kind``, ``tests/conftest.py``); the PostgreSQL server is one the session started, in a temporary directory.
"""

from __future__ import annotations

import json
import threading

import pytest

import deltamem as dm
from deltamem.changes import ColumnType, RowKey, RowWrite, encode_key
from deltamem.errors import AlreadyExists, CatalogChanged, ConfigError, DependentViews, NoTable
from deltamem.llm.base import Completion
from deltamem.store.base import CallCost, CallInFlight, Decision, LedgerEntry, StateEntry, TableDef, ViewCommit, ViewDef
from tests.helpers import scripted_db

DOCS = {"id": "int", "text": "text"}


@pytest.fixture
def path(new_store_path) -> str:
    return new_store_path()


def _docs(db: dm.Database, rows=({"id": 1, "text": "alpha"}, {"id": 2, "text": "beta"})) -> dm.Table:
    docs = db.table("docs", key="id", columns=DOCS)
    docs.upsert(list(rows))
    return docs


def test_writes_make_versions_and_changes_and_no_op_writes_make_none(path):
    db = scripted_db(path, clock=dm.ManualClock(start=100.0))
    docs = _docs(db)
    assert db.version == 1
    assert docs.upsert({"id": 1, "text": "alpha"}).version is None  # an equal row: no version
    assert docs.delete(7).version is None and db.version == 1  # an absent key: no version
    docs.upsert({"id": 1, "text": "ALPHA"})
    docs.delete(2)
    store = db.store
    assert store.get_latest_version() == 3
    changes = store.get_changes(1, 3, ["docs"])
    assert [(c.version, c.key, c.before, c.after) for c in changes] == [
        (1, encode_key(1), None, {"id": 1, "text": "alpha"}), (1, encode_key(2), None, {"id": 2, "text": "beta"}),
        (2, encode_key(1), {"id": 1, "text": "alpha"}, {"id": 1, "text": "ALPHA"}),
        (3, encode_key(2), {"id": 2, "text": "beta"}, None),
    ]
    assert store.get_changes(1, 3, []) == []
    assert store.get_rows("docs") == {encode_key(1): {"id": 1, "text": "ALPHA"}}
    assert store.get_row("docs", encode_key(1)) == {"id": 1, "text": "ALPHA"} and store.get_row("docs", "x") is None
    assert store.get_snapshot(["docs"]) == (3, {"docs": {encode_key(1): {"id": 1, "text": "ALPHA"}}})
    assert store.get_commit_time(1) == 100.0 and store.get_commit_time(99) is None
    assert set(store.get_commit_times(1, 3)) == {1, 2, 3}
    assert store.commit([], committed_at=101.0)[0] == 4  # an empty version: db.refresh()
    assert [t.name for t in store.get_table_defs()] == ["docs"]
    assert list(store.get_table_defs()[0].columns) == ["id", "text"]
    db.close()


def test_rows_keep_json_values_and_key_order_and_reject_a_missing_table(path):
    db = scripted_db(path)
    notes = db.table("notes", key="id")
    row = {"id": "k", "zeta": [1, 2.5, None, {"b": True, "a": "x"}], "alpha": {"nested": {"z": 1, "y": "é"}},
           "big": 2**40, "text": "quote \" and 'single'"}
    notes.upsert(row)
    stored = db.store.get_row("notes", encode_key("k"))
    assert stored == row and list(stored) == sorted(row)  # sorted keys, as SQLite's sorted-key JSON reads back
    assert list(stored["zeta"][3]) == ["a", "b"]
    with pytest.raises(NoTable):
        db.store.commit([RowWrite("gone", RowKey("1"), {"id": 1})], 0.0)
    assert db.version == 1
    db.close()


def test_views_history_as_of_changes_and_state(path):
    db = scripted_db(path)
    docs = _docs(db)
    mapped = db.view("mapped", docs.sem_map("Summarise {text}", out="summary"))
    extracted = db.view("extracted", docs.sem_extract("Read {text}", fields={"topic": "the topic"}))
    first = mapped.rows(fresh=True).rows
    assert [r["id"] for r in first] == [1, 2] and all(r["summary"] for r in first)
    assert len(extracted.rows(fresh=True).rows) == 2
    docs.upsert({"id": 1, "text": "gamma"})
    docs.delete(2)
    now = mapped.rows(fresh=True).rows
    assert [r["text"] for r in now] == ["gamma"]
    assert [r["text"] for r in mapped.rows(as_of=1).rows] == ["alpha", "beta"]
    history = mapped.history(1)
    assert [(h.valid_from, h.valid_to, h.row["text"]) for h in history] == [(1, 2, "alpha"), (2, None, "gamma")]
    changes = mapped.changes(1, 3)
    assert [(c.version, c.diff, c.key) for c in changes] == [(1, 1, 1), (1, 1, 2), (2, -1, 1), (2, 1, 1), (3, -1, 2)]
    store = db.store
    assert store.get_applied_version("mapped") == 3 and store.get_applied_version("nope") is None
    assert store.count_view_rows("mapped") == (1, 0)
    state = store.get_all_state("mapped")
    assert [(op, key) for op, key in state] == [("1:sem_map", encode_key(1))]
    (op_id, key), entry = next(iter(state.items()))
    assert store.get_state("mapped", op_id, [key, "missing"]) == {key: entry}
    assert entry.input_row == {"id": 1, "text": "gamma"} and entry.cost.calls == 1
    assert store.get_state_cost("mapped").calls == 1
    assert store.get_failed_state("mapped", op_id) == []
    names = [v.name for v in store.get_view_defs()]
    assert names == ["mapped", "extracted"]  # creation order
    assert store.get_view_defs()[0].id == store.get_view_id("mapped") and store.get_view_id("nope") is None
    db.close()


def test_view_plans_keep_their_key_order_and_redefinition_is_refused(path):
    store = dm.open_store(path)
    plan = {"op": "sem_map", "source": "table", "name": "docs", "instruction": "{text}", "out": "s"}
    created = store.put_view_def(ViewDef("v", plan))
    assert created.id is not None and store.put_view_def(ViewDef("v", plan)).id == created.id
    assert list(store.get_view_defs()[0].plan) == list(plan)
    with pytest.raises(AlreadyExists):
        store.put_view_def(ViewDef("v", {**plan, "out": "t"}))
    assert store.put_view_def(ViewDef("v", {**plan, "out": "t"}), replace=True).id == created.id
    store.close()


def test_ledger_memo_baselines_and_costs(path):
    db = scripted_db(path)
    docs = _docs(db)
    db.view("mapped", docs.sem_map("Summarise {text}", out="summary")).rows(fresh=True)
    db.drop_view("mapped")
    db.view("mapped", docs.sem_map("Summarise {text}", out="summary")).rows(fresh=True)  # answered by the memo
    ledger = db.store.get_ledger("mapped")
    assert [e.outcome for e in ledger] == ["paid", "paid", "memo", "memo"]
    memo = db.store.get_memo(ledger[0].call_hash)
    assert memo is not None and memo.text and db.store.get_memo("nope") is None
    totals = {(t.view, t.outcome): t.calls for t in db.store.get_ledger_totals()}
    assert totals == {("mapped", "paid"): 2, ("mapped", "memo"): 2}
    assert db.store.get_baselines()["mapped"].refreshes >= 1
    versions = db.store.get_costs_by_version()
    assert versions and all(isinstance(cost, CallCost) for _v, *costs in versions for cost in costs)
    assert db.usage().calls == 2
    db.close()


def test_decisions_of_a_generated_view(path):
    db = scripted_db(path)
    db.table("questions", key="qid", columns={"qid": "text", "question": "text"}).upsert(
        [{"qid": "q1", "question": "When was Ada born?"}])
    db.table("docs", key="doc_id", columns={"doc_id": "text", "text": "text"}).upsert(
        [{"doc_id": "ada", "text": "Ada was born in 1815."}, {"doc_id": "tea", "text": "Tea is a drink."}])
    view = db.generate("answers", prompt="Answer from the documents.", context=db.table("questions"),
                       data_source=db.table("docs"), retrieve=1)
    view.rows(fresh=True)
    db.table("docs").upsert({"doc_id": "tea", "text": "Tea is a hot drink."})
    view.rows(fresh=True)
    decisions = db.store.get_decisions("answers")
    assert decisions and all(isinstance(d, Decision) for d in decisions)
    assert len(decisions) == 2 and decisions[0].version < decisions[1].version  # the answer, then the edit's
    assert db.store.get_decisions("answers", key=encode_key("q1")) == decisions
    assert db.store.get_decisions("answers", key=encode_key("q2")) == []
    strategy = decisions[1].strategy
    assert db.store.get_decisions("answers", strategy=strategy) == [d for d in decisions if d.strategy == strategy]
    assert view.explain("q1")["operators"]
    db.close()


def test_drop_cascade_and_restrict_keep_the_baseline(path):
    db = scripted_db(path)
    docs = _docs(db)
    mapped = db.view("mapped", docs.sem_map("Summarise {text}", out="summary"))
    db.view("short", mapped.sem_map("Shorten {summary}", out="short")).rows(fresh=True)
    old_id = db.store.get_view_id("short")
    with pytest.raises(DependentViews):
        db.drop_table("docs")
    dropped = db.drop_table("docs", cascade=True)
    assert dropped is not None and dropped.views == ("mapped", "short") and dropped.tables == ("docs",)
    assert db.store.get_view_defs() == [] and db.store.get_rows("docs") == {}
    assert db.store.get_baselines()["short"].refreshes >= 1
    _docs(db)
    again = db.view("short", db.table("docs").sem_map("Shorten {text}", out="short"))
    again.rows(fresh=True)
    assert db.store.get_view_id("short") != old_id
    db.close()


def test_ttl_expiry_is_one_version(path):
    clock = dm.ManualClock(start=1000.0)
    db = scripted_db(path, clock=clock)
    docs = db.table("docs", key="id", columns=DOCS, ttl="1 hour")
    docs.upsert([{"id": 1, "text": "a"}, {"id": 2, "text": "b"}])
    assert db.store.expire({"docs": dm.ExpireMode.RETRACT}, 1000.0) is None
    clock.advance(3601.0)
    assert db.expire() == 2
    assert docs.rows() == [] and db.version == 2
    db.close()


def test_catalog_is_shared_and_checked_between_handles(path):
    first, second = dm.open_store(path), dm.open_store(path)
    before = second.get_catalog_version()
    first.put_table_def(TableDef("docs", "id"))
    assert second.get_catalog_version() != before
    first.put_table_def(TableDef("docs", "id"))  # the very definition: a no-op
    with pytest.raises(AlreadyExists):
        second.put_table_def(TableDef("docs", "other"))
    inferred = TableDef("docs", "id", columns={"id": ColumnType("int")})
    first.commit([], 1.0, table_defs=[inferred], checked=[TableDef("docs", "id")])
    with pytest.raises(CatalogChanged):
        second.commit([], 2.0, table_defs=[inferred], checked=[TableDef("docs", "id")])
    assert second.get_table_defs() == [inferred]
    first.close()
    second.close()


def test_a_transaction_is_atomic_and_serialises_writers(path):
    store = dm.open_store(path)
    store.put_table_def(TableDef("n", "id"))
    def bump(times: int) -> None:
        for _ in range(times):
            with store.transaction():
                row = store.get_row("n", "c") or {"id": "c", "v": 0}
                store.commit([RowWrite("n", RowKey("c"), {"id": "c", "v": row["v"] + 1})], 0.0)

    threads = [threading.Thread(target=bump, args=(10,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.get_row("n", "c") == {"id": "c", "v": 30}
    with pytest.raises(RuntimeError), store.transaction():
        store.commit([RowWrite("n", RowKey("c"), {"id": "c", "v": -1})], 0.0)
        raise RuntimeError("roll back")
    assert store.get_row("n", "c") == {"id": "c", "v": 30} and store.get_latest_version() == 30
    store.close()


def test_view_commits_are_idempotent_and_keep_failed_state(path):
    store = dm.open_store(path)
    view = store.put_view_def(ViewDef("v", {"op": "sem_map", "source": "table", "name": "t"}))
    failed = StateEntry(RowKey("1"), "f1", {"id": 1}, None, error="boom", cost=CallCost())
    ok = StateEntry(RowKey("2"), "f2", {"id": 2}, {"s": "x"}, cost=CallCost(1, 10, 2, 0.5))
    commit = ViewCommit("v", 1, view.id, state_puts=[("op", failed), ("op", ok)],
                        outputs={RowKey("1"): {"id": 1, "_error": "boom"}, RowKey("2"): {"id": 2, "s": "x"}},
                        decisions=[Decision("v", RowKey("2"), 1, "new", "first", calls=1, evidence=0.5)],
                        count_baseline=True, paid_calls={"f2"})
    assert store.commit_view(commit) is True and store.commit_view(commit) is False
    assert store.commit_view(ViewCommit("v", 2, (view.id or 0) + 99)) is False  # another incarnation
    assert store.get_failed_state("v", "op") == [failed]
    assert store.get_state("v", "op", ["2"])["2"] == ok
    assert store.count_view_rows("v") == (2, 1)
    assert store.get_decisions("v")[0].evidence == 0.5
    assert store.get_baselines()["v"].cost == CallCost(1, 10, 2, 0.5)
    assert store.get_costs_by_version() == [(1, CallCost(), CallCost(1, 10, 2, 0.5))]
    store.close()


def test_leases_claims_and_calls_in_flight(path):
    mine, other = dm.open_store(path), dm.open_store(path)
    assert mine.hold_leases("a", ["v", "w"], now=10.0, timeout=30.0) == {"v", "w"}
    assert other.hold_leases("b", ["v", "x"], now=11.0, timeout=30.0) == {"x"}
    assert {lease.view: lease.owner for lease in other.get_leases()} == {"v": "a", "w": "a", "x": "b"}
    assert other.hold_leases("b", ["v"], now=41.0, timeout=30.0) == {"v"}  # expired: taken over
    mine.release_leases("a")
    other.release_leases("b", ["x"])
    assert [lease.view for lease in mine.get_leases()] == ["v"]

    flight = CallInFlight(1.0, 1, "v", "1:sem_map", "insert", "m", "h")
    first = mine.claim_calls({"h": flight, "g": None}, now=10.0, stale_after=60.0)
    assert sorted(first.claimed) == ["g", "h"] and first.claimed["g"] is None and first.claimed["h"] is not None
    assert other.claim_calls({"h": flight}, now=11.0, stale_after=60.0).busy == ("h",)
    completion = Completion("done", 3, 1, 0.1, "m")
    mine.record_call(LedgerEntry(12.0, 1, "v", "1:sem_map", "insert", "m", "paid", 3, 0, 1, 0.1, "h"),
                     memo=completion, in_flight=first.claimed["h"])
    assert [claim.call_hash for claim in mine.get_claims()] == ["g"]
    assert other.claim_calls({"h": flight}, now=13.0, stale_after=60.0).answered == {"h": completion}
    other.release_claims(["g"])  # not its claim: nothing happens
    mine.release_claims(["g"])
    assert mine.get_claims() == []
    assert list(other.claim_calls({"g": None}, now=200.0, stale_after=60.0).claimed) == ["g"]

    in_flight = mine.begin_call(CallInFlight(2.0, 1, "v", "1:sem_map", "insert", "m", "k"))
    assert mine.take_interrupted_calls() == []  # this process is alive
    mine.record_call(LedgerEntry(3.0, 1, "v", "1:sem_map", "insert", "m", "failed", 0, 0, 0, 0.0, "k", "boom"),
                     in_flight=in_flight)
    assert [e.outcome for e in mine.get_ledger()] == ["paid", "failed"]
    mine.close()
    other.close()


# PostgreSQL only, so not parametrised (the SQLite store's file errors and schemas are tested in test_store_schema).
def test_a_wrong_dsn_or_an_unreachable_server_is_one_clear_error(postgres_server):
    with pytest.raises(ConfigError, match=r"Cannot connect to PostgreSQL at 'postgresql://me:\*\*\*@127\.0\.0\.1:1/x'"):
        dm.connect("postgresql://me:secret@127.0.0.1:1/x", llm="test", embedder="test")
    missing = postgres_server.dsn("no_such_database")
    with pytest.raises(ConfigError, match="no_such_database.*check that the server") as raised:
        dm.connect(missing, llm="test", embedder="test")
    assert "secret" not in str(raised.value)
    with pytest.raises(ConfigError, match=r"Malformed PostgreSQL DSN 'postgresql://me:\*\*\*@127.0.0.1/x\?bogus=1': "
                                          'invalid URI query parameter: "bogus"; write it as postgresql://'):
        dm.connect("postgresql://me:secret@127.0.0.1/x?bogus=1", llm="test", embedder="test")


def test_a_database_of_another_schema_version_is_refused_untouched(postgres_server):
    import psycopg

    from deltamem.store.postgres_schema import SCHEMA_VERSION

    dsn = postgres_server.new_database()
    dm.open_store(dsn).close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    with pytest.raises(ConfigError, match=f"schema 99, newer than this deltamem's {SCHEMA_VERSION}: upgrade deltamem"):
        dm.connect(dsn, llm="test", embedder="test")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone() == ("99",)


def test_commands_take_a_postgresql_dsn_as_their_database(postgres_server, tmp_path):
    from typer.testing import CliRunner

    from deltamem.cli import app

    dsn = postgres_server.new_database()
    script = tmp_path / "s.sql"
    script.write_text("CREATE TABLE docs (id INT PRIMARY KEY, text TEXT);\n"
                      "INSERT INTO docs VALUES (1, 'alpha'), (2, 'beta');\n"
                      "CREATE CONTINUOUS VIEW short AS SELECT id, SEM_MAP('Shorten {text}') AS s FROM docs;\n")
    runner = CliRunner()
    result = runner.invoke(app, ["run", dsn, str(script), "--llm", "test", "--embedder", "test"])
    assert result.exit_code == 0, result.output
    with scripted_db(dsn) as db:
        assert [row["id"] for row in db.view("short").rows(fresh=True)] == [1, 2]
    result = runner.invoke(app, ["rows", dsn, "short", "--json"])
    assert result.exit_code == 0 and [json.loads(line)["id"] for line in result.output.splitlines()] == [1, 2]
    result = runner.invoke(app, ["usage", "postgresql://me:secret@127.0.0.1:1/x"])
    assert result.exit_code == 1 and "Cannot connect to PostgreSQL at 'postgresql://me:***@127.0.0.1:1/x'" in \
        result.output and "secret" not in result.output
