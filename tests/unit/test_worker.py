"""``deltamem worker``: processes that only maintain, any number of them on one store, sharing its views.

Real worker processes (``python -m deltamem worker``) on one SQLite file or PostgreSQL database; this process only
writes (``background=False``) and reads the store.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from typer.testing import CliRunner

import deltamem as dm
from deltamem.cli import app
from deltamem.errors import FreshnessTimeout
from deltamem.leases import ViewLeases, is_member_lease, member_lease
from deltamem.store.sqlite import SQLiteStore
from tests.children import ENV
from tests.helpers import paid_hashes, recompute_from_scratch, scripted_db

DOCS = ("id", {"id": "int", "text": "text"})


def _views(db: dm.Database, count: int) -> list[str]:
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
    for i in range(count):
        db.view(f"v{i}", docs.sem_map(f"View {i}: summarise {{text}}", out="s"))
    return [f"v{i}" for i in range(count)]


def _build(count: int):
    return lambda db: [db.view(f"v{i}", db.table("docs").sem_map(f"View {i}: summarise {{text}}", out="s"))
                       for i in range(count)]


def _start_worker(path: str, *options: str, latency: float = 0.02, lease_timeout: float = 5.0) -> subprocess.Popen:
    command = [sys.executable, "-m", "deltamem", "worker", path, "--llm", "test", "--embedder", "test",
               "--llm-option", f"latency={latency}", "--max-concurrency", "1", "--poll-interval", "0.05",
               "--lease-timeout", str(lease_timeout), "--status-every", "0.5", *options]
    worker = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    assert worker.stdout is not None
    first = worker.stdout.readline()
    assert first.startswith("worker on "), first + worker.stdout.read()
    return worker


def _views_by_pid(store) -> Counter:
    return Counter(lease.pid for lease in store.get_leases() if not is_member_lease(lease))


def _wait(condition, timeout: float = 30.0, what: str = "") -> float:
    """Poll ``condition`` until it holds; return the seconds it took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.02)
    return time.monotonic() - start


def _drained(db: dm.Database, views: list[str], version: int) -> bool:
    return min(db.store.get_applied_version(v) or -1 for v in views) >= version


def _stop(worker: subprocess.Popen) -> str:
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, out
    return out


def test_a_worker_maintains_a_view_made_elsewhere_and_releases_it_on_sigterm(new_store_path):
    path = new_store_path()  # on both stores
    with scripted_db(path) as db:
        db.table("docs", key="id", columns={"id": "int", "text": "text"})
    worker = _start_worker(path)
    try:
        with scripted_db(path) as db:  # writes only: never maintains
            views = _views(db, 1)  # made after the worker started: it finds it in the store's catalog
            version = db.table("docs").upsert([{"id": i, "text": f"doc {i}"} for i in range(5)]).version
            _wait(lambda: _drained(db, views, version), what="the worker to apply the version")
            assert _views_by_pid(db.store) == {worker.pid: 1}
            assert len(db.store.get_view_rows("v0")) == 5 and db.runner.backend.usage.calls == 0
            assert worker.stdout is not None
            status = [worker.stdout.readline()]  # a status line at each change of the views held
            while status[-1] and not status[-1].startswith("1/1 views held (v0)"):
                status.append(worker.stdout.readline())
            assert status[-1], status
    finally:
        out = _stop(worker)
    assert "stopped: released 1 view lease" in out
    with scripted_db(path) as db:
        assert db.store.get_leases() == []  # the member lease too
        assert len(paid_hashes(db)) == 5


def test_two_workers_share_four_views_and_pay_each_call_once(new_store_path):
    path = new_store_path()
    with scripted_db(path) as db:
        views = _views(db, 4)
    workers = [_start_worker(path) for _ in range(2)]
    try:
        with scripted_db(path) as db:
            _wait(lambda: sorted(_views_by_pid(db.store).values()) == [2, 2], what="a 2/2 share of the views")
            rows = [{"id": i, "text": f"doc {i}"} for i in range(8)]
            for row in rows:  # one version each: a stream
                version = db.table("docs").upsert(row).version
            _wait(lambda: _drained(db, views, version), what="the workers to drain the stream")
            assert set(_views_by_pid(db.store)) == {w.pid for w in workers}
            paid = paid_hashes(db)
            assert len(paid) == len(set(paid)) == 32
            expected, _ = recompute_from_scratch({"docs": (*DOCS, rows)}, _build(4))
            assert {v: db.view(v).rows().rows for v in views} == expected
    finally:
        for worker in workers:
            _stop(worker)


def _takeover(path: str, stop_signal: signal.Signals, lease_timeout: float) -> tuple[float, list[str]]:
    """Two workers on two views; ``stop_signal`` to the first, then a write: the seconds until the first's view
    applied it, and the paid call hashes."""
    with scripted_db(path) as db:
        views = _views(db, 2)
    first, second = (_start_worker(path, lease_timeout=lease_timeout) for _ in range(2))
    try:
        with scripted_db(path) as db:
            _wait(lambda: _views_by_pid(db.store) == {first.pid: 1, second.pid: 1}, what="a 1/1 share")
            victim = next(lease.view for lease in db.store.get_leases()
                          if lease.pid == first.pid and not is_member_lease(lease))
            first.send_signal(stop_signal)
            if stop_signal is signal.SIGKILL:
                first.wait()  # reaped, as its parent would: a zombie's pid still answers
            version = db.table("docs").upsert({"id": 1, "text": "one"}).version
            seconds = _wait(lambda: _drained(db, [victim], version), what="the other worker to take the view over")
            _wait(lambda: _drained(db, views, version), what="the other view")
            assert _views_by_pid(db.store) == {second.pid: 2}
            return seconds, paid_hashes(db)
    finally:
        first.kill()
        first.wait()
        _stop(second)


def test_a_killed_worker_s_views_are_taken_over_at_once_on_one_machine(tmp_path):
    seconds, paid = _takeover(str(tmp_path / "k.db"), signal.SIGKILL, lease_timeout=5.0)
    assert seconds < 1.0  # its pid is gone: no need to wait for the lease to expire
    assert len(paid) == len(set(paid)) == 2


def test_a_hung_worker_s_views_are_taken_over_after_the_lease_timeout(tmp_path):
    seconds, paid = _takeover(str(tmp_path / "h.db"), signal.SIGSTOP, lease_timeout=1.0)
    assert seconds < 1.0 + 0.5  # alive but silent: the lease expires within the timeout of its last renewal
    assert len(paid) == len(set(paid)) == 2


def test_a_call_a_hung_worker_claimed_is_paid_by_another_after_the_claim_timeout(tmp_path):
    path = str(tmp_path / "c.db")  # a worker on another machine that died looks the same: its pid cannot be checked
    with scripted_db(path) as db:
        views = _views(db, 2)
    first, second = (_start_worker(path, "--claim-timeout", "2", latency=1.0, lease_timeout=1.0) for _ in range(2))
    try:
        with scripted_db(path) as db:
            _wait(lambda: _views_by_pid(db.store) == {first.pid: 1, second.pid: 1}, what="a 1/1 share")
            version = db.table("docs").upsert({"id": 1, "text": "one"}).version
            _wait(lambda: any(claim.pid == first.pid for claim in db.store.get_claims()), what="the first's claim")
            first.send_signal(signal.SIGSTOP)  # in the middle of its call
            stopped = time.monotonic()
            _wait(lambda: _drained(db, views, version), what="the other worker to pay the call")
            seconds = time.monotonic() - stopped
            assert 1.0 < seconds < 2.0 + 1.0 + 1.5  # the lease went after 1 s, the call waited for its claim's 2 s
            paid = paid_hashes(db)
            assert len(paid) == len(set(paid)) == 2
    finally:
        first.kill()
        first.wait()
        _stop(second)


def test_fair_share_spreads_the_views_over_the_live_owners(tmp_path):
    store = SQLiteStore(str(tmp_path / "f.db"))
    views = ["a", "b", "c", "d", "e"]
    first, second = ViewLeases(store, timeout=30.0), ViewLeases(store, timeout=30.0)
    first.fair_share = second.fair_share = True
    assert first.hold(views) == set(views)  # alone: every view
    assert second.hold(views) == set()  # a live owner's leases are never taken: it only makes itself known
    assert first.hold(views) == {"a", "b", "c"}  # ceil(5 / 2): it gives the last ones back
    assert second.hold(views) == {"d", "e"}
    greedy = ViewLeases(store, timeout=30.0)  # no fair share (a server maintaining in the background)
    first.release(["c"])
    assert greedy.hold(views) == {"c"}
    assert first.hold(views) == {"a", "b"}  # the greedy owner keeps "c": ceil(4 / 2) each for the two members
    second.release()
    assert not any(lease.owner == second.owner for lease in store.get_leases())
    assert first.hold(views) == {"a", "b", "d", "e"}  # the one member left: every view the greedy owner lacks
    store.close()


def test_the_member_lease_of_a_gone_worker_is_forgotten(tmp_path):
    path = str(tmp_path / "g.db")
    script = ("import sys; from deltamem.store.sqlite import SQLiteStore; from deltamem.leases import ViewLeases; "
              "l = ViewLeases(SQLiteStore(sys.argv[1]), timeout=3600.0); l.fair_share = True; "
              "print(sorted(l.hold(['a', 'b'])), l.owner)")
    done = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, env=ENV, check=True)
    held, gone = done.stdout.split()[0], done.stdout.split()[-1]
    assert "a" in held
    store = SQLiteStore(path)
    mine = ViewLeases(store, timeout=3600.0)
    mine.fair_share = True
    assert mine.hold(["a", "b"]) == {"a", "b"}  # its process ended: it is no live owner, and its leases are free
    assert member_lease(gone) not in {lease.view for lease in store.get_leases()}
    store.close()


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "4"])
def test_max_concurrency_must_be_a_positive_int(tmp_path, value):
    path = tmp_path / "m.db"
    with pytest.raises(dm.ConfigError, match="max_concurrency must be a positive integer"):
        dm.connect(str(path), llm="test", embedder="test", max_concurrency=value)
    assert not path.exists()  # refused before the store was opened


def test_max_concurrency_bounds_the_calls_run_at_once(tmp_path):
    with scripted_db(str(tmp_path / "c.db"), max_concurrency=3) as db:
        assert db.runner._pool._max_workers == 3


def test_the_worker_command_refuses_bad_options(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["worker", str(tmp_path / "nope.db"), "--llm", "test", "--embedder", "test"])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    with scripted_db(str(tmp_path / "w.db")):
        pass
    bad = runner.invoke(app, ["worker", str(tmp_path / "w.db"), "--llm", "test", "--embedder", "test",
                              "--max-concurrency", "0"])
    assert bad.exit_code == 1 and "max_concurrency must be a positive integer" in bad.output
    option = runner.invoke(app, ["worker", str(tmp_path / "w.db"), "--llm", "test", "--embedder", "test",
                                 "--llm-option", "latancy=0.1"])
    assert option.exit_code == 1 and "Did you mean 'latency'" in option.output


@pytest.mark.parametrize(("workload", "described", "calls"), [
    (["--views", "2"], "2 sem_map views", 24),
    (["--shards", "2"], "one LLM_GENERATE view in 2 shards", 12),  # the workers share one view's shards
])
def test_bench_workers_runs_small_and_pays_no_call_twice(tmp_path, workload, described, calls):
    out = tmp_path / "w.json"
    result = CliRunner().invoke(app, ["bench", "workers", "--workers", "1,2", *workload, "--changes", "12",
                                      "--latency", "0.05", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"store: sqlite (temporary files); test backend, 0.05 s per call; {described}" in \
        " ".join(result.output.split())
    report = json.loads(out.read_text())
    assert [r["workers"] for r in report["runs"]] == [1, 2]
    for run in [*report["runs"], report["kill"]]:
        assert run["paid_twice"] == 0 and run["equal_to_recompute"] and run["calls"] == calls
    assert report["runs"][1]["shares_at_start"] == [1, 1]
    assert report["kill"]["kill"]["seconds_to_continue"] is not None


def test_a_process_that_does_not_maintain_takes_no_lease_and_reads_what_a_worker_maintains(tmp_path):
    path = str(tmp_path / "app.db")
    front = scripted_db(path, background=True, maintain=False, poll_interval=0.05)  # as `deltamem serve --no-maintain`
    docs = front.table("docs", key="id", columns={"id": "int", "text": "text"})
    view = front.view("v0", docs.sem_map("Summarise {text}", out="s"))
    docs.upsert([{"id": 1, "text": "alpha"}, {"id": 2, "text": "beta"}])
    time.sleep(0.3)
    assert front.store.get_leases() == [] and view.rows().lag > 0  # nobody maintains it yet
    worker = _start_worker(path)
    try:
        assert len(view.rows(fresh=True, timeout=30)) == 2  # the worker's commits reach this process's readers
        assert {lease.view for lease in front.store.get_leases() if not is_member_lease(lease)} == {"v0"}
        assert all(lease.pid == worker.pid for lease in front.store.get_leases())
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    inline = scripted_db(path, background=False, maintain=False)
    docs.upsert({"id": 3, "text": "gamma"})
    with pytest.raises(FreshnessTimeout, match='View "v0" reflects version'):  # inline, it waits for a worker
        inline.view("v0").rows(fresh=True, timeout=0.5)
    assert inline.store.get_leases() == []
    inline.close()
    front.close()
