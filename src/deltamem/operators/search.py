"""Vector search: ``sem_index`` (ad-hoc top-k over a view), ``sem_search`` (one standing top-k query) and
``sem_search_many`` (many standing top-k queries, clustered, as in VectraFlow).

    db.view("idx", docs.sem_index("text")).search("vector databases", k=5)   # rows with ``score``, best first
    db.view("top5", docs.sem_search("vector databases", k=5, column="text"))
    db.view("alerts", docs.sem_search_many(db.table("subs", key="sid"), k=3, column="text", query_column="query"))

Invariant: every embedding lives in the store, fingerprinted by the embedder's model id and the embedded text, so a
row is embedded again only when that text changes; a standing view is always the exact top k of its current input
(cosine similarity = dot product of unit vectors; ties by row key order), equal to a recompute from scratch. Rows
whose column is NULL are not indexed or ranked. In-memory structures (the HNSW index behind ``View.search``) are
caches rebuilt from the store.

Costs. Embedding calls are counted by the embedder (``db.embedder.num_texts`` on the built-in ones); similarities are
dot products, no model call; ``sem_search_many`` counts its similarities (``SemSearchMany.get_stats``).

=====================  ===========================  ===========================  ===================================
operator               insert                       update                       delete / TTL expiry
=====================  ===========================  ===========================  ===================================
sem_index              1 embedding                  1 if the column changed,     0; the vector leaves the store and
                                                    else 0                       the index
sem_search             1 embedding, 1 similarity    the same if the column       0; a top-k member leaving promotes
                       (the query: once, ever)      changed, else 0              the next best from stored scores
sem_search_many, row   1 embedding; 1 similarity    the same if the column       0; each query that lost a top-k
                       per query cluster, then one  changed, else 0              member is rescanned: 1 similarity
                       per query of each cluster                                 per row (no embedding)
                       the row could enter
sem_search_many,       1 embedding, 1 similarity    the same if the text         0
query                  per row                      changed, else 0
=====================  ===========================  ===========================  ===================================

TTL ``keep`` (a ``forget``): the row's stored vector is freed and it stops being a candidate; an output already
derived from it stays in the view as it was, so a standing top k can then show more than k rows.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from deltamem.changes import Delta, Row, RowKey, decode_key, encode_key, key_order
from deltamem.errors import ConfigError, SchemaError, did_you_mean
from deltamem.llm.base import EmbeddingBackend
from deltamem.operators.base import MultiInputOperator, Operator, OperatorContext, retract
from deltamem.store.base import StateEntry, Store

SCORE = "score"  # the similarity column a search adds
QUERY_KEY = "query_key"  # the query's primary key, in ``sem_search_many`` rows
MAX_K = 10_000
DEFAULT_RADIUS = 0.7  # radians: a new query joins the nearest cluster whose leader is at most this far
ANGLE_SLACK = 2e-3  # radians added to every bound: arccos amplifies float32 rounding near 0 and pi to ~5e-4
SCORE_SLACK = 1e-6  # a computed similarity may exceed the true one by float32 rounding
_TOP = RowKey(json.dumps("top"))
_STATS = RowKey(json.dumps("stats"))


# --- vectors and scores ----------------------------------------------------------------------------------------------


def text_of(row: Row | None, column: str) -> str | None:
    """The text a search embeds for a row: its ``column`` as text, or None when the row or the value is missing."""
    value = None if row is None else row.get(column)
    return None if value is None else str(value)


def vector_fingerprint(model_id: str, text: str) -> str:
    """What a stored vector depends on: the embedder's model and the text."""
    return hashlib.sha256(f"{model_id}\n{text}".encode()).hexdigest()[:16]


def encode_vector(vector: np.ndarray) -> str:
    """A float32 vector as base64 text (a quarter of the JSON list's size, and exact)."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


def similarities(rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Cosine similarities of unit vectors, shape (len(rows), len(queries)), as float32.

    NOTE: every score is computed here, in float64 and then rounded to float32, so that the same pair gets the same
    score whichever batch it was computed in (a float32 matrix product's result depends on the batch shape through
    summation order; the float64 one differs by ~1e-16, which float32 rounding absorbs). That is what lets an
    incrementally maintained ranking equal a recompute, ties included.
    """
    rows64 = np.asarray(rows, dtype=np.float64).reshape(-1, queries.shape[-1])
    return (rows64 @ np.asarray(queries, dtype=np.float64).reshape(-1, rows64.shape[1]).T).astype(np.float32)


def rank(key: RowKey, score: float) -> tuple:
    """Sort key of a search hit: best score first, then key order."""
    return (-score, key_order(key))


def _embedder(ctx: OperatorContext, kind: str) -> EmbeddingBackend:
    if ctx.embedder is None:
        raise ConfigError(f"{kind} needs an embedder; open the database with embedder='minilm' (or 'test')")
    return ctx.embedder.get()


def check_k(k: Any, kind: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise SchemaError(f"{kind}: k={k!r} is out of range; use a number of rows from 1 to {MAX_K}")


def _check_column(name: Any, kind: str, what: str = "column") -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise SchemaError(f"{kind}: {what} {name!r} is not a column name")


def _check_has(columns: Sequence[str], name: str, *, kind: str, where: str) -> None:
    if name not in columns:
        raise SchemaError(f"{kind} reads column {name!r}, which {where} does not have." + did_you_mean(name, columns))


# --- sem_index --------------------------------------------------------------------------------------------------------


class SemIndex(Operator):
    """Pass rows through unchanged and keep the embedding of ``column`` for each, for ``View.search``.

    State, under ``op_id``: per key whose current row reached this operator with a non-NULL ``column``,
    ``StateEntry(key, vector_fingerprint(model, text), {}, {"model": model_id, "vector": base64 float32})``; no entry
    for other keys. The input row itself is not stored: the view holds it.
    """

    kind: ClassVar[str] = "sem_index"

    def __init__(self, op_id: str, column: str):
        _check_column(column, self.kind)
        self.op_id = op_id
        self.column = column

    def output_columns(self, input_columns: Sequence[str]) -> tuple[str, ...]:
        return tuple(input_columns)

    def check_columns(self, input_columns: Sequence[str], *, where: str) -> None:
        _check_has(input_columns, self.column, kind=self.kind, where=where)

    def apply(self, deltas: Sequence[Delta], ctx: OperatorContext) -> list[Delta]:
        stored = ctx.get_state(self.op_id, [d.key for d in deltas])
        out: list[Delta] = []
        indexed: list[tuple[RowKey, str, StateEntry | None]] = []
        for delta in deltas:
            old = stored.get(delta.key)
            if delta.forget or delta.after is None:
                retracted = retract(self.op_id, delta, old, delta.before, ctx)
                out += [retracted] if retracted else []
                continue
            out.append(Delta(delta.key, delta.before, delta.after))
            text = text_of(delta.after, self.column)
            if text is not None:
                indexed.append((delta.key, text, old))
            elif old is not None:
                ctx.delete_state(self.op_id, delta.key)
        if indexed:
            embedder = _embedder(ctx, self.kind)
            todo = []
            for key, text, old in indexed:
                fingerprint = vector_fingerprint(embedder.model_id, text)
                if old is None or old.fingerprint != fingerprint:  # an unchanged text costs no embedding
                    todo.append((key, text, fingerprint))
            vectors = embedder.embed([text for _k, text, _f in todo]) if todo else []
            for (key, _text, fingerprint), vector in zip(todo, vectors, strict=True):
                value = {"model": embedder.model_id, "vector": encode_vector(vector)}
                ctx.put_state(self.op_id, StateEntry(key, fingerprint, {}, value))
        return [d for d in out if d.forget or d.before != d.after]

    def to_plan(self) -> dict[str, Any]:
        return {"op": self.kind, "instruction": self.column}


# --- sem_search -------------------------------------------------------------------------------------------------------


class SemSearch(Operator):
    """A standing top-k vector search: the ``k`` input rows whose ``column`` is most similar to ``query``, with
    column ``score``.

    State: under ``op_id``, per candidate row (non-NULL ``column``), ``StateEntry(key, vector_fingerprint(model,
    text), row, {"score": s})``: only the score is kept, since the query never changes. Under ``op_id/top``, one
    entry: ``{"model", "query_vec": base64, "members": [[key, score], ...]}``, the current top k, best first.
    Invariant: ``members`` is the top ``k`` of the per-row entries by ``rank``; a member that a TTL ``keep`` freed
    leaves ``members`` (its output stays, see the module docstring).

    NOTE: after a change of embedder, only rows whose text changes are scored again; build a new view to rescore all.
    """

    kind: ClassVar[str] = "sem_search"

    def __init__(self, op_id: str, query: str, *, k: int, column: str):
        if not isinstance(query, str) or not query.strip():
            raise SchemaError("sem_search needs a non-empty query, e.g. sem_search('vector databases', k=5, ...)")
        check_k(k, self.kind)
        _check_column(column, self.kind)
        self.op_id = op_id
        self.top_op = f"{op_id}/top"
        self.query = query
        self.k = k
        self.column = column

    def output_columns(self, input_columns: Sequence[str]) -> tuple[str, ...]:
        return (*[c for c in input_columns if c != SCORE], SCORE)

    def check_columns(self, input_columns: Sequence[str], *, where: str) -> None:
        _check_has(input_columns, self.column, kind=self.kind, where=where)

    def apply(self, deltas: Sequence[Delta], ctx: OperatorContext) -> list[Delta]:
        keys = [d.key for d in deltas]
        assert len(set(keys)) == len(keys), "sem_search: a key changed twice in one version"
        top = ctx.get_state(self.top_op, [_TOP]).get(_TOP)
        members: dict[RowKey, float] = {} if top is None else {RowKey(k): s for k, s in top.value["members"]}
        stored = ctx.get_state(self.op_id, set(keys) | set(members))
        scores: dict[RowKey, float] = {}  # this version's candidates among the changed keys
        rows: dict[RowKey, Row] = {}  # rows after this version (the rest are in ``stored``)
        gone: set[RowKey] = set()  # changed keys that are no longer candidates
        forgotten: set[RowKey] = set()
        unscored: list[tuple[Delta, StateEntry | None, str]] = []
        for delta in deltas:
            old = stored.get(delta.key)
            text = None if delta.forget else text_of(delta.after, self.column)
            if text is None:
                if old is not None:
                    ctx.delete_state(self.op_id, delta.key)
                gone.add(delta.key)
                if delta.forget:
                    forgotten.add(delta.key)
                continue
            rows[delta.key] = delta.after
            unscored.append((delta, old, text))
        query_vec = self._score(unscored, top, scores, ctx)

        # Rows outside the top k rank below its k-th. Unless a member left or fell, they stay out: rank only the
        # members and the changed rows. Otherwise rescan every stored score (no embedding, no similarity).
        fell = any(key in gone or rank(key, scores[key]) > rank(key, members[key])
                   for key in members if key in gone or key in scores)
        candidates = {key: s for key, s in members.items() if key not in gone and key not in scores}
        if fell and len(members) >= self.k:
            for (op, key), entry in ctx.store.get_all_state(ctx.view).items():
                if op == self.op_id and key not in gone and key not in scores:
                    candidates[key] = entry.value["score"]
                    stored.setdefault(key, entry)
        candidates.update(scores)
        new_members = dict(sorted(candidates.items(), key=lambda pair: rank(*pair))[: self.k])

        out = [Delta(key, None, None, forget=True) for key in sorted(forgotten, key=key_order)]
        for key in sorted(set(members) | set(new_members), key=key_order):
            if key in forgotten:
                continue
            before = None if key not in members else {**self._strip(stored[key].input_row), SCORE: members[key]}
            after = None if key not in new_members else {
                **self._strip(rows[key] if key in rows else stored[key].input_row), SCORE: new_members[key]}
            if before != after:
                out.append(Delta(key, before, after))
        if top is None or list(new_members.items()) != list(members.items()) or query_vec is not None:
            vec = query_vec if query_vec is not None else decode_vector(top.value["query_vec"])
            model = top.value["model"] if query_vec is None else _embedder(ctx, self.kind).model_id
            value = {"model": model, "query_vec": encode_vector(vec),
                     "members": [[k, s] for k, s in new_members.items()]}
            ctx.put_state(self.top_op, StateEntry(_TOP, vector_fingerprint(model, self.query), {}, value))
        return out

    def _score(self, unscored: list[tuple[Delta, StateEntry | None, str]], top: StateEntry | None,
               scores: dict[RowKey, float], ctx: OperatorContext) -> np.ndarray | None:
        """Fill ``scores`` for the changed candidate rows: the stored score when the text is unchanged, else one
        embedding and one similarity each. Return the query vector when it was embedded now (None otherwise)."""
        if not unscored and top is not None:
            return None
        embedder = _embedder(ctx, self.kind)
        todo: list[tuple[Delta, str, str]] = []
        for delta, old, text in unscored:
            fingerprint = vector_fingerprint(embedder.model_id, text)
            if old is not None and old.fingerprint == fingerprint:
                scores[delta.key] = old.value["score"]
                if old.input_row != delta.after:
                    ctx.put_state(self.op_id, StateEntry(delta.key, fingerprint, delta.after, old.value))
            else:
                todo.append((delta, text, fingerprint))
        query_fp = vector_fingerprint(embedder.model_id, self.query)
        fresh_query = top is None or top.fingerprint != query_fp
        if not todo and not fresh_query:
            return None
        # One embedding call for the rows and, the first time only, the query.
        vectors = embedder.embed(([self.query] if fresh_query else []) + [text for _d, text, _f in todo])
        query_vec = vectors[0] if fresh_query else decode_vector(top.value["query_vec"])
        row_vecs = vectors[1:] if fresh_query else vectors
        if todo:
            sims = similarities(row_vecs, query_vec[None, :])[:, 0]
            for (delta, _text, fingerprint), sim in zip(todo, sims, strict=True):
                scores[delta.key] = float(sim)
                ctx.put_state(self.op_id, StateEntry(delta.key, fingerprint, delta.after, {"score": float(sim)}))
        return query_vec if fresh_query else None

    @staticmethod
    def _strip(row: Row) -> Row:
        return {c: v for c, v in row.items() if c != SCORE}

    def to_plan(self) -> dict[str, Any]:
        return {"op": self.kind, "instruction": self.query, "k": self.k, "column": self.column}


# --- sem_search_many --------------------------------------------------------------------------------------------------


@dataclass
class _Query:
    """One standing query: its vector, its cluster and its current top k ``[(row key, score)]``, best first."""

    fingerprint: str
    vector: np.ndarray
    cluster: int
    top: list[tuple[RowKey, float]]
    dirty: bool = False  # to be written back

    def threshold(self, k: int) -> float:
        """The score a new row must reach to enter the top k (ties then go by key order)."""
        return self.top[-1][1] if len(self.top) >= k else -math.inf


@dataclass
class _Cluster:
    """Queries grouped around a fixed leader vector; every member is within ``radius`` radians of ``centroid``."""

    centroid: np.ndarray
    radius: float
    members: list[RowKey]
    dirty: bool = False


@dataclass(frozen=True)
class SearchStats:
    """What a ``sem_search_many`` view computed so far: similarities, and what comparing every new row with every
    query (and rescanning the same queries) would have computed."""

    num_queries: int
    num_clusters: int
    num_similarities: int
    num_exhaustive: int

    @property
    def num_saved(self) -> int:
        return self.num_exhaustive - self.num_similarities


@dataclass
class _Version:
    """One version's work for ``SemSearchMany``: what changed, read once from the store."""

    queries: dict[RowKey, _Query]
    clusters: dict[int, _Cluster]
    stats: dict[str, Any]
    old_tops: dict[RowKey, list[tuple[RowKey, float]]]  # the tops before this version, of the queries present then
    before_rows: dict[RowKey, Row] = field(default_factory=dict)  # changed data rows, before this version
    after_rows: dict[RowKey, Row] = field(default_factory=dict)  # changed data rows that are candidates now
    new_vectors: dict[RowKey, np.ndarray] = field(default_factory=dict)  # data rows embedded at this version
    dropped: set[RowKey] = field(default_factory=set)  # data rows whose old vector is gone (deleted or re-embedded)
    forgotten_rows: set[RowKey] = field(default_factory=set)
    forgotten_queries: set[RowKey] = field(default_factory=set)
    new_queries: set[RowKey] = field(default_factory=set)
    rescan: set[RowKey] = field(default_factory=set)
    loaded_rows: dict[RowKey, Row] = field(default_factory=dict)  # unchanged data rows read for outputs or rescans
    stats_dirty: bool = False


def _pick(key: RowKey, first: dict[RowKey, Row], then: dict[RowKey, Row]) -> Row:
    return first[key] if key in first else then[key]


def pair_key(query: RowKey, row: RowKey) -> RowKey:
    """The output key of (query, row): a string, so that ``key_order`` sorts pairs."""
    return encode_key(json.dumps([decode_key(query), decode_key(row)]))


class SemSearchMany(MultiInputOperator):
    """One standing top-k search per row of ``queries`` over the rows of ``data``: for each query, the ``k`` data
    rows whose ``column`` is most similar to its ``query_column``. Output rows are keyed by ``pair_key(query, row)``
    and hold ``query_key``, the data row's columns and ``score``.

    Queries are grouped by leader clustering: a new query joins the cluster whose leader is nearest if it lies within
    ``radius`` radians, else it leads a new one. A new data row is compared with every leader first; a cluster of
    angular radius r whose leader is at angle t from the row holds no query with similarity above cos(max(0, t - r))
    (triangle inequality on the sphere), so when that bound is below every member's k-th score the row skips the
    whole cluster. The bound is exact (with slack for float rounding): pruning never changes a result.

    State (op ids under ``op_id``): ``/queries``: per query with text, ``{"vector", "cluster", "top": [[row key,
    score], ...]}``; ``/data``: per data row with text, ``StateEntry(key, fingerprint, row, {"vector"})``;
    ``/clusters``: per cluster id, ``{"centroid", "radius", "members"}``; ``/stats``: ``{"clusters": [ids],
    "next_cluster", "num_similarities", "num_exhaustive"}``. Invariant: every query entry is a member of exactly one
    cluster, and its ``top`` is the top ``k`` of the data entries by ``rank``.
    """

    kind: ClassVar[str] = "sem_search_many"
    roles: ClassVar[tuple[str, ...]] = ("data", "queries")

    def __init__(self, op_id: str, *, k: int, column: str, query_column: str = "query",
                 radius: float = DEFAULT_RADIUS):
        check_k(k, self.kind)
        _check_column(column, self.kind)
        _check_column(query_column, self.kind, "query_column")
        if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not 0 <= radius <= math.pi:
            raise SchemaError(f"{self.kind}: radius={radius!r} is out of range; use an angle from 0 to pi radians")
        self.op_id = op_id
        self.k = k
        self.column = column
        self.query_column = query_column
        self.radius = float(radius)
        self.query_op, self.data_op = f"{op_id}/queries", f"{op_id}/data"
        self.cluster_op, self.stats_op = f"{op_id}/clusters", f"{op_id}/stats"

    def output_columns_by_role(self, columns: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
        return (QUERY_KEY, *[c for c in columns["data"] if c not in (QUERY_KEY, SCORE)], SCORE)

    def check_columns_by_role(self, columns: Mapping[str, Sequence[str]], *, where: str) -> None:
        _check_has(columns["data"], self.column, kind=self.kind, where=f"the data of {where}")
        _check_has(columns["queries"], self.query_column, kind=self.kind, where=f"the queries of {where}")

    def get_stats(self, store: Store, view: str) -> SearchStats:
        """The similarities this view computed so far, beside what comparing with every query would have."""
        entry = store.get_state(view, self.stats_op, [_STATS]).get(_STATS)
        if entry is None:
            return SearchStats(0, 0, 0, 0)
        clusters = store.get_state(view, self.cluster_op, [encode_key(c) for c in entry.value["clusters"]])
        num_queries = sum(len(c.value["members"]) for c in clusters.values())
        return SearchStats(num_queries, len(clusters), entry.value["num_similarities"], entry.value["num_exhaustive"])

    # --- maintenance --------------------------------------------------------------------------------------------
    def apply_inputs(self, inputs: dict[str, list[Delta]], ctx: OperatorContext) -> list[Delta]:
        query_deltas, data_deltas = inputs.get("queries", []), inputs.get("data", [])
        for deltas in (query_deltas, data_deltas):
            assert len({d.key for d in deltas}) == len(deltas), "sem_search_many: a key changed twice in one version"
        if not query_deltas and not data_deltas:
            return []
        v = self._load(query_deltas, ctx)
        embedder = _embedder(ctx, self.kind)
        texts: dict[tuple[str, RowKey], str] = {}  # what to embed at this version, by (role, key)
        self._take_queries(query_deltas, v, embedder, texts, ctx)
        self._take_data(data_deltas, v, embedder, texts, ctx)
        if texts:
            vectors = embedder.embed(list(texts.values()))  # one embedding call for the whole version
            for ((role, key), text), vector in zip(texts.items(), vectors, strict=True):
                fingerprint = vector_fingerprint(embedder.model_id, text)
                if role == "data":
                    v.new_vectors[key] = vector
                    ctx.put_state(self.data_op, StateEntry(key, fingerprint, v.after_rows[key],
                                                           {"vector": encode_vector(vector)}))
                else:
                    v.queries[key] = _Query(fingerprint, vector, -1, [], dirty=True)
        self._drop_rows(v)
        self._offer_new_rows(v)
        for key in sorted(v.new_queries, key=key_order):
            self._assign(key, v)
        self._rescan(v, ctx)
        out = self._outputs(v, ctx)
        self._save(v, ctx)
        return out

    def _load(self, query_deltas: list[Delta], ctx: OperatorContext) -> _Version:
        """Read the clusters, every query's entry and the stats (never the data rows: there can be many)."""
        stats_entry = ctx.get_state(self.stats_op, [_STATS]).get(_STATS)
        stats = {"clusters": [], "next_cluster": 0, "num_similarities": 0, "num_exhaustive": 0} \
            if stats_entry is None else dict(stats_entry.value)
        clusters = {}
        cluster_entries = ctx.get_state(self.cluster_op, [encode_key(c) for c in stats["clusters"]])
        for cid in stats["clusters"]:
            value = cluster_entries[encode_key(cid)].value
            clusters[cid] = _Cluster(decode_vector(value["centroid"]), value["radius"],
                                     [RowKey(q) for q in value["members"]])
        member_of = {q: cid for cid, c in clusters.items() for q in c.members}
        entries = ctx.get_state(self.query_op, set(member_of) | {d.key for d in query_deltas})
        queries = {}
        for key, entry in entries.items():
            assert member_of.get(key) == entry.value["cluster"], "sem_search_many: a query is outside its cluster"
            queries[key] = _Query(entry.fingerprint, decode_vector(entry.value["vector"]), entry.value["cluster"],
                                  [(RowKey(r), s) for r, s in entry.value["top"]])
        return _Version(queries, clusters, stats, {q: list(query.top) for q, query in queries.items()})

    def _take_queries(self, deltas: list[Delta], v: _Version, embedder, texts: dict, ctx: OperatorContext) -> None:
        """Fold query changes in: a query whose text changed leaves its cluster and is embedded again."""
        for delta in deltas:
            old = v.queries.get(delta.key)
            text = None if delta.forget else text_of(delta.after, self.query_column)
            if delta.forget:
                v.forgotten_queries.add(delta.key)
            fingerprint = None if text is None else vector_fingerprint(embedder.model_id, text)
            if old is not None and old.fingerprint == fingerprint:
                continue  # the output holds the query's key only: nothing to do
            if old is not None:
                self._leave_cluster(delta.key, old.cluster, v)
                del v.queries[delta.key]
                if text is None:
                    ctx.delete_state(self.query_op, delta.key)
            if text is not None:
                texts[("queries", delta.key)] = text
                v.new_queries.add(delta.key)

    def _take_data(self, deltas: list[Delta], v: _Version, embedder, texts: dict, ctx: OperatorContext) -> None:
        """Fold data changes in: note each row's before and after image, and which rows need a new vector."""
        stored = ctx.get_state(self.data_op, [d.key for d in deltas])
        for delta in deltas:
            old = stored.get(delta.key)
            if old is not None:
                v.before_rows[delta.key] = old.input_row
            text = None if delta.forget else text_of(delta.after, self.column)
            if delta.forget:
                v.forgotten_rows.add(delta.key)
            if text is None:
                if old is not None:
                    ctx.delete_state(self.data_op, delta.key)
                    v.dropped.add(delta.key)
                continue
            v.after_rows[delta.key] = delta.after
            fingerprint = vector_fingerprint(embedder.model_id, text)
            if old is not None and old.fingerprint == fingerprint:
                if old.input_row != delta.after:  # same vector, same scores: only the output rows change
                    ctx.put_state(self.data_op, StateEntry(delta.key, fingerprint, delta.after, old.value))
                continue
            if old is not None:
                v.dropped.add(delta.key)
            texts[("data", delta.key)] = text

    def _drop_rows(self, v: _Version) -> None:
        """Take rows whose vector is gone out of every top; a query that was full and lost one is rescanned."""
        if not v.dropped:
            return
        for key, query in v.queries.items():
            if key in v.new_queries:
                continue
            kept = [(r, s) for r, s in query.top if r not in v.dropped]
            if len(kept) < len(query.top):
                if len(query.top) >= self.k:
                    v.rescan.add(key)  # rows outside its top may now belong in it
                query.top, query.dirty = kept, True

    def _offer_new_rows(self, v: _Version) -> None:
        """Offer this version's new vectors to the existing queries, cluster by cluster, skipping every cluster the
        bound rules out."""
        if not v.new_vectors or not v.clusters:
            return
        keys = sorted(v.new_vectors, key=key_order)
        rows = np.stack([v.new_vectors[r] for r in keys])
        cids = sorted(v.clusters)
        to_leaders = similarities(rows, np.stack([v.clusters[c].centroid for c in cids]))
        angles = np.arccos(np.clip(to_leaders.astype(np.float64), -1.0, 1.0))
        num_similarities, num_exhaustive = rows.shape[0] * len(cids), 0
        for j, cid in enumerate(cids):
            cluster = v.clusters[cid]
            members = [q for q in cluster.members if q not in v.rescan and q not in v.new_queries]
            if not members:
                continue
            num_exhaustive += rows.shape[0] * len(members)
            thresholds = np.array([v.queries[q].threshold(self.k) for q in members])
            bound = np.cos(np.maximum(0.0, angles[:, j] - cluster.radius - ANGLE_SLACK))
            reach = np.nonzero(bound + SCORE_SLACK >= thresholds.min())[0]
            if not len(reach):
                continue
            sims = similarities(rows[reach], np.stack([v.queries[q].vector for q in members]))
            num_similarities += sims.size
            for m, q in enumerate(members):
                query = v.queries[q]
                entering = [(keys[i], float(s)) for i, s in zip(reach, sims[:, m], strict=True) if s >= thresholds[m]]
                if entering:
                    top = sorted(query.top + entering, key=lambda pair: rank(*pair))[: self.k]
                    if top != query.top:
                        query.top, query.dirty = top, True
        self._count(v, num_similarities, num_exhaustive)

    def _assign(self, key: RowKey, v: _Version) -> None:
        """Put a new query in the nearest cluster within ``radius``, or make it the leader of a new one; it will be
        rescanned in full, like every new query."""
        query = v.queries[key]
        best, best_angle = None, math.inf
        if v.clusters:
            cids = sorted(v.clusters)
            sims = similarities(query.vector[None, :], np.stack([v.clusters[c].centroid for c in cids]))[0]
            self._count(v, len(cids), 0)
            i = int(np.argmax(sims))
            best, best_angle = cids[i], float(np.arccos(np.clip(float(sims[i]), -1.0, 1.0)))
        # NOTE: past 2*sqrt(queries) clusters a new query joins the nearest one anyway, so that a new row is never
        # compared with more leaders than that, whatever the spread of the queries.
        cap = max(16, 2 * math.isqrt(max(len(v.queries), 1)))
        if best is not None and (best_angle <= self.radius or len(v.clusters) >= cap):
            cluster = v.clusters[best]
            cluster.members.append(key)
            cluster.radius = max(cluster.radius, best_angle)
            cluster.dirty = True
        else:
            best = v.stats["next_cluster"]
            v.stats["next_cluster"] += 1
            v.clusters[best] = _Cluster(query.vector, 0.0, [key], dirty=True)
        query.cluster = best
        v.rescan.add(key)

    def _leave_cluster(self, key: RowKey, cid: int, v: _Version) -> None:
        cluster = v.clusters[cid]
        cluster.members.remove(key)
        cluster.dirty = True  # its radius stays: a bound that is too wide is still a bound

    def _rescan(self, v: _Version, ctx: OperatorContext) -> None:
        """Rank every data row for each query in ``v.rescan``: new queries and those that lost a top-k member."""
        if not v.rescan:
            return
        vectors: dict[RowKey, np.ndarray] = {}
        for (op, key), entry in ctx.store.get_all_state(ctx.view).items():  # as of the last version
            if op == self.data_op and key not in v.dropped:
                vectors[key] = decode_vector(entry.value["vector"])
                if key not in v.after_rows:
                    v.loaded_rows[key] = entry.input_row
        vectors.update(v.new_vectors)  # this version's vectors: not in the store yet
        queries = sorted(v.rescan, key=key_order)
        if not vectors:
            for q in queries:
                v.queries[q].top, v.queries[q].dirty = [], True
            return
        keys = list(vectors)
        sims = similarities(np.stack([vectors[r] for r in keys]), np.stack([v.queries[q].vector for q in queries]))
        self._count(v, sims.size, sims.size)
        for j, q in enumerate(queries):
            column = sims[:, j]
            # Only rows that score at least the k-th best can be in the top k: sort those, not all.
            cut = np.partition(column, len(column) - self.k)[len(column) - self.k] if len(column) > self.k else -np.inf
            top = sorted(((keys[i], float(column[i])) for i in np.nonzero(column >= cut)[0]),
                         key=lambda pair: rank(*pair))[: self.k]
            v.queries[q].top, v.queries[q].dirty = top, True

    def _outputs(self, v: _Version, ctx: OperatorContext) -> list[Delta]:
        """The output deltas: per query whose top or whose rows changed, its old pairs against its new ones."""
        holders: dict[RowKey, set[RowKey]] = defaultdict(set)
        for q, top in v.old_tops.items():
            for r, _s in top:
                holders[r].add(q)
        touched = {q for q, query in v.queries.items() if query.dirty} | (set(v.old_tops) - set(v.queries))
        for r in v.after_rows:
            touched |= holders[r]
        touched |= v.forgotten_queries & set(v.old_tops)
        needed = {r for q in touched for r, _s in v.old_tops.get(q, []) + (v.queries[q].top if q in v.queries else [])}
        missing = [r for r in needed if r not in v.before_rows and r not in v.after_rows and r not in v.loaded_rows]
        for key, entry in ctx.get_state(self.data_op, missing).items():
            v.loaded_rows[key] = entry.input_row  # unchanged rows: the same before and after
        out: list[Delta] = []
        for q in sorted(touched, key=key_order):
            old_top, new_top = dict(v.old_tops.get(q, [])), dict(v.queries[q].top if q in v.queries else [])
            for r in sorted(set(old_top) | set(new_top), key=key_order):
                key = pair_key(q, r)
                if r in old_top and (q in v.forgotten_queries or r in v.forgotten_rows):
                    out.append(Delta(key, None, None, forget=True))  # TTL keep: the output stays as it is
                    continue
                before = None if r not in old_top else self._row(q, _pick(r, v.before_rows, v.loaded_rows),
                                                                   old_top[r])
                after = None if r not in new_top else self._row(q, _pick(r, v.after_rows, v.loaded_rows), new_top[r])
                if before != after:
                    out.append(Delta(key, before, after))
        return out

    @staticmethod
    def _row(query: RowKey, row: Row, score: float) -> Row:
        return {QUERY_KEY: decode_key(query), **{c: x for c, x in row.items() if c not in (QUERY_KEY, SCORE)},
                SCORE: score}

    def _count(self, v: _Version, num_similarities: int, num_exhaustive: int) -> None:
        v.stats["num_similarities"] += num_similarities
        v.stats["num_exhaustive"] += num_exhaustive
        v.stats_dirty = True

    def _save(self, v: _Version, ctx: OperatorContext) -> None:
        for q, query in v.queries.items():
            if query.dirty:
                value = {"vector": encode_vector(query.vector), "cluster": query.cluster,
                         "top": [[r, s] for r, s in query.top]}
                ctx.put_state(self.query_op, StateEntry(q, query.fingerprint, {}, value))
        for cid, cluster in list(v.clusters.items()):
            if not cluster.dirty:
                continue
            if not cluster.members:
                del v.clusters[cid]
                ctx.delete_state(self.cluster_op, encode_key(cid))
                continue
            value = {"centroid": encode_vector(cluster.centroid), "radius": cluster.radius,
                     "members": list(cluster.members)}
            ctx.put_state(self.cluster_op, StateEntry(encode_key(cid), "", {}, value))
        stats = {**v.stats, "clusters": sorted(v.clusters)}
        if v.stats_dirty or stats["clusters"] != v.stats["clusters"]:
            ctx.put_state(self.stats_op, StateEntry(_STATS, "", {}, stats))

    def to_plan(self) -> dict[str, Any]:
        return {"op": self.kind, "k": self.k, "column": self.column, "query_column": self.query_column,
                "radius": self.radius}

