"""Opening a store file: a file of schema 2 to 5 is upgraded in place; an unknown schema is refused. Calls in flight."""

from __future__ import annotations

import sqlite3

import pytest

from deltamem.store.base import CallInFlight, LedgerEntry, TableDef
from deltamem.store.sqlite import SQLiteStore
from deltamem.store.sqlite_schema import SCHEMA_VERSION


def _set_schema(path: str, version: int, *, drop_refresh_costs: bool) -> None:
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(version),))
    if drop_refresh_costs:
        conn.execute("DROP TABLE refresh_costs")
    conn.commit()
    conn.close()


def test_a_schema_2_file_is_upgraded_and_keeps_its_data(tmp_path):
    path = str(tmp_path / "old.db")
    store = SQLiteStore(path)
    version, _ = store.commit([], committed_at=1.0)
    store.close()
    _set_schema(path, 2, drop_refresh_costs=True)

    reopened = SQLiteStore(path)
    assert reopened.get_latest_version() == version
    assert reopened.get_costs_by_version() == []  # the cost history starts at the upgrade
    reopened.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    conn.close()


def test_a_file_of_an_unknown_schema_is_refused(tmp_path):
    path = str(tmp_path / "future.db")
    SQLiteStore(path).close()
    _set_schema(path, SCHEMA_VERSION + 1, drop_refresh_costs=False)
    with pytest.raises(RuntimeError, match=f"has store schema {SCHEMA_VERSION + 1}; this deltamem reads"):
        SQLiteStore(path)


def test_a_schema_3_file_gains_the_calls_in_flight_table(tmp_path):
    path = str(tmp_path / "v3.db")
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE calls_in_flight")  # as schema 3 wrote it
    conn.commit()
    conn.close()
    _set_schema(path, 3, drop_refresh_costs=False)

    reopened = SQLiteStore(path)
    flight = reopened.begin_call(CallInFlight(1.0, None, "v", "1:sem_map", "insert", "m", "h"))
    assert reopened.take_interrupted_calls() == []  # this process's own call is not interrupted
    reopened.record_call(LedgerEntry(2.0, None, "v", "1:sem_map", "insert", "m", "paid", 1, 0, 1, 0.1, "h"),
                         in_flight=flight)
    assert reopened.take_interrupted_calls() == []
    reopened.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    assert conn.execute("SELECT COUNT(*) FROM calls_in_flight").fetchone() == (0,)
    conn.close()


def test_only_calls_of_processes_that_are_gone_are_interrupted(tmp_path):
    import subprocess
    import sys

    path = str(tmp_path / "shared.db")
    store = SQLiteStore(path)
    store.begin_call(CallInFlight(1.0, 3, "v", "1:sem_map", "insert", "m", "mine"))
    other = SQLiteStore(path)  # another store of this live process: its calls are not interrupted
    assert other.take_interrupted_calls() == []
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE calls_in_flight SET pid = ?, process = 'ended'", (int(gone.stdout),))  # as it wrote it
    conn.commit()
    conn.close()
    [entry] = other.take_interrupted_calls()
    assert (entry.outcome, entry.call_hash, entry.version, entry.ts) == ("interrupted", "mine", 3, 1.0)
    assert other.take_interrupted_calls() == [] and store.take_interrupted_calls() == []  # taken once
    store.close()
    other.close()


def test_a_schema_4_file_keeps_its_old_baseline_as_the_no_memo_figure(tmp_path):
    from tests.helpers import scripted_db

    path = str(tmp_path / "v4.db")
    db = scripted_db(path)
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
    db.view("v", docs.sem_map("Summarise {text}", out="s"))
    for i in range(3):
        docs.upsert({"id": i, "text": f"t{i}"})
        db.maintain()
    db.close()
    conn = sqlite3.connect(path)  # as schema 4 wrote it: base_* counted every stored value at every refresh
    conn.execute("UPDATE view_defs SET base_calls = 6")
    for table in ("view_defs", "view_incarnations"):
        for column in ("nomemo_calls", "nomemo_prompt_tokens", "nomemo_output_tokens", "nomemo_seconds"):
            conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    conn.execute("DROP TABLE baseline_memo")
    conn.commit()
    conn.close()
    _set_schema(path, 4, drop_refresh_costs=False)

    reopened = SQLiteStore(path)
    baseline = reopened.get_baselines()["v"]
    assert (baseline.refreshes, baseline.cost.calls, baseline.no_memo.calls) == (3, 6, 6)
    reopened.close()
    db = scripted_db(path)  # refreshes from now on are costed with the memo
    db.table("docs").upsert({"id": 3, "text": "t3"})
    db.maintain()
    baseline = db.store.get_baselines()["v"]
    assert (baseline.refreshes, baseline.cost.calls, baseline.no_memo.calls) == (4, 7, 10)
    db.close()


def test_a_schema_5_file_gains_view_leases_call_claims_and_a_catalog_version(tmp_path):
    path = str(tmp_path / "v5.db")
    store = SQLiteStore(path)
    store.put_table_def(TableDef("docs", "id"))
    assert store.get_catalog_version() == 1
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE view_leases")  # as schema 5 wrote it
    conn.execute("DROP TABLE call_claims")
    conn.execute("DELETE FROM meta WHERE name = 'catalog_version'")
    conn.commit()
    conn.close()
    _set_schema(path, 5, drop_refresh_costs=False)

    reopened = SQLiteStore(path)
    assert [t.name for t in reopened.get_table_defs()] == ["docs"] and reopened.get_catalog_version() == 0
    assert reopened.hold_leases("me", ["v"], now=1.0, timeout=10.0) == {"v"}
    assert list(reopened.claim_calls({"h": None}, now=1.0, stale_after=60.0).claimed) == ["h"]
    reopened.put_table_def(TableDef("more", "id"))
    assert reopened.get_catalog_version() == 1
    reopened.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    conn.close()
