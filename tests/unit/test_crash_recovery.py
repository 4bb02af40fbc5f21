"""A process killed with SIGKILL mid-stream loses nothing committed, applies nothing twice, and pays no completed call
twice; a call in flight at the kill is paid again, and reported once as interrupted by the next process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import paid_hashes, recompute_from_scratch, scripted_db

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = {"id": "int", "text": "text", "tag": "text"}

CHILD = textwrap.dedent(
    """
    import sys
    import time
    import deltamem as dm
    from deltamem.llm.scripted import ScriptedLLM

    db = dm.connect(sys.argv[1], llm=ScriptedLLM(latency=0.02), embedder="test", poll_interval=0.01)
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text", "tag": "text"})
    db.view("v", docs.sem_filter("{text} is interesting").sem_map("Summarise {text}", out="s"))
    for i in range(int(sys.argv[2]), 10_000):
        change = i % 5
        if change == 3:
            docs.delete(i % 7)
        else:
            docs.upsert({"id": i % 7, "text": f"text {i % 97}", "tag": str(i)})
        print(i, flush=True)
        time.sleep(0.005)  # writes outpace maintenance (two 20 ms calls a change, few from the memo: 97 texts)
    """
)


def expected_rows(num_changes: int) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    for i in range(num_changes):
        if i % 5 == 3:
            rows.pop(i % 7, None)
        else:
            rows[i % 7] = {"id": i % 7, "text": f"text {i % 97}", "tag": str(i)}
    return rows


def run_child_until_killed(path: str, start: int, num_changes: int) -> int:
    """Start the writer, SIGKILL it after it reported ``num_changes`` commits; return the last reported change."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, path, str(start)], stdout=subprocess.PIPE, text=True, env=env
    )
    last = start - 1
    assert child.stdout is not None
    for line in child.stdout:
        last = int(line)
        if last - start + 1 >= num_changes:
            break
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    assert last - start + 1 == num_changes, "the child died before it was killed"
    return last


@pytest.mark.parametrize("kill_after", [20, 60])
def test_sigkill_mid_stream_loses_nothing_and_pays_nothing_twice(new_store_path, kill_after):
    path = new_store_path()  # on both stores (``store_kind``)
    last = run_child_until_killed(path, 0, kill_after)
    last = run_child_until_killed(path, last + 1, kill_after)  # a second life, then a second kill

    db = scripted_db(path)
    applied_at_kill = db.view("v").version
    assert paid_hashes(db) and applied_at_kill is not None and applied_at_kill < db.version, "kill missed the work"
    table = {r["id"]: r for r in db.table("docs").rows()}
    # Every reported change is committed; at most the one in flight when the kill landed is there beyond them,
    # and none is there twice (the table is exactly some prefix of the stream).
    assert table in (expected_rows(last + 1), expected_rows(last + 2))
    db.maintain()
    assert db.view("v").version == db.version

    def build(fresh):
        fresh.view("v", fresh.table("docs").sem_filter("{text} is interesting").sem_map("Summarise {text}", out="s"))

    expected, _ = recompute_from_scratch({"docs": ("id", COLUMNS, list(table.values()))}, build)
    assert db.view("v").rows().rows == expected["v"]
    paid = paid_hashes(db)
    assert len(paid) == len(set(paid)), "a call paid before the kill was paid again"
    db.close()


IN_FLIGHT_CHILD = textwrap.dedent(
    """
    import sys
    import time
    import deltamem as dm
    from deltamem.llm.scripted import ScriptedLLM

    class Slow(ScriptedLLM):
        def complete(self, request, **hints):
            print("calling", flush=True)  # the call is in flight from here until the kill
            return super().complete(request, **hints)

    db = dm.connect(sys.argv[1], llm=Slow(latency=60), embedder="test", poll_interval=0.01)
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text", "tag": "text"})
    db.view("v", docs.sem_map("Summarise {text}", out="s"))
    docs.upsert({"id": 1, "text": "a slow one", "tag": "x"})
    time.sleep(120)
    """
)


def test_a_call_in_flight_at_a_kill_is_reported_once_as_interrupted(new_store_path, caplog):
    path = new_store_path()
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen([sys.executable, "-c", IN_FLIGHT_CHILD, path], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == "calling\n", "the child died before its call"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)

    with caplog.at_level("WARNING", logger="deltamem"):
        db = scripted_db(path)
    interrupted = [e for e in db.store.get_ledger() if e.outcome == "interrupted"]
    assert [(e.view, e.operator) for e in interrupted] == [("v", "1:sem_map")]
    assert f"process {child.pid}" in interrupted[0].error and "paid again" in interrupted[0].error
    assert db.interrupted_calls == interrupted
    assert db.usage().interrupted == 1 and db.usage().by_view["v"].interrupted == 1
    assert "1 model call was in flight" in caplog.text and f"process {child.pid}" in caplog.text
    db.maintain()  # the lost result is paid again: what the README's crash-safety bullet says
    assert paid_hashes(db) == [interrupted[0].call_hash]
    db.close()

    caplog.clear()
    with caplog.at_level("WARNING", logger="deltamem"):
        again = scripted_db(path)
    assert again.interrupted_calls == [] and "in flight" not in caplog.text  # reported once, by the first reopen
    assert [e.outcome for e in again.store.get_ledger()] == ["interrupted", "paid"]
    again.close()
