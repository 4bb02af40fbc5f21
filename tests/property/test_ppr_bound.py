"""The PPR change bound (``deltamem.memory.graph_ppr.judge``): whenever it says a change cannot reach a question's
top-k passages, the passages ranked from scratch on the changed graph are the same, over chains of changes that
carry the slack, with subgraphs small enough that the bound's gap test decides."""

from __future__ import annotations

import hashlib
import json
from unittest import mock

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltamem.memory import graph_ppr
from deltamem.memory.graph_ppr import GraphChange, PassageGraph, judge, passage_node

NAMES = ["ada", "babbage", "london", "turing", "cambridge", "hopper", "navy", "curie", "nobel", "paris", "tea",
         "england"]
EXTRACTION = st.lists(st.sampled_from(NAMES), min_size=0, max_size=4, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({
        "entities": st.just(sorted(names)),
        "triples": st.lists(st.tuples(st.sampled_from(names), st.just("rel"), st.sampled_from(names)).map(list),
                            max_size=3) if names else st.just([]),
    }))
KEYS = [f'"{c}"' for c in "abcdefghij"]
CHANGE = st.one_of(st.tuples(st.just("put"), st.sampled_from(KEYS), EXTRACTION),
                   st.tuples(st.just("delete"), st.sampled_from(KEYS)))


def vector(key: str, extraction: dict | str) -> np.ndarray:
    """A passage's (or the question's) vector: a function of its key and content, as an embedding is of its text."""
    text = json.dumps([key, extraction], sort_keys=True)
    v = np.random.default_rng(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)).normal(size=8)
    return v / np.linalg.norm(v)


def graph_of(extractions: dict, synonyms: list) -> PassageGraph:
    return PassageGraph.build({k: vector(k, e) for k, e in extractions.items()}, extractions, synonyms)


def rows(graph: PassageGraph) -> dict[str, dict[str, float]]:
    out = {}
    for i, node in enumerate(graph.nodes):
        start, end = graph.matrix.indptr[i], graph.matrix.indptr[i + 1]
        columns, weights = graph.matrix.indices[start:end], graph.matrix.data[start:end]
        out[node] = {graph.nodes[j]: w for j, w in zip(columns, weights, strict=True)}
    return out


def change_between(before: PassageGraph, after: PassageGraph, passages: set[str]) -> GraphChange:
    """The true change: every node whose transition row differs, entities that came or went, passages changed."""
    old, new = rows(before), rows(after)
    touched = {n for n in old.keys() | new.keys() if old.get(n) != new.get(n)} | {passage_node(p) for p in passages}
    entities = set(before.entities) ^ set(after.entities)
    return GraphChange(frozenset(touched), frozenset(entities), frozenset(passages))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=st.dictionaries(st.sampled_from(KEYS), EXTRACTION, min_size=2, max_size=8),
       changes=st.lists(CHANGE, min_size=1, max_size=6),
       question=st.lists(st.sampled_from(NAMES), max_size=2).map(lambda ns: "what about " + " and ".join(ns)),
       synonym=st.booleans(), k=st.integers(1, 3), subgraph=st.sampled_from([2, 4, 8, 48]))
def test_a_change_the_bound_lets_pass_never_changes_the_top_k(start, changes, question, synonym, k, subgraph):
    synonyms = [("ada", "babbage", 0.95), ("london", "england", 0.9)] if synonym else []
    qvec = vector("question", question)
    with mock.patch.object(graph_ppr, "MAX_SUBGRAPH", subgraph):
        extractions = dict(start)
        graph = graph_of(extractions, synonyms)
        ranking = graph.rank([question], [qvec], k)[0]
        for change in changes:
            after = dict(extractions)
            if change[0] == "put":
                after[change[1]] = change[2]
            else:
                after.pop(change[1], None)
            new_graph = graph_of(after, synonyms)
            touched = {change[1]} if (change[1] in extractions) != (change[1] in after) or \
                extractions.get(change[1]) != after.get(change[1]) else set()
            added = {change[1]: vector(change[1], after[change[1]])} if change[1] in after and touched else {}
            verdict = judge(ranking, change_between(graph, new_graph, touched), question, added, qvec)
            fresh = new_graph.rank([question], [qvec], k)[0]
            if verdict.reached:
                ranking = fresh
            else:
                assert fresh.passages == ranking.passages or set(fresh.passages) == set(ranking.passages), \
                    (verdict.reason, ranking, fresh)
                ranking = graph_ppr.Ranking(**{**ranking.to_json(), "slack": verdict.slack})
            extractions, graph = after, new_graph
