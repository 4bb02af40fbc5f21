"""Several processes on one database file: one maintains each view at a time (its lease), the others read.

The two-process tests run real child processes, each with its own background maintainer, on one SQLite file (and the
first also on one PostgreSQL database).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import deltamem as dm
from deltamem.leases import ViewLeases
from deltamem.store.sqlite import SQLiteStore
from tests.children import ENV
from tests.helpers import paid_hashes, scripted_db

# A process that maintains the file's views in the background until it reads a line, then prints how many calls
# its backend was asked to run (the backend's own count, not the ledger's).
MAINTAINER = textwrap.dedent(
    """
    import sys
    import deltamem as dm
    from deltamem.llm.scripted import ScriptedLLM

    llm = ScriptedLLM(latency=0.05)
    db = dm.connect(sys.argv[1], llm=llm, embedder="test", poll_interval=0.02)
    print("ready", flush=True)
    sys.stdin.readline()
    db.close()
    print(llm.usage.calls, flush=True)
    """
)


def _start(script: str, *args: str) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=ENV)
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    return child


def _finish(child: subprocess.Popen) -> str:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("stop\n")
    child.stdin.flush()
    out = child.stdout.read()
    assert child.wait(60) == 0
    return out


def test_two_processes_maintaining_one_view_pay_each_call_once(new_store_path):
    path = new_store_path()  # on both stores (``store_kind``)
    with scripted_db(path) as db:
        docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
        db.view("v", docs.sem_map("Summarise {text}", out="s"))
    children = [_start(MAINTAINER, path) for _ in range(2)]
    try:
        time.sleep(0.3)  # both maintainers are running their passes
        with scripted_db(path) as db:  # inline: this process only writes and reads the store
            version = db.table("docs").upsert([{"id": i, "text": f"document {i}"} for i in range(20)]).version
            deadline = time.monotonic() + 60
            while (db.store.get_applied_version("v") or -1) < version and time.monotonic() < deadline:
                time.sleep(0.05)
            assert db.store.get_applied_version("v") >= version
            assert len(db.store.get_view_rows("v")) == 20
    finally:
        calls = [int(_finish(child)) for child in children]
    assert sum(calls) == 20, f"the backends of the two processes ran {calls} calls for 20 distinct prompts"
    with scripted_db(path) as db:
        paid = paid_hashes(db)
        assert len(paid) == len(set(paid)) == 20


def test_a_view_is_maintained_by_one_owner_until_it_lets_go(tmp_path):
    path = str(tmp_path / "l.db")
    store = SQLiteStore(path)
    first, second = ViewLeases(store, timeout=30.0), ViewLeases(store, timeout=30.0)
    assert first.hold(["a", "b"]) == {"a", "b"}
    assert second.hold(["a", "b", "c"]) == {"c"}  # a live owner's leases are not taken
    assert first.hold(["a", "b", "c"]) == {"a", "b"}
    owners = {lease.view: lease.owner for lease in store.get_leases()}
    assert owners == {"a": first.owner, "b": first.owner, "c": second.owner}
    first.release()
    assert second.hold(["a", "b", "c"]) == {"a", "b", "c"}
    store.close()


def test_a_stale_lease_is_taken_over(tmp_path):
    store = SQLiteStore(str(tmp_path / "l.db"))
    now = [1000.0]
    first = ViewLeases(store, timeout=5.0, clock=lambda: now[0])
    second = ViewLeases(store, timeout=5.0, clock=lambda: now[0])
    assert first.hold(["v"]) == {"v"}
    now[0] += 4.0
    assert second.hold(["v"]) == set()
    now[0] += 1.5  # the first owner's heartbeat is now older than the timeout
    assert second.hold(["v"]) == {"v"}
    assert first.hold(["v"]) == set() and not first.still_held("v")
    store.close()


def test_the_lease_of_a_process_that_is_gone_is_taken_at_once(tmp_path):
    path = str(tmp_path / "l.db")
    script = ("import sys; from deltamem.store.sqlite import SQLiteStore; from deltamem.leases import ViewLeases; "
              "print(ViewLeases(SQLiteStore(sys.argv[1]), timeout=3600.0).hold(['v']))")
    done = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, env=ENV, check=True)
    assert done.stdout.strip() == "{'v'}"
    store = SQLiteStore(path)
    assert ViewLeases(store, timeout=3600.0).hold(["v"]) == {"v"}  # its heartbeat is fresh, but its process ended
    store.close()


def test_dropping_a_view_ends_its_lease_and_closing_releases_the_rest(tmp_path):
    path = str(tmp_path / "l.db")
    db = scripted_db(path)
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
    docs.upsert({"id": 1, "text": "a"})
    db.view("v", docs.sem_map("Summarise {text}", out="s"))
    db.view("w", docs.sem_map("Title {text}", out="t"))
    db.maintain()
    assert db.store.get_leases() == []  # inline maintenance holds its views for one catch-up only
    assert db.maintainer.leases.hold(["v", "w"]) == {"v", "w"}
    db.drop_view("w")
    assert [lease.view for lease in db.store.get_leases()] == ["v"]
    db.close()
    store = SQLiteStore(path)
    assert store.get_leases() == []
    store.close()


def test_a_view_created_here_is_maintained_by_the_process_that_takes_its_lease_and_read_here(tmp_path):
    path = str(tmp_path / "r.db")
    with scripted_db(path) as db:
        db.table("docs", key="id", columns={"id": "int", "text": "text"})
    child = _start(MAINTAINER, path)  # running before the view exists: it finds it in the store's catalog
    try:
        with dm.connect(path, llm="test", embedder="test", background=False) as db:
            db.view("v", db.table("docs").sem_map("Summarise {text}", out="s"))
            deadline = time.monotonic() + 30
            while not db.store.get_leases() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert [lease.view for lease in db.store.get_leases()] == ["v"]
            db.table("docs").upsert({"id": 1, "text": "one"})
            rows = db.view("v").rows(fresh=True, timeout=30).rows  # inline, but the child holds the lease
            assert [row["id"] for row in rows] == [1]
            assert paid_hashes(db) and db.runner.backend.usage.calls == 0
    finally:
        assert int(_finish(child)) == 1


def test_change_feeds_here_wake_for_the_commits_of_the_process_that_maintains_the_view(tmp_path):
    path = str(tmp_path / "f.db")
    with scripted_db(path) as db:
        docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
        db.view("v", docs.sem_map("Summarise {text}", out="s"))
    child = _start(MAINTAINER, path)
    try:
        store = SQLiteStore(path)
        deadline = time.monotonic() + 30
        while not store.get_leases() and time.monotonic() < deadline:
            time.sleep(0.02)
        store.close()
        with dm.connect(path, llm="test", embedder="test", poll_interval=0.02) as db:  # a background maintainer
            seen = db.maintainer.wait_for_view_commit(-1, timeout=0)
            version = db.table("docs").upsert({"id": 1, "text": "one"}).version
            deadline = time.monotonic() + 30
            while (db.store.get_applied_version("v") or -1) < version and time.monotonic() < deadline:
                seen = db.maintainer.wait_for_view_commit(seen, timeout=1.0)
            assert db.store.get_applied_version("v") >= version
            assert seen > 0, "the feeds here never woke: only this process's own view commits were counted"
            assert db.runner.backend.usage.calls == 0
    finally:
        assert int(_finish(child)) == 1
