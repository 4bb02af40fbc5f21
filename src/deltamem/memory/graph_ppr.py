"""Personalized PageRank over a ``sem_graph``: which passages a question's entities lead to, and which part of the
graph an answer depends on (HippoRAG's retrieval, with a bound that says when a change cannot move the answer).

    ranking = PassageGraph.build(passages, extractions, synonyms).rank([question], [question_vec], k=5)[0]

The graph has a node per entity and per passage. Edges, all undirected: passage - entity it mentions (weight 1),
subject - object of each fact (weight: the passages asserting it), synonym - synonym (weight: their similarity).
Each row of the transition matrix is normalised; a node with no edge keeps its mass (a self-loop).

A question's personalization puts half its mass on its seeds, the entities whose names occur in the question as
whole words, each in proportion to one over the passages naming it (HippoRAG's node specificity), and the other
half (all of it when no entity occurs) on the ``k`` passages closest to the question by embedding, in proportion to
their cosine. PPR restarts there with probability ``RESTART`` (HippoRAG's damping of 0.5); the ``k`` passages with
the most mass, ties in key order, are the question's passages.

**The bound.** Write ``p`` for a PPR vector, ``s`` its personalization, ``a = RESTART`` and ``W`` the transition
matrix. A change that leaves ``s`` alone (one that touches a seed or a passage it starts from is always taken to
reach the answer) and rewrites the rows of the nodes ``T`` moves ``p`` by at most
``||p' - p||_1 <= (1 - a) / a * sum_{u in T} p(u) * ||W'_u - W_u||_1 <= 2 (1 - a) / a * sum_{u in T} p(u)``
(from ``(p' - p)(I - (1 - a) W') = (1 - a) p (W' - W)`` and ``||x (I - (1 - a) W')^-1||_1 <= ||x||_1 / a``).
Any two entries together move by at most that much, so the top ``k`` cannot change while it is below the gap
between the k-th and the (k+1)-th score. An answer keeps the mass of its ``subgraph`` (its heaviest nodes; every other node has at
most ``cut``) and the ``slack`` (the L1 distance its stored ``p`` may be from the current one, after changes judged
by the bound), which is all the bound needs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import sparse

from deltamem.changes import RowKey, key_order

RESTART = 0.5  # the probability of returning to the personalization at each step (HippoRAG: damping 0.5)
TOLERANCE = 1e-12  # power iteration stops when an iteration moves p by less than this (L1)
MARGIN = 1e-9  # numerical slack added to every bound: power iteration is this exact and more
MAX_SUBGRAPH = 48  # the heaviest nodes an answer keeps as its subgraph
MAX_EDGES = 64  # the edges carrying the most mass between them it keeps, for explain
SEED_SHARE = 0.5  # the personalization's share on seed entities when the question names any
MAX_SEED_WORDS = 12  # the longest entity name (in words) looked for in a question
_WORD = re.compile(r"[\w'-]+")


def entity_node(name: str) -> str:
    return "e:" + name


def passage_node(key: RowKey) -> str:
    return "p:" + key


def node_label(node: str) -> str:
    """``"entity 'ada lovelace'"`` or ``"passage 17"``, for reasons and explain."""
    kind, _, name = node.partition(":")
    return f"entity {name!r}" if kind == "e" else f"passage {name}"


@dataclass(frozen=True)
class Ranking:
    """One question's retrieval: its top-``k`` passages (rank order) and what the bound needs to keep it."""

    passages: list[str]  # passage keys, best first
    kth: float  # the k-th passage's mass
    next: float | None  # the (k+1)-th's; None when every passage is in the top k
    seeds: list[str]  # entity names found in the question
    dense: list[str]  # the passages personalised by their cosine, best first
    dense_last: float | None  # the cosine of the last of them (a new passage above it changes the personalization)
    subgraph: dict[str, float]  # node -> mass, the heaviest nodes
    cut: float  # every node outside the subgraph has at most this mass
    edges: list[list]  # [u, v, mass carried from u to v], the heaviest between subgraph nodes
    slack: float = 0.0  # how far (L1) the stored masses may be from the current ones

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, value: Mapping) -> "Ranking":
        return cls(**value)


@dataclass(frozen=True)
class GraphChange:
    """What one version changed in the graph: the nodes whose edges changed (``touched``), the entities that
    appeared or left, and the passages whose text or extraction changed."""

    touched: frozenset[str]
    entities: frozenset[str]  # entity names added or removed
    passages: frozenset[str]  # passage keys inserted, edited, deleted or extracted again

    def __bool__(self) -> bool:
        return bool(self.touched or self.entities or self.passages)


def phrase(text: str) -> str:
    """The words of ``text``, lower case, joined by one space: how a name and a question are compared."""
    return " ".join(_WORD.findall(text.lower()))


def phrase_index(names: Iterable[str]) -> dict[str, list[str]]:
    """Entity names by their phrase (two names may share one: "st. ives" and "st ives")."""
    index: dict[str, list[str]] = {}
    for name in names:
        index.setdefault(phrase(name), []).append(name)
    return index


def seeds_in(question: str, index: Mapping[str, list[str]]) -> list[str]:
    """The entity names whose phrase occurs in ``question`` as whole words, sorted."""
    words = _WORD.findall(question.lower())
    found: set[str] = set()
    for i in range(len(words)):
        for j in range(i + 1, min(len(words), i + MAX_SEED_WORDS) + 1):
            found.update(index.get(" ".join(words[i:j]), ()))
    return sorted(found)


class PassageGraph:
    """The graph of entities and passages as a sparse transition matrix (SciPy sparse: the power iteration is a
    few sparse products, and the bound needs the iteration's own tolerance, which igraph's solvers do not expose).

    Nodes are in a canonical order (entities by name, then passages by key), so the same graph always gives the same
    matrix and the same masses, bit for bit: an incremental build and one from scratch rank alike.
    """

    def __init__(self, nodes: list[str], matrix: sparse.csr_matrix, entities: dict[str, int],
                 passages: list[str], passage_vectors: np.ndarray | None, mentions: np.ndarray):
        self.nodes = nodes
        self.index = {node: i for i, node in enumerate(nodes)}
        self.transposed = matrix.T.tocsr()
        self.matrix = matrix
        self.entities = entities  # entity name -> node index
        self.phrases = phrase_index(entities)
        self.mentions = mentions  # per entity, the passages that name it
        self.passages = passages  # passage keys, in key order; their nodes follow the entities'
        self.passage_vectors = passage_vectors  # (passages, dim), or None without an embedder

    @classmethod
    def build(cls, passages: Mapping[str, np.ndarray | None], extractions: Mapping[str, Mapping],
              synonyms: Iterable[tuple[str, str, float]]) -> "PassageGraph":
        """``passages``: every passage key and its vector; ``extractions``: per passage key its entities and triples
        (a passage whose extraction failed is absent: a node without edges); ``synonyms``: (a, b, similarity)."""
        keys = sorted(passages, key=key_order)
        names = sorted({name for ex in extractions.values() for name in ex["entities"]})
        entities = {name: i for i, name in enumerate(names)}
        nodes = [entity_node(n) for n in names] + [passage_node(k) for k in keys]
        weights: dict[tuple[int, int], float] = {}

        def connect(a: int, b: int, weight: float) -> None:
            if a != b:
                for pair in ((a, b), (b, a)):
                    weights[pair] = weights.get(pair, 0.0) + weight

        mentions = np.zeros(len(names))
        for i, key in enumerate(keys, start=len(names)):
            extraction = extractions.get(key)
            if extraction is None:
                continue
            for name in extraction["entities"]:
                connect(i, entities[name], 1.0)
                mentions[entities[name]] += 1
            for subject, _relation, obj in extraction["triples"]:
                connect(entities[subject], entities[obj], 1.0)
        for a, b, similarity in synonyms:
            if a in entities and b in entities:
                connect(entities[a], entities[b], similarity)
        n = len(nodes)
        pairs = sorted(weights)
        rows = np.fromiter((p[0] for p in pairs), dtype=np.int64, count=len(pairs))
        cols = np.fromiter((p[1] for p in pairs), dtype=np.int64, count=len(pairs))
        data = np.fromiter((weights[p] for p in pairs), dtype=np.float64, count=len(pairs))
        dangling = np.setdiff1d(np.arange(n), rows)
        rows, cols = np.concatenate([rows, dangling]), np.concatenate([cols, dangling])
        data = np.concatenate([data, np.ones(len(dangling))])
        degree = np.bincount(rows, weights=data, minlength=n)
        matrix = sparse.csr_matrix((data / degree[rows], (rows, cols)), shape=(n, n))
        vectors = [passages[k] for k in keys]
        stacked = np.stack(vectors) if keys and all(v is not None for v in vectors) else None
        return cls(nodes, matrix, entities, keys, stacked, mentions)

    def seeds(self, question: str) -> list[str]:
        return seeds_in(question, self.phrases)

    def rank(self, questions: Sequence[str], question_vectors: Sequence[np.ndarray | None], k: int
             ) -> list[Ranking]:
        """The top-``k`` passages of each question, with the subgraph that carried them (one batched iteration)."""
        if not questions:
            return []
        first = len(self.entities)
        personalization = np.zeros((len(questions), len(self.nodes)))
        seeds, dense = [], []
        for q, (question, vector) in enumerate(zip(questions, question_vectors, strict=True)):
            found = self.seeds(question)
            top, last = self._dense(vector, k)
            seeds.append(found)
            dense.append((top, last))
            weights = np.array([max(score, 0.0) for _key, score in top])
            share = SEED_SHARE if found and weights.sum() > 0 else 1.0 if found else 0.0
            # A seed's weight is its specificity (HippoRAG's): one over the passages that name it.
            specificity = np.array([1.0 / max(1.0, self.mentions[self.entities[name]]) for name in found])
            for name, weight in zip(found, specificity, strict=True):
                personalization[q, self.entities[name]] += share * weight / specificity.sum()
            if weights.sum() > 0:
                for (i, _score), w in zip(top, weights, strict=True):
                    personalization[q, first + i] += (1.0 - share) * w / weights.sum()
            if personalization[q].sum() == 0 and self.passages:  # nothing to start from: every passage alike
                personalization[q, first:] = 1.0 / len(self.passages)
        masses = self._ppr(personalization)
        return [self._ranking(masses[q], seeds[q], dense[q], k) for q in range(len(questions))]

    def _dense(self, vector: np.ndarray | None, k: int) -> tuple[list[tuple[int, float]], float | None]:
        """The ``k`` passages closest to the question (index, cosine), ties in key order, and the k-th cosine."""
        if vector is None or self.passage_vectors is None or not self.passages:
            return [], None
        scores = self.passage_vectors @ np.asarray(vector, dtype=np.float64)
        order = np.lexsort((np.arange(len(scores)), -scores))[:k]
        top = [(int(i), float(scores[i])) for i in order]
        return top, top[-1][1]

    def _ppr(self, personalization: np.ndarray) -> np.ndarray:
        start = personalization.T  # (nodes, questions): one column per question
        masses = start.copy()
        for _ in range(200):
            after = RESTART * start + (1.0 - RESTART) * (self.transposed @ masses)
            moved = np.abs(after - masses).sum(axis=0).max(initial=0.0)
            masses = after
            if moved < TOLERANCE:
                break
        return masses.T

    def _ranking(self, mass: np.ndarray, seeds: list[str], dense: tuple[list, float | None], k: int) -> Ranking:
        first = len(self.entities)
        passage_mass = mass[first:]
        order = np.lexsort((np.arange(len(passage_mass)), -passage_mass))
        top = order[:k]
        heaviest = np.lexsort((np.arange(len(mass)), -mass))
        kept = [i for i in heaviest[:MAX_SUBGRAPH] if mass[i] > 0]
        cut = float(mass[heaviest[MAX_SUBGRAPH]]) if len(mass) > MAX_SUBGRAPH else 0.0
        inside = set(kept)
        edges = []
        for u in kept:
            start, end = self.matrix.indptr[u], self.matrix.indptr[u + 1]
            for v, w in zip(self.matrix.indices[start:end], self.matrix.data[start:end], strict=True):
                if v in inside and v != u:
                    edges.append([self.nodes[u], self.nodes[v], float(mass[u] * w)])
        edges.sort(key=lambda e: (-e[2], e[0], e[1]))
        dense_top, dense_last = dense
        return Ranking(
            passages=[self.passages[i] for i in top],
            kth=float(passage_mass[top[-1]]) if len(top) else 0.0,
            next=float(passage_mass[order[k]]) if len(order) > k else None,
            seeds=seeds,
            dense=[self.passages[i] for i, _score in dense_top],
            dense_last=dense_last,
            subgraph={self.nodes[i]: float(mass[i]) for i in kept},
            cut=cut,
            edges=edges[:MAX_EDGES],
        )


@dataclass(frozen=True)
class Verdict:
    """Whether a change may reach an answer's top-k passages, why, and the answer's slack when it does not."""

    reached: bool
    reason: str
    slack: float


def judge(ranking: Ranking, change: GraphChange, question: str, added_vectors: Mapping[str, np.ndarray],
          question_vec: np.ndarray | None) -> Verdict:
    """Whether ``change`` may reach the question's top-k passages; when it provably does not, the new slack."""

    def reached(reason: str) -> Verdict:
        return Verdict(True, reason, ranking.slack)

    hit = sorted(set(ranking.passages) & change.passages, key=key_order)
    if hit:
        return reached(f"passage {hit[0]} in its prompt changed")
    named = seeds_in(question, phrase_index(change.entities))
    if named:
        return reached(f"entity {named[0]!r}, named in its question, appeared or left")
    seeds = sorted(s for s in ranking.seeds if entity_node(s) in change.touched)
    if seeds:  # its passages changed, and with them its weight in the personalization
        return reached(f"seed entity {seeds[0]!r} changed")
    if not ranking.seeds and not ranking.dense and change.passages:
        return reached("its personalization is spread over every passage, and passages changed")
    dense_hit = sorted(set(ranking.dense) & change.passages, key=key_order)
    if dense_hit:
        return reached(f"passage {dense_hit[0]}, which its personalization starts from, changed")
    if question_vec is not None and ranking.dense_last is not None:
        for key, vector in sorted(added_vectors.items()):
            if float(np.dot(question_vec, vector)) >= ranking.dense_last:
                return reached(f"passage {key} is now among the closest to its question")
    inside = sorted(change.touched & set(ranking.subgraph))
    if inside:
        return reached(f"it touched its subgraph at {node_label(inside[0])}")
    if ranking.next is None:
        return reached("every passage is in its prompt")
    # Outside the subgraph every node had at most cut, plus its part of the slack.
    moved = ranking.slack + 2.0 * (1.0 - RESTART) / RESTART * (len(change.touched) * ranking.cut + ranking.slack)
    gap = ranking.kth - ranking.next
    if moved + MARGIN >= gap:
        return reached(f"the PPR change bound {moved:.2g} reaches the gap {gap:.2g} between its k-th and next passage")
    return Verdict(False, f"the change touched {len(change.touched)} nodes outside its subgraph; PPR moves by at most "
                          f"{moved:.2g} < {gap:.2g}, the gap between its k-th and next passage", moved)


def evidence_paths(ranking: Ranking) -> dict[str, list[str]]:
    """Per prompt passage, a path of kept edges from a seed entity to it (breadth first, heaviest edges first), or
    the passage alone when its mass came from the personalization (it is among the closest by embedding)."""
    out_edges: dict[str, list[str]] = {}
    for u, v, _mass in ranking.edges:
        out_edges.setdefault(u, []).append(v)
    parent: dict[str, str | None] = {entity_node(s): None for s in ranking.seeds}
    frontier = list(parent)
    while frontier:
        following = []
        for u in frontier:
            for v in out_edges.get(u, ()):
                if v not in parent:
                    parent[v] = u
                    following.append(v)
        frontier = following
    paths = {}
    for key in ranking.passages:
        node: str | None = passage_node(key)
        if node not in parent:
            paths[key] = [node_label(node) + " (closest by embedding)" if key in ranking.dense else node_label(node)]
            continue
        path = []
        while node is not None:
            path.append(node_label(node))
            node = parent[node]
        paths[key] = path[::-1]
    return paths
