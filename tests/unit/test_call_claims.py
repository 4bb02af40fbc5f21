"""A call is claimed on the store before it is paid (on both stores): two processes asked for the same calls at once pay
each once, and the one that did not pay answers from the memo. A claim whose process is gone is taken over."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from deltamem import open_store
from deltamem.llm.base import Completion
from deltamem.store.base import CallInFlight, LedgerEntry
from tests.children import ENV

# Runs 20 distinct calls when it reads a line, then embeds 20 distinct texts when it reads another; prints what its
# backends ran each time.
RUNNER = textwrap.dedent(
    """
    import sys, time
    from deltamem.llm.base import CompletionRequest, Message
    from deltamem.llm.runner import CallRunner, CallSpec
    from deltamem.llm.scripted import HashingEmbedder, ScriptedLLM
    from deltamem import open_store

    class SlowEmbedder(HashingEmbedder):
        def embed(self, texts):
            time.sleep(0.3)
            return super().embed(texts)

    llm, embedder = ScriptedLLM(latency=0.05), SlowEmbedder()
    store = open_store(sys.argv[1])
    runner = CallRunner(store, llm, max_workers=4)
    calls = [CallSpec(CompletionRequest((Message("user", f"Summarise document {i}"),)), "insert") for i in range(20)]
    texts = [f"text {i}" for i in range(20)]
    print("ready", flush=True)
    sys.stdin.readline()
    results = runner.run(calls, view="v" + sys.argv[2], operator="1:sem_map", version=1)
    assert all(result.completion is not None for result in results)
    print(llm.usage.calls, flush=True)
    sys.stdin.readline()
    vectors = runner.embed_or_raise(embedder, texts, reasons=["insert"] * 20, view="v" + sys.argv[2],
                                    operator="1:sem_index", version=1)
    assert vectors.shape == (20, embedder.dim)
    runner.close()
    store.close()
    print(embedder.num_texts, flush=True)
    """
)


def _all_go(children: list[subprocess.Popen]) -> list[int]:
    """Tell every child to go on, as close together as two writes can be; the number each then prints."""
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    return [int(child.stdout.readline()) for child in children]


def test_two_processes_asked_for_the_same_calls_at_once_pay_each_once(new_store_path):
    path = new_store_path()
    open_store(path).close()
    children = [subprocess.Popen([sys.executable, "-c", RUNNER, path, str(n)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, env=ENV) for n in range(2)]
    try:
        for child in children:
            assert child.stdout.readline() == "ready\n"
        calls = _all_go(children)
        texts = _all_go(children)
    finally:
        for child in children:
            child.communicate(timeout=120)
    assert [child.returncode for child in children] == [0, 0]
    assert sum(calls) == 20, f"the two processes' backends ran {calls} calls for 20 distinct ones"
    assert sum(texts) == 20, f"the two processes' embedders embedded {texts} texts for 20 distinct ones"
    store = open_store(path)
    outcomes = [(entry.operator, entry.outcome) for entry in store.get_ledger()]
    assert outcomes.count(("1:sem_map", "paid")) == 20 and outcomes.count(("1:sem_map", "memo")) == 20
    assert outcomes.count(("1:sem_index/embed", "paid")) == 20
    assert outcomes.count(("1:sem_index/embed", "memo")) == 20
    assert store.get_claims() == []
    store.close()


def _flight(h: str) -> CallInFlight:
    return CallInFlight(1.0, 1, "v", "1:sem_map", "insert", "m", h)


def test_a_live_claim_makes_others_wait_and_a_paid_call_answers_them(new_store_path):
    path = new_store_path()
    mine, other = open_store(path), open_store(path)
    first = mine.claim_calls({"h": _flight("h")}, now=10.0, stale_after=60.0)
    assert list(first.claimed) == ["h"] and not first.busy and not first.answered
    assert other.claim_calls({"h": _flight("h")}, now=11.0, stale_after=60.0).busy == ("h",)  # another thread's
    completion = Completion("done", 3, 1, 0.1, "m")
    mine.record_call(LedgerEntry(12.0, 1, "v", "1:sem_map", "insert", "m", "paid", 3, 0, 1, 0.1, "h"),
                     memo=completion, in_flight=first.claimed["h"])
    assert mine.get_claims() == []
    assert other.claim_calls({"h": _flight("h")}, now=13.0, stale_after=60.0).answered == {"h": completion}
    mine.close()
    other.close()


def test_a_claim_of_a_process_that_is_gone_or_of_a_stuck_call_is_taken_over(new_store_path):
    path = new_store_path()
    store = open_store(path)
    store.claim_calls({"gone": None, "stuck": None}, now=100.0, stale_after=60.0)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with store._write() as conn:  # as if a process that has ended had taken it
        conn.execute(store.dialect.sql("UPDATE call_claims SET pid = ?, process = 'ended' WHERE call_hash = 'gone'"),
                     (int(ended.stdout),))
    other = open_store(path)
    assert other.claim_calls({"gone": None, "stuck": None}, now=110.0, stale_after=60.0).busy == ("stuck",)
    later = other.claim_calls({"stuck": None}, now=170.0, stale_after=60.0)
    assert list(later.claimed) == ["stuck"]
    assert sorted(claim.call_hash for claim in other.get_claims()) == ["gone", "stuck"]
    store.release_claims(["gone", "stuck"])  # not this store's claims any more: nothing happens
    assert len(other.get_claims()) == 2
    other.release_claims(["gone", "stuck"])
    assert other.get_claims() == []
    store.close()
    other.close()


def test_a_claim_is_renewed_while_its_call_runs_so_a_call_longer_than_the_timeout_is_still_paid_once(new_store_path):
    import threading
    import time

    from deltamem.llm.base import CompletionRequest, Message
    from deltamem.llm.runner import CallRunner, CallSpec
    from deltamem.llm.scripted import ScriptedLLM

    path = new_store_path()
    slow, other = ScriptedLLM(latency=2.0), ScriptedLLM(latency=2.0)
    first = CallRunner(open_store(path), slow, claim_timeout=0.6)  # renewed every 0.2 s while it pays
    second = CallRunner(open_store(path), other, claim_timeout=0.6)
    spec = CallSpec(CompletionRequest((Message("user", "Summarise the long document"),)), "insert")
    paying = threading.Thread(target=first.run, args=([spec],), kwargs={"view": "v", "operator": "1:sem_map",
                                                                        "version": 1})
    paying.start()
    time.sleep(1.0)  # past the timeout since the claim was taken: only its renewals keep it live
    (claim,) = first.store.get_claims()
    assert claim.claimed_at > time.time() - 0.6
    (result,) = second.run([spec], view="w", operator="1:sem_map", version=1)  # waits for the memo, pays nothing
    paying.join()
    assert result.memo_hit and slow.usage.calls == 1 and other.usage.calls == 0
    assert first.store.get_claims() == []
    first.close()
    second.close()
