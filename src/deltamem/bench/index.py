"""Timings of vector search: the HNSW index behind ``View.search``, and the clustering of ``sem_search_many``.

    run_index_bench(sizes=(10_000, 100_000), dim=384, seed=0)   # inserts/s, query latency, recall@10 vs exact
    run_standing_search_bench(num_queries=1_000)                  # similarities computed vs every query per row

Invariant: every figure is measured in the same run as its baseline (exact NumPy search for the index; comparing
each new row with every standing query for ``sem_search_many``), on data generated from ``seed``.

The index data is synthetic, since no embedding model runs here. ``"clustered"`` (the default) imitates sentence
embeddings: ``n // 100`` random unit centres, each vector a centre plus Gaussian noise of the same norm (cosine to its
centre about 0.7), renormalised. ``"uniform"`` draws i.i.d. Gaussian directions: no structure at all, the worst case
for any approximate index (recall needs a much larger ``expansion_search`` there). Queries come from the same
distribution and are not in the index. Costs: no model or embedding call in ``run_index_bench``; one embedding per
text (the deterministic test embedder) in ``run_standing_search_bench``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from deltamem.changes import encode_key
from deltamem.memory.vector_index import CONNECTIVITY, EXPANSION_ADD, EXPANSION_SEARCH, VectorIndex

DATA = ("clustered", "uniform")


def synthetic_vectors(n: int, dim: int, rng: np.random.Generator, *, data: str = "clustered",
                      centres: np.ndarray | None = None) -> np.ndarray:
    """``n`` float32 unit vectors of the named distribution (``centres`` fixes the clusters of ``"clustered"``)."""
    if data not in DATA:
        raise ValueError(f"Unknown data {data!r}; use one of {', '.join(DATA)}")
    noise = rng.standard_normal((n, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
    if data == "clustered":
        assert centres is not None, "bench: clustered vectors need their centres"
        noise += centres[rng.integers(0, len(centres), n)]
    return noise / np.linalg.norm(noise, axis=1, keepdims=True)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, batch: int = 256) -> np.ndarray:
    """Row indices of the ``k`` most similar vectors per query (brute force, in query batches), best first."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), batch):
        sims = queries[start : start + batch] @ vectors.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        out[start : start + batch] = np.take_along_axis(top, order, axis=1)
    return out


def run_index_bench(sizes: tuple[int, ...] = (10_000, 100_000), dim: int = 384, seed: int = 0, *,
                    num_queries: int = 1_000, k: int = 10, data: str = "clustered",
                    connectivity: int = CONNECTIVITY, expansion_add: int = EXPANSION_ADD,
                    expansion_search: int = EXPANSION_SEARCH) -> dict[str, Any]:
    """Per size: bulk inserts per second, single-query latency (mean, p50, p99) of the index and of exact NumPy
    search, and recall@k of the index against exact search."""
    options = {"connectivity": connectivity, "expansion_add": expansion_add, "expansion_search": expansion_search}
    results = []
    for n in sizes:
        rng = np.random.default_rng([seed, n])
        centres = synthetic_vectors(max(1, n // 100), dim, rng, data="uniform") if data == "clustered" else None
        vectors = synthetic_vectors(n, dim, rng, data=data, centres=centres)
        queries = synthetic_vectors(num_queries, dim, rng, data=data, centres=centres)
        keys = [encode_key(i) for i in range(n)]

        start = time.perf_counter()
        index = VectorIndex.build(dim, keys, vectors, exact_below=0, **options)  # always the graph
        build_seconds = time.perf_counter() - start

        latencies, found = [], []
        for query in queries:
            start = time.perf_counter()
            hits = index.search(query, k)
            latencies.append(time.perf_counter() - start)
            found.append({int(key) for key, _score in hits})
        exact_latencies = []
        for query in queries[: min(100, num_queries)]:  # a matrix-vector product each: slow, so fewer
            start = time.perf_counter()
            sims = vectors @ query
            np.argpartition(-sims, k - 1)[:k]
            exact_latencies.append(time.perf_counter() - start)
        truth = exact_top_k(vectors, queries, k)
        recall = float(np.mean([len(found[i] & set(truth[i].tolist())) / k for i in range(num_queries)]))
        results.append({
            "n": n,
            "build_seconds": round(build_seconds, 3),
            "inserts_per_second": round(n / build_seconds),
            "query_ms_mean": round(1e3 * float(np.mean(latencies)), 4),
            "query_ms_p50": round(1e3 * float(np.percentile(latencies, 50)), 4),
            "query_ms_p99": round(1e3 * float(np.percentile(latencies, 99)), 4),
            "exact_query_ms_mean": round(1e3 * float(np.mean(exact_latencies)), 4),
            f"recall_at_{k}": round(recall, 4),
        })
        del index
    return {"data": data, "dim": dim, "seed": seed, "num_queries": num_queries, "k": k, "params": options,
            "metric": "cosine", "dtype": "float32", "sizes": results}


def run_standing_search_bench(num_queries: int = 1_000, num_rows: int = 2_000, *, num_topics: int = 50, k: int = 5,
                              batch: int = 100, dim: int = 384) -> dict[str, Any]:
    """A ``sem_search_many`` view with ``num_queries`` standing queries in ``num_topics`` topics, fed ``num_rows``
    new rows in batches of ``batch``: the similarities it computed, beside what comparing each new row with every
    query would have (the same rescans counted in both). On the deterministic hashing embedder with ``dim``
    buckets (a query or row is four topic words and one word of its own)."""
    from deltamem import connect  # here, not at the top: the engine imports the index module this one imports
    from deltamem.llm.scripted import HashingEmbedder
    from deltamem.relation import build_operators

    topics = [[f"topic{t}word{w}" for w in range(4)] for t in range(num_topics)]
    db = connect(":memory:", llm="test", embedder=HashingEmbedder(dim), background=False)
    try:
        docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
        queries = db.table("queries", key="qid", columns={"qid": "int", "query": "text"})
        queries.upsert([{"qid": i, "query": " ".join(topics[i % num_topics] + [f"query{i}"])}
                        for i in range(num_queries)])
        seed_rows = [{"id": i, "text": " ".join(topics[i % num_topics][:3] + [f"row{i}"])}
                     for i in range(k * num_topics)]  # so that every query's top k is full
        docs.upsert(seed_rows)
        view = db.view("alerts", docs.sem_search_many(queries, k=k, column="text"))
        db.maintain()
        operator = build_operators(db._view_def(view.name).plan)[0]
        built = operator.get_stats(db.store, view.name)
        start = time.perf_counter()
        for first in range(len(seed_rows), len(seed_rows) + num_rows, batch):
            docs.upsert([{"id": i, "text": " ".join(topics[(7 * i) % num_topics] + [f"row{i}"])}
                         for i in range(first, first + batch)])
            db.maintain()
        seconds = time.perf_counter() - start
        stats = operator.get_stats(db.store, view.name)
        computed = stats.num_similarities - built.num_similarities
        exhaustive = stats.num_exhaustive - built.num_exhaustive
        return {"num_queries": num_queries, "num_clusters": stats.num_clusters, "num_new_rows": num_rows, "k": k,
                "similarities": computed, "similarities_every_query": exhaustive,
                "saved": round(1 - computed / exhaustive, 4) if exhaustive else 0.0,
                "similarities_per_row": round(computed / num_rows, 1), "seconds": round(seconds, 2),
                "embedding_calls": db.embedder.num_texts}
    finally:
        db.close()
