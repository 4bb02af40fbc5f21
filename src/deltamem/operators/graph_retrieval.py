"""``retrieve="graph"`` for ``LLM_GENERATE``: the prompt holds the ``k`` passages that Personalized PageRank from
the question's entities reaches, over a knowledge graph of DATA_SOURCE kept by an embedded ``sem_graph``.

    answers = db.generate("answers", prompt="Answer.", context=questions, data_source=passages, retrieve="graph", k=5)

Each passage is one chunk (the graph ranks passages, not sentences). The graph's state lives under the operator's
``/graph`` op id: one extraction call per passage, memoised and on the ledger, as ``sem_graph`` pays it. An answer
keeps its ``Ranking`` (``deltamem.memory.graph_ppr``): its seeds, its passages, its subgraph with the mass of each
node, and the bound's slack. A DATA_SOURCE change reaches an answer only when it touches that subgraph (its seeds,
its passages, the passages its personalization starts from, or a node of its subgraph), or when the PPR change
bound reaches the gap between its k-th and next passage; otherwise the answer is skipped with no call and no
re-ranking (exact). A reached answer is re-ranked; when its passages are the same its prompt is identical and it is
skipped too, else it is refreshed with the operator's strategies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from deltamem.changes import Delta, RowKey, decode_key
from deltamem.memory.graph_ppr import (
    GraphChange,
    PassageGraph,
    Ranking,
    Verdict,
    entity_node,
    evidence_paths,
    judge,
    node_label,
    passage_node,
)
from deltamem.memory.strategies import ChunkChanges
from deltamem.operators.base import OperatorContext
from deltamem.operators.documents import Chunk, Documents
from deltamem.operators.graph import GraphUpdate, SemGraph
from deltamem.store.base import StateEntry

DEFAULT_K = 5


@dataclass
class GraphVersion:
    """The graph at one version: what the version changed in it, and (built at most once, when some answer needs
    ranking) its PPR matrix."""

    change: GraphChange
    update: GraphUpdate
    built: PassageGraph | None = None

    def passage_graph(self, docs: Documents) -> PassageGraph:
        if self.built is None:
            by_doc = {chunk.doc: docs.vectors.get(chunk.ident) for chunk in docs.chunks}
            self.built = PassageGraph.build(by_doc, self.update.extractions(), self.update.synonyms())
        return self.built


class GraphRetrieval:
    """The graph side of one ``llm_generate`` operator: keeps the graph, says which answers a change reaches, ranks.
    It holds no state between versions: the graph lives in the store, and ``apply`` returns the version's."""

    def __init__(self, op_id: str, document: str, k: int):
        self.sem_graph = SemGraph(f"{op_id}/graph", document)
        self.k = k

    @property
    def op_id(self) -> str:
        return self.sem_graph.op_id

    def apply(self, deltas: Sequence[Delta], ctx: OperatorContext,
              state: Mapping[tuple[str, RowKey], StateEntry]) -> GraphVersion:
        """Fold this version's passage changes into the graph (writing it) and say what changed in it."""
        own = {key: e for (op, key), e in state.items() if op == self.op_id}
        update = self.sem_graph.apply_on(deltas, ctx, own)
        touched: set[str] = set()
        entities: set[str] = set()
        for _key, before, after in update.changed_rows():
            row = after or before
            if row["kind"] == "node":
                touched.add(entity_node(row["subject"]))
                if before is None or after is None:
                    entities.add(row["subject"])
                moved = set(before["passages"] if before else ()) ^ set(after["passages"] if after else ())
                touched |= {passage_node(p) for p in moved}
            elif row["kind"] in ("edge", "synonym"):
                touched |= {entity_node(row["subject"]), entity_node(row["object"])}
        passages = set(update.passages)
        touched |= {passage_node(p) for p in passages}
        update.commit(ctx, self.op_id)
        return GraphVersion(GraphChange(frozenset(touched), frozenset(entities), frozenset(passages)), update)

    def judge(self, old: StateEntry, question: str, change: GraphChange, chunks: ChunkChanges,
              question_vec: np.ndarray | None) -> tuple[Verdict, StateEntry]:
        """Whether this version's change may reach an answer, and its entry with the new slack (for a skip)."""
        ranking = Ranking.from_json(old.value["graph"])
        added = {ident[0]: vector for ident, vector in chunks.added_vectors.items()}
        changed = replace(change, passages=change.passages | {ident[0] for ident in [*chunks.removed, *chunks.added]})
        verdict = judge(ranking, changed, question, added, question_vec)
        kept = {**old.value, "graph": {**old.value["graph"], "slack": verdict.slack}}
        return verdict, StateEntry(old.key, old.fingerprint, old.input_row, kept, None, old.cost)

    def rank(self, graph: GraphVersion, questions: Sequence[str], vectors: Sequence[np.ndarray | None],
             docs: Documents) -> list[tuple[list[Chunk], Ranking]]:
        """Per question, the chunks of its top-``k`` passages in prompt order, and its ranking."""
        if not questions:
            return []
        out = []
        for ranking in graph.passage_graph(docs).rank(questions, vectors, self.k):
            chosen = set(ranking.passages)
            out.append(([chunk for chunk in docs.chunks if chunk.doc in chosen], ranking))
        return out


def describe_ranking(value: Mapping) -> dict:
    """An answer's graph dependencies for ``explain``: seeds, passages, subgraph, edges and evidence paths."""
    ranking = Ranking.from_json(value)
    return {
        "seeds": ranking.seeds,
        "passages": [decode_key(p) for p in ranking.passages],
        "kth": ranking.kth, "next": ranking.next, "slack": ranking.slack, "cut": ranking.cut,
        "subgraph": {node_label(n): mass for n, mass in ranking.subgraph.items()},
        "edges": [[node_label(u), node_label(v), mass] for u, v, mass in ranking.edges],
        "paths": {str(decode_key(p)): path for p, path in evidence_paths(ranking).items()},
    }
