"""Size of operator state and the time to read it back, for the views that keep embeddings (issue 14, vectors).

    PYTHONPATH=src .venv/bin/python benchmarks/state_size.py /tmp/state.db 1000        # or a postgresql:// DSN

Builds a ``sem_index`` view and an ``llm_generate`` view with retrieval (``retrieve=5``) over the first N passages
of the 2Wiki corpus and 50 dev questions, on the real embedder (all-MiniLM-L6-v2, 384-d) and the test LLM, then
prints the bytes of ``op_state`` (SQLite: its value and vector columns; PostgreSQL: ``pg_total_relation_size``) and
the best of 5 reads of both views' whole state from a fresh connection. Run it on two checkouts (``git worktree``)
to compare storage layouts; the store must be new.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import deltamem as dm  # noqa: E402
from deltamem.bench.datasets import default_data_dir, load_corpus, load_questions  # noqa: E402

VIEWS = ("idx", "answers")


def build(path: str, passages: int) -> None:
    data = default_data_dir() / "2wikimultihopqa"
    corpus = load_corpus(data / "hipporag_corpus_6119.json")[:passages]
    questions = load_questions(data / "dev_000_099.json")[:50]
    db = dm.connect(path, llm="test", embedder="minilm", background=False)
    docs = db.table("docs", key="id", columns={"id": "text", "text": "text"})
    asked = db.table("questions", key="qid", columns={"qid": "text", "question": "text"})
    docs.upsert([{"id": p["id"], "text": p["text"]} for p in corpus])
    asked.upsert([{"qid": q.qid, "question": q.question} for q in questions])
    db.view("idx", docs.sem_index("text"))
    db.generate("answers", prompt="Answer.", context=asked, data_source=docs, retrieve=5)
    db.maintain()
    db.close()


def state_bytes(path: str) -> int:
    if path.startswith("postgresql"):
        import psycopg

        with psycopg.connect(path) as conn:
            return conn.execute("SELECT pg_total_relation_size('op_state')").fetchone()[0]
    conn = sqlite3.connect(path)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(op_state)")}
    vectors = "COALESCE(SUM(LENGTH(vectors)), 0)" if "vectors" in columns else "0"  # a store of schema 6 has none
    found = conn.execute(f"SELECT SUM(LENGTH(value)) + {vectors} FROM op_state").fetchone()
    conn.close()
    return found[0]


def read_seconds(path: str) -> float:
    best = []
    for _ in range(5):
        db = dm.connect(path, llm="test", embedder="test", background=False, maintain=False)
        started = time.perf_counter()
        for view in VIEWS:
            db.store.get_all_state(view)
        best.append(time.perf_counter() - started)
        db.close()
    return min(best)


if __name__ == "__main__":
    store, count = sys.argv[1], int(sys.argv[2])
    build(store, count)
    print(json.dumps({"passages": count, "op_state_bytes": state_bytes(store),
                      "read_all_state_seconds": round(read_seconds(store), 4)}))
