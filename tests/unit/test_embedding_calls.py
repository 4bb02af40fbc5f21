"""Embedding calls go through the call runner like completions: retried with backoff, memoised, on the ledger, and
a text that still fails is stored as its row's ``_error`` and retried at the next refresh."""

from __future__ import annotations

import numpy as np

import deltamem as dm
from deltamem.errors import BackendError
from deltamem.llm.runner import CallRunner, RetryPolicy
from deltamem.llm.scripted import HashingEmbedder, ScriptedLLM, count_scripted_tokens
from deltamem.store.sqlite import SQLiteStore

COLUMNS = {"id": "int", "text": "text"}
TEXTS = ["red apple pie", "green apple", "poison berry", "blue sky at night", "deep blue sea"]
NO_WAIT = RetryPolicy(attempts=3, base_delay=0.0)


class RefusingEmbedder(HashingEmbedder):
    """Refuses, with a ``BackendError``, every call with a text containing one of ``refuse`` (as an endpoint that
    rejects one input fails the whole request); empty ``refuse`` to let them through."""

    def __init__(self, *refuse: str):
        super().__init__()
        self.refuse = set(refuse)

    def embed(self, texts: list[str]) -> np.ndarray:
        if any(word in text for text in texts for word in self.refuse):
            raise BackendError("503 Service Unavailable")
        return super().embed(texts)


def embedding_db(embedder, path: str = ":memory:") -> dm.Database:
    return dm.connect(path, llm="test", embedder=embedder, background=False, retry=NO_WAIT)


def docs_table(db: dm.Database) -> dm.Table:
    docs = db.table("docs", key="id", columns=COLUMNS)
    docs.upsert([{"id": i, "text": t} for i, t in enumerate(TEXTS)])
    return docs


def test_a_failed_embedding_call_is_retried_and_succeeds_on_the_ledger():
    embedder = HashingEmbedder(failures={"poison": 2})  # the batch holding "poison berry" fails twice
    db = embedding_db(embedder)
    view = db.view("idx", docs_table(db).sem_index("text"))
    rows = view.rows(fresh=True)
    assert embedder.num_failures == 2
    assert rows.rows == [{"id": i, "text": t} for i, t in enumerate(TEXTS)]  # no _error: the third try succeeded
    ledger = db.store.get_ledger("idx")
    assert [(e.operator, e.reason, e.outcome) for e in ledger] == [("1:sem_index/embed", "refresh", "paid")] * 5
    assert [e.prompt_tokens for e in ledger] == [count_scripted_tokens(t) for t in TEXTS]
    assert all(e.seconds >= 0 and e.model == "hashing-64" for e in ledger)
    usage = db.usage()
    by_op = usage.by_operator[("idx", "1:sem_index/embed")]
    assert (by_op.embeddings, by_op.embedding_tokens, by_op.failures) == (5, sum(e.prompt_tokens for e in ledger), 0)
    assert usage.calls == 0  # LLM calls, which the full-recompute baseline counts, are apart
    assert view.search("poison berry", 1)[0]["id"] == 2
    assert db.store.get_ledger("idx")[-1].operator == "search/embed"  # the query too (a memo hit here)
    db.close()


def test_the_runner_retries_an_embedding_with_backoff():
    store = SQLiteStore(":memory:")
    slept: list[float] = []
    runner = CallRunner(store, ScriptedLLM(), retry=RetryPolicy(attempts=3, base_delay=0.5), sleep=slept.append)
    embedder = HashingEmbedder(failures={"poison": 2})
    (result,) = runner.embed(embedder, ["poison"], reasons=["insert"], view="v", operator="1:op", version=1)
    assert slept == [0.5, 1.0]
    assert np.array_equal(result.vector, HashingEmbedder().embed(["poison"])[0]) and result.error is None
    assert [(e.operator, e.outcome) for e in store.get_ledger("v")] == [("1:op/embed", "paid")]
    runner.close()
    store.close()


def test_an_embedding_that_always_fails_is_the_rows_error_and_is_retried_at_the_next_refresh():
    embedder = RefusingEmbedder("poison")
    db = embedding_db(embedder)
    docs = docs_table(db)
    view = db.view("idx", docs.sem_index("text"))
    rows = {row["id"]: row for row in view.rows(fresh=True)}
    assert "503 Service Unavailable" in rows[2]["_error"] and rows[2]["text"] == "poison berry"
    assert all("_error" not in row for key, row in rows.items() if key != 2)  # the others were embedded
    assert sorted(h["id"] for h in view.search("blue berry", 5)) == [0, 1, 3, 4]  # indexed; the failed row is not
    failed = [e for e in db.store.get_ledger("idx") if e.outcome == "failed"]
    assert [(e.operator, e.reason) for e in failed] == [("1:sem_index/embed", "refresh")]
    assert db.usage().failures == 1

    db.refresh()  # still refused: retried, and failed again
    assert "_error" in {row["id"]: row for row in view.rows(fresh=True)}[2]
    assert [e.reason for e in db.store.get_ledger("idx") if e.outcome == "failed"] == ["refresh", "retry"]
    assert db.usage().failures == 2

    embedder.refuse.clear()
    db.refresh()
    assert view.rows(fresh=True).rows == [{"id": i, "text": t} for i, t in enumerate(TEXTS)]
    last = [e for e in db.store.get_ledger("idx") if e.operator == "1:sem_index/embed"][-1]
    assert (last.reason, last.outcome) == ("retry", "paid")
    assert view.search("poison berry", 1)[0]["id"] == 2
    db.close()


def test_an_identical_embedding_is_paid_once_across_a_reopen(tmp_path):
    path = str(tmp_path / "memo.db")
    first = HashingEmbedder()
    db = embedding_db(first, path)
    docs = db.table("docs", key="id", columns=COLUMNS)
    docs.upsert([{"id": 1, "text": "red apple"}, {"id": 2, "text": "red apple"}, {"id": 3, "text": "blue sea"}])
    db.view("idx", docs.sem_index("text")).rows(fresh=True)
    assert first.num_texts == 2  # "red apple" once
    db.close()

    again = HashingEmbedder()
    db = embedding_db(again, path)
    view = db.view("idx2", db.table("docs").sem_index("text"))  # the same texts, asked again by a new view
    view.rows(fresh=True)
    assert again.num_texts == 0
    assert [h["id"] for h in view.search("red apple", 2)] == [1, 2]
    assert {e.outcome for e in db.store.get_ledger("idx2")} == {"memo"}
    usage = db.usage()
    # Paid: the two texts, in the first session. Memo hits: the duplicate there, then the three rows and the query.
    assert (usage.embeddings, usage.embedding_memo_hits) == (2, 1 + 3 + 1)
    db.close()
