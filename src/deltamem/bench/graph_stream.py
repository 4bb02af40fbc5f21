"""``deltamem bench graph``: a knowledge graph over a passage corpus and answers over it, kept fresh through a
stream of passage inserts, edits and deletes, beside what LightRAG-style maintenance and a rebuild would pay.

    result = run_graph_bench([two_wiki(data_dir, passages=500)], llm="test", embedder="minilm", changes=100)

Per corpus, in one database: ``graph`` (``retrieve="graph"``, k passages), ``dense`` (``retrieve`` = the sentences
of k passages, the same prompt budget) and ``full`` (each question's own ten paragraphs, ``retrieve="all"``). It
measures the graph's build; per change the extraction calls and the answers refreshed (graph and dense), against
LightRAG-style maintenance of the same graph and a rebuild from scratch; recall@k of the supporting passages, graph
against dense retrieval with the same embedder (the passages its personalization starts from); answer accuracy
against gold (``contains_match``) for the three. At the end the graph view is checked against one built from scratch.

LightRAG's cost is computed from our graph's extractions with LightRAG's rules (``lightrag/constants.py`` and its
delete path): a chunk's extraction is ``1 + MAX_GLEANING`` calls; an entity or relation that a change merges into or
rebuilds asks for an LLM summary when it has at least ``FORCE_SUMMARY`` description fragments (one per passage).
``per item`` is the policy behind the measurement in LightRAG issue 2795 (1,593 calls for 85 deletions): a summary
call for every entity and relation a deleted passage described that other passages still describe.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import deltamem as dm
from deltamem.bench.answer_quality import contains_match
from deltamem.bench.graph_corpus import GraphCorpus, edited
from deltamem.changes import encode_key
from deltamem.cost_model import describe
from deltamem.llm.embedding_runs import is_embedding_operator
from deltamem.memory.graph_ppr import Ranking
from deltamem.operators.documents import split_sentences

MAX_GLEANING = 1  # LightRAG's DEFAULT_MAX_GLEANING: one more extraction pass per chunk
FORCE_SUMMARY = 8  # LightRAG's DEFAULT_FORCE_LLM_SUMMARY_ON_MERGE
GRAPH_OP = "1:llm_generate/graph"
KINDS = ("insert", "edit", "delete")
Progress = Callable[[str, int, int], None]


def _items(extraction: dict | None) -> set[tuple]:
    """What a passage's extraction describes, as LightRAG stores it: its entities, and its relations (undirected)."""
    if not extraction:
        return set()
    return {("entity", e) for e in extraction["entities"]} | \
        {("relation", *sorted((s, o))) for s, _r, o in extraction["triples"] if s != o}


def lightrag_calls(kind: str, old: dict | None, new: dict | None, support: Counter) -> tuple[int, int]:
    """LightRAG's calls for one change (``support`` counts, after the change, the passages describing each item):
    with its default rules, and with a summary per rebuilt item (the policy issue 2795 measured)."""
    removed, added = _items(old), _items(new)
    extract = 1 + MAX_GLEANING if kind != "delete" else 0
    rebuilt = {item for item in removed if support[item] > 0}  # a deleted passage's items still described elsewhere
    merged = {item for item in added if support[item] > 1}  # a new description merged into an existing item
    summaries = sum(support[item] >= FORCE_SUMMARY for item in rebuilt | merged)
    per_item = extract + len(rebuilt) + sum(support[item] >= FORCE_SUMMARY for item in merged - rebuilt)
    return extract + summaries, per_item


def run_graph_bench(corpora: list[GraphCorpus], *, llm: str, embedder: str, changes: int, k: int, seed: int,
                    progress: Progress | None = None) -> dict[str, Any]:
    results = {}
    for corpus in corpora:
        results[corpus.name] = _run_corpus(corpus, llm=llm, embedder=embedder, changes=changes, k=k, seed=seed,
                                           progress=progress or (lambda *_: None))
    return {"config": {"llm": llm, "embedder": embedder, "changes": changes, "k": k, "seed": seed},
            "corpora": results}


def _calls(db: dm.Database, view: str) -> tuple[int, int, int]:
    """(extraction calls, answer calls, retried extractions) the view asked, memo hits included. A retry asks again
    a passage whose earlier extraction was malformed: the cost of that passage, not of the change at hand."""
    entries = [e for e in db.store.get_ledger(view) if not is_embedding_operator(e.operator)]
    retries = sum(e.operator == GRAPH_OP and e.reason == "retry" for e in entries)
    extractions = sum(e.operator == GRAPH_OP for e in entries) - retries
    return extractions, len(entries) - extractions - retries, retries


def _refreshed(db: dm.Database, view: str, after: int) -> int:
    return sum(d.strategy not in ("skip", "retract") for d in db.store.get_decisions(view) if d.version > after)


def _run_corpus(corpus: GraphCorpus, *, llm: str, embedder: str, changes: int, k: int, seed: int,
                progress: Progress) -> dict[str, Any]:
    asked = corpus.questions
    sentences = sum(len(split_sentences(p["text"])) for p in corpus.passages) / max(1, len(corpus.passages))
    dense_k = max(1, round(k * sentences))
    with tempfile.TemporaryDirectory() as folder:
        db = dm.connect(str(Path(folder) / "graph.db"), llm=llm, embedder=embedder, background=False)
        passages = db.table("passages", key="pid", columns={"pid": "text", "title": "text", "text": "text"})
        table = db.table("questions", key="qid", columns={"qid": "text", "question": "text"})
        context = db.table("context", key="cid", columns={"cid": "text", "qid": "text", "title": "text",
                                                          "text": "text"})
        passages.upsert(corpus.passages)
        table.upsert([{"qid": q.qid, "question": q.question} for q in asked])
        context.upsert([{"cid": f"{q.qid}/{i}", "qid": q.qid, "title": p.title, "text": p.text}
                        for q in asked for i, p in enumerate(q.paragraphs)])
        progress(f"{corpus.name}: building the graph", 0, 1)
        started = time.perf_counter()
        graph = db.generate("graph", prompt="Answer the question from the passages.", context=table,
                            data_source=passages, retrieve="graph", k=k, strategy="skip")
        graph.rows(fresh=True)
        build_seconds = time.perf_counter() - started
        build = _calls(db, "graph")
        progress(f"{corpus.name}: building the graph", 1, 1)
        dense = db.generate("dense", prompt="Answer the question from the passages.", context=table,
                            data_source=passages, retrieve=dense_k, strategy="skip")
        full = db.generate("full", prompt="Answer the question from the passages.", context=table,
                           data_source=context, partition="qid", strategy="skip")
        for view in (dense, full):
            view.rows(fresh=True)
        quality = _quality(db, asked, corpus.supporting, k)
        stream = _stream(db, corpus, changes, seed, progress)
        estimate = describe(db.view("graph").estimate())  # the cost model, on what this run measured
        progress(f"{corpus.name}: a graph from scratch", 0, 1)
        check = db.generate("graph_check", prompt="Answer the question from the passages.", context=table,
                            data_source=passages, retrieve="graph", k=k, strategy="skip")
        same = check.rows(fresh=True).rows == [{**r} for r in graph.rows(fresh=True).rows] and \
            _prompts(db, "graph") == _prompts(db, "graph_check")
        progress(f"{corpus.name}: a graph from scratch", 1, 1)
        db.close()
    return {"passages": len(corpus.passages), "questions": len(asked), "dense_sentences": dense_k,
            "build": {"extraction_calls": build[0] + build[2], "answer_calls": build[1], "seconds": build_seconds},
            **quality, "stream": stream, "estimate": estimate, "equals_recompute": same}


def _prompts(db: dm.Database, view: str) -> dict[str, str]:
    return {key: e.fingerprint for (op, key), e in db.store.get_all_state(view).items() if op == "1:llm_generate"}


def _quality(db: dm.Database, asked, supporting: dict[str, set[str]], k: int) -> dict[str, Any]:
    """Recall@k of the supporting passages (graph, and dense over the same passage vectors), and accuracy."""
    state = db.store.get_all_state("graph")
    recall: dict[str, list[float]] = {"graph": [], "dense": []}
    for q in asked:
        entry = state.get(("1:llm_generate", encode_key(q.qid)))
        wanted = {encode_key(pid) for pid in supporting.get(q.qid, ())}
        if entry is None or entry.value is None or not wanted:
            continue
        ranking = Ranking.from_json(entry.value["graph"])
        for name, found in (("graph", ranking.passages), ("dense", ranking.dense)):
            recall[name].append(len(wanted & set(found[:k])) / len(wanted))
    accuracy = {}
    for view in ("graph", "dense", "full"):
        answers = {r["qid"]: r.get("answer") or "" for r in db.view(view).rows().rows}
        accuracy[view] = [float(contains_match(answers.get(q.qid, ""), q.answer)) for q in asked]
    return {"recall": recall, "accuracy": accuracy}


def _stream(db: dm.Database, corpus: GraphCorpus, changes: int, seed: int, progress: Progress) -> dict[str, Any]:
    """``changes`` passage changes, a third each of inserts, edits and deletes, one version each."""
    rng = random.Random(seed)
    passages = db.table("passages")
    current = {p["pid"]: p for p in corpus.passages}
    spare = list(corpus.spare)
    extractions = {key: e.value for (op, key), e in db.store.get_all_state("graph").items()
                   if op == GRAPH_OP and not key.startswith("[") and e.error is None}
    support = Counter(item for e in extractions.values() for item in _items(e))
    per_kind: dict[str, dict[str, list[int]]] = {kind: {} for kind in KINDS}
    before, dense_before = _calls(db, "graph"), _calls(db, "dense")  # each change's "after" is the next's "before"
    for i in range(changes):
        kind = KINDS[i % 3] if spare or KINDS[i % 3] != "insert" else "edit"
        before_version = db.version
        if kind == "insert":
            row = spare.pop(rng.randrange(len(spare)))
            passages.upsert(row)
        else:
            pid = rng.choice(sorted(current))
            row = {**current[pid], "text": edited(current[pid]["text"], rng)} if kind == "edit" else None
            passages.upsert(row) if row else passages.delete(pid)
        key = encode_key(row["pid"] if row else pid)
        for view in ("graph", "dense"):
            db.view(view).rows(fresh=True)
        if row:
            current[row["pid"]] = row
        else:
            current.pop(pid)
        old = extractions.pop(key, None)
        new = None
        if row:
            entry = db.store.get_state("graph", GRAPH_OP, [key]).get(key)
            new = entry.value if entry is not None and entry.error is None else None
            if new is not None:
                extractions[key] = new
        support.subtract(_items(old))
        support.update(_items(new))
        light, per_item = lightrag_calls(kind, old, new, support)
        after, dense_after = _calls(db, "graph"), _calls(db, "dense")
        figures = {"extraction_calls": after[0] - before[0], "retries": after[2] - before[2],
                   "graph_answers": _refreshed(db, "graph", before_version),
                   "dense_answers": _refreshed(db, "dense", before_version), "lightrag": light,
                   "lightrag_per_item": per_item, "scratch": len(current),
                   "dense_calls": dense_after[1] - dense_before[1]}
        for name, value in figures.items():
            per_kind[kind].setdefault(name, []).append(value)
        before, dense_before = after, dense_after
        progress(f"{corpus.name}: passage changes", i + 1, changes)
    return per_kind
