"""The catalog in the store is the truth for every process on the file: a name another process created is found, a
CREATE that conflicts with what is stored fails and changes nothing, a write checked against a definition another
process has changed since is refused, and stream sequence numbers are handed out once across processes.

Every test here runs real child processes on one store, of each kind (``store_kind``: SQLite, PostgreSQL).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import deltamem as dm
from deltamem.errors import AlreadyExists, CatalogChanged
from deltamem.sql import execute
from tests.helpers import scripted_db
from tests.children import ENV


def _run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                          env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _columns(path: str, table: str) -> dict[str, str] | None:
    store = dm.open_store(path)
    try:
        [definition] = [t for t in store.get_table_defs() if t.name == table]
        return None if definition.columns is None else {c: t.value for c, t in definition.columns.items()}
    finally:
        store.close()


# Opens the file, says so, and waits; then, told to go, reports what it finds and tries to create "docs" again.
LATE_READER = """
    import json, sys
    import deltamem as dm
    from deltamem.sql import execute
    db = dm.connect(sys.argv[1], llm="test", embedder="test", background=False)
    print("ready", flush=True)
    sys.stdin.readline()
    seen = {"tables": db.tables(), "views": db.views(), "rows": db.table("docs").rows(),
            "view_rows": db.view("v").rows(fresh=True).rows}
    for attempt in (lambda: db.table("docs", key="id", columns={"id": "int", "body": "text"}),
                    lambda: execute(db, "CREATE TABLE docs (id INT PRIMARY KEY, body TEXT)")):
        try:
            attempt()
            seen.setdefault("errors", []).append(None)
        except Exception as exc:
            seen.setdefault("errors", []).append(f"{type(exc).__name__}: {exc}")
    print(json.dumps(seen), flush=True)
    db.close()
"""


def test_a_table_and_view_created_in_one_process_are_seen_by_another_that_cannot_redefine_them(new_store_path):
    path = new_store_path()
    scripted_db(path).close()
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(LATE_READER), path], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    assert child.stdout.readline() == "ready\n"  # its catalog is read, and empty
    with scripted_db(path) as db:
        execute(db, "CREATE TABLE docs (id INT PRIMARY KEY, text TEXT); INSERT INTO docs VALUES (1, 'alpha')")
        db.view("v", db.table("docs").sem_map("Summarise {text}", out="s"))
    out, err = child.communicate("go\n", timeout=120)
    assert child.returncode == 0, err
    seen = json.loads(out)
    assert "docs" in seen["tables"] and seen["views"] == ["v"]
    assert seen["rows"] == [{"id": 1, "text": "alpha"}] and [r["id"] for r in seen["view_rows"]] == [1]
    python_api, sql = seen["errors"]
    assert python_api.startswith('AlreadyExists: Table "docs" exists with columns') and "body" in python_api
    assert sql.startswith('AlreadyExists: "docs" already exists')
    assert _columns(path, "docs") == {"id": "int", "text": "text"}  # the first process's schema, intact


def test_a_create_racing_another_process_with_other_columns_fails_in_the_store(new_store_path):
    # The engine's own check passed on a stale catalog: the store's CREATE is what refuses.
    path = new_store_path()
    db = scripted_db(path)
    assert db.tables() == []
    _run("""
        import sys, deltamem as dm
        dm.connect(sys.argv[1], llm="test", embedder="test", background=False).table(
            "docs", key="id", columns={"id": "int", "text": "text"})
    """, path)
    db._refresh_catalog = lambda: False  # as if the other process committed after this one last looked
    with pytest.raises(AlreadyExists, match='Table "docs" exists with another definition'):
        db.table("docs", key="id", columns={"id": "int", "body": "text"})
    del db._refresh_catalog
    assert _columns(path, "docs") == {"id": "int", "text": "text"}
    assert db.table("docs").columns == ("id", "text")  # the cache was reloaded from the store
    db.close()


def test_a_write_checked_against_a_table_another_process_recreated_is_refused(new_store_path):
    path = new_store_path()
    db = scripted_db(path)
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
    docs.upsert({"id": 1, "text": "alpha"})
    version = db.version
    _run("""
        import sys, deltamem as dm
        db = dm.connect(sys.argv[1], llm="test", embedder="test", background=False)
        db.drop_table("docs")
        db.table("docs", key="id", columns={"id": "int", "body": "text"})
    """, path)
    with pytest.raises(CatalogChanged, match='Table "docs" was changed by another process'):
        docs.upsert({"id": 2, "text": "beta"})  # checked against the cached columns (id, text)
    assert db.version == version + 1 and db.store.get_rows("docs") == {}  # the other process's drop, nothing else
    docs.upsert({"id": 2, "body": "beta"})  # the catalog was reloaded: the write is checked against the new table
    assert db.table("docs").rows() == [{"id": 2, "body": "beta"}]
    db.close()


def test_columns_inferred_by_two_processes_keep_the_first_and_refuse_the_second(new_store_path):
    path = new_store_path()
    db = scripted_db(path)
    docs = db.table("docs", key="id")  # no columns: the first row fixes them
    _run("""
        import sys, deltamem as dm
        dm.connect(sys.argv[1], llm="test", embedder="test", background=False).table("docs").upsert(
            {"id": 1, "a": "x"})
    """, path)
    with pytest.raises(CatalogChanged, match='Table "docs" was changed by another process'):
        docs.upsert({"id": 2, "b": "y"})  # inferred from this row, against the cached "no columns yet"
    assert _columns(path, "docs") == {"id": "int", "a": "text"}
    assert [row["id"] for row in docs.rows()] == [1]
    db.close()


# Appends to stream "events" when told to: alternately one INSERT of two events and one COPY of two, 25 times each.
APPENDER = """
    import sys
    import deltamem as dm
    from deltamem.sql import execute
    db = dm.connect(sys.argv[1], llm="test", embedder="test", background=False)
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(25):
        execute(db, "INSERT INTO events (msg) VALUES (?), (?)", [f"{sys.argv[2]} {i}a", f"{sys.argv[2]} {i}b"])
        execute(db, f"COPY events FROM '{sys.argv[3]}'")
    db.close()
"""


@pytest.mark.parametrize("opened", ["before the stream existed", "after"])
def test_stream_appends_from_two_processes_get_distinct_sequence_numbers(tmp_path, new_store_path, opened):
    path = new_store_path()
    scripted_db(path).close()
    if opened == "after":
        with scripted_db(path) as db:
            execute(db, "CREATE STREAM events (msg TEXT)")
    children = []
    for name in ("p", "q"):
        events = tmp_path / f"{name}.jsonl"
        events.write_text("".join(json.dumps({"msg": f"{name} copied {n}"}) + "\n" for n in range(2)))
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(APPENDER), path, name, str(events)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=ENV)
        assert child.stdout.readline() == "ready\n"
        children.append(child)
    if opened != "after":
        with scripted_db(path) as db:
            execute(db, "CREATE STREAM events (msg TEXT)")
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    for child in children:
        _out, err = child.communicate(timeout=240)
        assert child.returncode == 0, err
    with scripted_db(path) as db:
        rows = execute(db, "SELECT seq, msg FROM events").rows
    assert len(rows) == 2 * 25 * 4, "events were overwritten: two appends were handed the same sequence numbers"
    assert sorted(seq for seq, _msg in rows) == list(range(1, 201))
