"""``deltamem bench operators``: what one insert, update and delete cost each incremental operator, beside a build
from scratch and LOTUS's published algorithms for the same size, in one run.

    deltamem bench operators --sizes 64,256,1024 --llm test --out results.json

For each operator and size N, N passages of ``hipporag_corpus_6119.json`` are loaded and the operator's view built
in a fresh database (``from_scratch``: the calls a system without incremental maintenance pays at every change).
Then ``changes`` seeded inserts, updates (of the title and the text, which every operator here reads) and deletes
follow, each measured alone: the LLM calls it paid (and, for the operators that embed, the embedding calls),
averaged per kind; ``sem_search`` makes no LLM call, so its figures are embedding calls. ``lotus`` is analytic, not
measured (``labels`` in the result says so): the call count of the algorithm LOTUS publishes for the operator at
that size, computed from its formula, which LOTUS runs in full on every change: hierarchical aggregation over
all rows, a heap top-k (about N ln N + K ln N comparisons; quickselect, about 2K + 2N ln N, is reported beside it),
a nested-loop join (N x M), and a re-embedding of every row for search. On a real model the wall seconds of each
change and of the build are reported too, so the ratio is one of time and not only of calls.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import deltamem as dm
from deltamem.bench.datasets import load_corpus
from deltamem.errors import ConfigError
from deltamem.llm import lazy_embedder, lazy_llm
from deltamem.llm.embedding_runs import is_embedding_operator

OPERATORS = ("sem_agg", "sem_topk", "sem_join", "sem_search")
# What each kind of figure is, as the JSON and the printed table label it: ours are measured, LOTUS's are not.
MEASURED = "measured: a build in a fresh database, on this run's backend"
ANALYTIC = "analytic (from LOTUS's published algorithms): computed, not run"
LABELS = {"from_scratch": MEASURED, "insert": "measured", "update": "measured", "delete": "measured",
          "lotus": ANALYTIC, "lotus_quickselect": ANALYTIC}
COLUMNS = {"id": "text", "title": "text", "text": "text"}
K = 10
FANOUT = 8
CANDIDATES = 5


class CountingEmbedder:
    """An embedder that counts the texts it embeds (one embedding call per text)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.model_id = inner.model_id
        self.dim = inner.dim
        self.texts = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.texts += len(texts)
        return self.inner.embed(texts)


def lotus_calls(operator: str, n: int) -> dict[str, float]:
    """LOTUS's call counts for one full run of its algorithm over n rows (n x n for the join)."""
    if operator == "sem_agg":  # one call per group of FANOUT at each level, up to one root
        calls, level = 0, n
        while level > 1:
            level = math.ceil(level / FANOUT)
            calls += level
        return {"lotus": calls}
    if operator == "sem_topk":
        return {"lotus": round(n * math.log(n) + K * math.log(n)), "lotus_quickselect": round(2 * K + 2 * n * math.log(n))}
    if operator == "sem_join":
        return {"lotus": n * n}
    return {"lotus": n}  # search: every row embedded again


def _define(db: dm.Database, operator: str) -> dm.View:
    passages = db.table("passages")
    if operator == "sem_agg":
        relation = passages.sem_agg("Write a digest of these passages: {text}", fanout=FANOUT, max_tokens=48)
    elif operator == "sem_topk":
        relation = passages.sem_topk("{title}: {text} describes the most famous person", k=K)
    elif operator == "sem_join":
        relation = passages.sem_join(db.table("others"), "{title:left} and {title:right} share a family, place or "
                                     "work", candidates=CANDIDATES)
    else:
        relation = passages.sem_search("a film director born in France", k=K, column="text")
    return db.view(operator, relation)


def measure(operator: str, size: int, *, llm: Any, corpus: Sequence[dict], num_changes: int, seed: int,
            folder: Path) -> dict[str, Any]:
    """One operator at one size: calls from scratch, then the mean calls of each kind of change."""
    rng = random.Random(seed)
    rows = list(corpus[:size])
    spare = list(corpus[2 * size: 2 * size + num_changes])  # never loaded: the inserts
    embedder = CountingEmbedder(lazy_embedder("test").get())
    db = dm.connect(str(folder / f"{operator}-{size}.db"), llm=llm, embedder=embedder, background=False)
    db.table("passages", key="id", columns=COLUMNS).upsert(rows)
    if operator == "sem_join":
        db.table("others", key="id", columns=COLUMNS).upsert(list(corpus[size: 2 * size]))
    view = _define(db, operator)
    started = time.perf_counter()
    view.rows(fresh=True)
    build = _paid(db), embedder.texts, time.perf_counter() - started
    costs: dict[str, list[tuple[int, int, float]]] = {"insert": [], "update": [], "delete": []}
    live = [r["id"] for r in rows]
    passages = db.table("passages")
    for i in range(num_changes):
        kind = ("insert", "update", "delete")[i % 3]
        before_calls, before_texts, started = _paid(db), embedder.texts, time.perf_counter()
        if kind == "insert":
            row = spare[i % len(spare)] if spare else {**rows[0], "id": f"new-{i}"}
            passages.upsert(row)
            live.append(row["id"])
        elif kind == "update":
            key = rng.choice(live)
            old = passages.get(key)
            passages.upsert({**old, "title": old["title"] + " (revised)", "text": old["text"] + " (revised)"})
        else:
            key = live.pop(rng.randrange(len(live)))
            passages.delete(key)
        view.rows(fresh=True)
        costs[kind].append((_paid(db) - before_calls, embedder.texts - before_texts, time.perf_counter() - started))
    db.close()
    out: dict[str, Any] = {"from_scratch": build[0], **lotus_calls(operator, size)}
    for kind, seen in costs.items():
        out[kind] = sum(c for c, _t, _s in seen) / len(seen) if seen else 0.0
        out[f"{kind}_max"] = max((c for c, _t, _s in seen), default=0)
        out[f"{kind}_seconds"] = sum(s for _c, _t, s in seen) / len(seen) if seen else 0.0
        if operator in ("sem_join", "sem_search"):
            out[f"{kind}_embeddings"] = sum(t for _c, t, _s in seen) / len(seen) if seen else 0.0
    out["from_scratch_seconds"] = build[2]
    if operator in ("sem_join", "sem_search"):
        out["from_scratch_embeddings"] = build[1]
    return out


def _paid(db: dm.Database) -> int:
    """LLM calls paid; embeddings, on the ledger too, are counted by ``CountingEmbedder``."""
    return sum(1 for e in db.store.get_ledger() if e.outcome == "paid" and not is_embedding_operator(e.operator))


def run_operators_bench(*, data_file: Path, sizes: Sequence[int], operators: Sequence[str], llm: str,
                        num_changes: int = 30, seed: int = 0,
                        progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    unknown = [o for o in operators if o not in OPERATORS]
    if unknown:
        raise ConfigError(f"Unknown operators {unknown}; choose from {', '.join(OPERATORS)}")
    if not sizes or min(sizes) < 2:
        raise ConfigError(f"sizes must be at least 2 rows each, got {list(sizes)}")
    corpus = load_corpus(data_file)
    if 2 * max(sizes) + num_changes > len(corpus):
        raise ConfigError(f"{data_file} holds {len(corpus)} passages; size {max(sizes)} with {num_changes} changes "
                          f"needs {2 * max(sizes) + num_changes}")
    backend = lazy_llm(llm).get()
    result: dict[str, Any] = {"config": {"data": str(data_file), "llm": backend.model_id, "sizes": list(sizes),
                                         "changes": num_changes, "seed": seed, "k": K, "fanout": FANOUT,
                                         "candidates": CANDIDATES},
                              "labels": LABELS, "operators": {}}
    jobs = [(o, n) for o in operators for n in sizes]
    with tempfile.TemporaryDirectory() as folder:
        for done, (operator, size) in enumerate(jobs):
            result["operators"].setdefault(operator, {})[str(size)] = measure(
                operator, size, llm=backend, corpus=corpus, num_changes=num_changes, seed=seed, folder=Path(folder))
            if progress:
                progress("operators x sizes", done + 1, len(jobs))
    return result
