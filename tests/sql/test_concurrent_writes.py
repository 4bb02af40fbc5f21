"""SQL writes racing other writers: each UPDATE, DELETE and INSERT is atomic, in one process and across processes.

Two ``connect`` handles on one file stand in for two processes: each has its own SQLite connection, so they meet
only at SQLite's file lock, as processes do. One test runs a real second process where a process-wide lock would hide
the race.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable

import pytest

import deltamem as dm
from deltamem.errors import PrimaryKeyError
from deltamem.sql import execute

THREADS, ROUNDS = 8, 25


def connect(path) -> dm.Database:
    return dm.connect(str(path), llm="test", embedder="test", background=False)


@pytest.fixture
def handles(new_store_path):
    """Two handles on one store (of each kind: ``store_kind``); ``handles[i % 2]`` spreads threads over both."""
    path = new_store_path()
    first = connect(path)
    execute(first, "CREATE TABLE c (id INT PRIMARY KEY, n INT); INSERT INTO c VALUES (1, 0)")
    second = connect(path)
    yield first, second
    second.close()
    first.close()


def run_threads(work: Callable[[int], None]) -> list[BaseException]:
    """``work(i)`` on THREADS threads released together; the errors they raised."""
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        start.wait()
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a writer hung"
    return errors


@pytest.mark.parametrize("spread", [1, 2], ids=["one handle", "two handles on one file"])
def test_concurrent_updates_reach_the_exact_count(handles, spread):
    errors = run_threads(lambda i: [execute(handles[i % spread], "UPDATE c SET n = n + 1 WHERE id = 1")
                                    for _ in range(ROUNDS)])
    assert errors == []
    assert execute(handles[0], "SELECT n FROM c").rows == [(THREADS * ROUNDS,)]
    # Every UPDATE committed its own version, with a change from the value before it.
    changes = handles[0].store.get_changes(1, handles[0].version, ["c"])
    assert [(c.before["n"], c.after["n"]) for c in changes[1:]] == [(n, n + 1) for n in range(THREADS * ROUNDS)]


def test_concurrent_deletes_report_each_row_once(handles):
    # Every thread deletes every row, one statement a row: each row is deleted by exactly one DELETE, so the counts
    # the statements report add up to the rows there were.
    execute(handles[0], "INSERT INTO c VALUES " + ", ".join(f"({k}, 0)" for k in range(2, 22)))
    counts: list[int] = []

    def work(i: int) -> None:
        for k in range(1, 22):
            counts.append(int(execute(handles[i % 2], "DELETE FROM c WHERE id = ?", [k]).status.split()[1]))

    assert run_threads(work) == []
    assert execute(handles[0], "SELECT count(*) FROM c").rows == [(0,)]
    assert sum(counts) == 21


def test_concurrent_inserts_of_one_key_let_exactly_one_through(handles):
    outcomes: list[str] = []

    def insert(i: int) -> None:
        try:
            execute(handles[i % 2], "INSERT INTO c VALUES (7, ?)", [i])
            outcomes.append(f"ok {i}")
        except PrimaryKeyError as exc:
            assert "Key 7 already exists" in str(exc)
            outcomes.append("duplicate")

    assert run_threads(insert) == []
    assert outcomes.count("duplicate") == THREADS - 1
    [winner] = [int(o.split()[1]) for o in outcomes if o.startswith("ok")]
    assert execute(handles[0], "SELECT n FROM c WHERE id = 7").rows == [(winner,)]


_CHILD = """
import sys
import deltamem as dm
from deltamem.errors import PrimaryKeyError
from deltamem.sql import execute
db = dm.connect(sys.argv[1], llm="test", embedder="test", background=False)
print("ready", flush=True)
sys.stdin.readline()
try:
    execute(db, "INSERT INTO c VALUES (7, 2)")
    print("ok", flush=True)
except PrimaryKeyError:
    print("duplicate", flush=True)
"""


def test_an_insert_racing_another_process_on_its_key_check_lets_exactly_one_through(tmp_path, monkeypatch):
    # The other process inserts key 7 exactly between this INSERT's key check and its commit, the window of a
    # check-then-act. It must wait for this INSERT's transaction, then fail on the key.
    path = tmp_path / "c.db"
    db = connect(path)
    execute(db, "CREATE TABLE c (id INT PRIMARY KEY, n INT)")
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        read_row = db.store.get_row
        raced = threading.Event()
        child_said: list[str] = []

        def get_row_then_race(table, key):
            found = read_row(table, key)
            if table == "c" and not raced.is_set():
                raced.set()
                child.stdin.write("go\n")
                child.stdin.flush()
                reader = threading.Thread(target=lambda: child_said.append(child.stdout.readline()), daemon=True)
                reader.start()
                reader.join(3)  # long enough for an unblocked child to commit; a blocked one waits for us
            return found

        monkeypatch.setattr(db.store, "get_row", get_row_then_race)
        try:
            execute(db, "INSERT INTO c VALUES (7, 1)")
            here = "ok"
        except PrimaryKeyError:
            here = "duplicate"
        child.wait(60)
        rest = child.stdout.read()
    finally:
        if child.poll() is None:
            child.kill()
        db.close()
    assert raced.is_set()
    there = ("".join(child_said) + rest).strip()
    assert sorted([here, there]) == ["duplicate", "ok"]
    with connect(path) as fresh:
        assert execute(fresh, "SELECT n FROM c").rows == [(1 if here == "ok" else 2,)]
