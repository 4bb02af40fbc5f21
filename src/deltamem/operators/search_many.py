"""``sem_search_many``: many standing top-k vector searches over one relation, clustered, as in VectraFlow.

    db.view("alerts", docs.sem_search_many(db.table("subs", key="sid"), k=3, column="text", query_column="query"))

Invariant: every query's output is the exact top k of the current rows by cosine similarity (ties by key order),
equal to a recompute from scratch. Queries are grouped by leader clustering (a new query joins the nearest cluster
whose leader is within ``radius`` radians, else leads a new one); a new row is compared with every leader first and a
cluster is skipped when the cosine triangle bound ``cos(max(0, angle(row, leader) - radius))`` is below every
member's k-th score, so it costs one similarity per cluster plus one per query of the clusters it could enter.

=====================  ===========================  ===========================  ===================================
change                 insert                       update                       delete / TTL expiry
=====================  ===========================  ===========================  ===================================
a data row             1 embedding; 1 similarity    the same if the column       0; each query that lost a top-k
                       per cluster, then one per    changed, else 0              member is rescanned: 1 similarity
                       query of each cluster the                                 per row (no embedding)
                       row could enter
a query                1 embedding, 1 similarity    the same if the text         0
                       per row                      changed, else 0
=====================  ===========================  ===========================  ===================================
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from deltamem.changes import Delta, Row, RowKey, decode_key, encode_key, key_order
from deltamem.errors import SchemaError
from deltamem.operators.base import MultiInputOperator, OperatorContext
from deltamem.operators.vectors import (
    SCORE,
    check_column_name,
    check_has_column,
    check_k,
    embedder_of,
    rank,
    similarities,
    text_of,
    vector_fingerprint,
)
from deltamem.store.base import StateEntry, Store
from deltamem.store.state_vectors import Vector

QUERY_KEY = "query_key"  # the query's primary key, in ``sem_search_many`` rows
DEFAULT_RADIUS = 0.7  # radians: a new query joins the nearest cluster whose leader is at most this far
ANGLE_SLACK = 2e-3  # radians added to every bound: arccos amplifies float32 rounding near 0 and pi to ~5e-4
SCORE_SLACK = 1e-6  # a computed similarity may exceed the true one by float32 rounding
_STATS = RowKey(json.dumps("stats"))


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
        check_column_name(column, self.kind)
        check_column_name(query_column, self.kind, "query_column")
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
        check_has_column(columns["data"], self.column, kind=self.kind, where=f"the data of {where}")
        check_has_column(columns["queries"], self.query_column, kind=self.kind, where=f"the queries of {where}")

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
        embedder = embedder_of(ctx, self.kind)
        texts: dict[tuple[str, RowKey], str] = {}  # what to embed at this version, by (role, key)
        self._take_queries(query_deltas, v, embedder, texts, ctx)
        self._take_data(data_deltas, v, embedder, texts, ctx)
        if texts:
            # One embedding call for the whole version; a failure fails the version, which maintenance retries.
            reasons = ["refresh" if ctx.building else "update" if key in (v.dropped if role == "data" else v.old_tops)
                       else "insert" for role, key in texts]
            vectors = ctx.embed_or_raise(self.op_id, list(texts.values()), reasons)
            for ((role, key), text), vector in zip(texts.items(), vectors, strict=True):
                fingerprint = vector_fingerprint(embedder.model_id, text)
                if role == "data":
                    v.new_vectors[key] = vector
                    ctx.put_state(self.data_op, StateEntry(key, fingerprint, v.after_rows[key],
                                                           {"vector": Vector(vector)}))
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
            clusters[cid] = _Cluster(np.asarray(value["centroid"]), value["radius"],
                                     [RowKey(q) for q in value["members"]])
        member_of = {q: cid for cid, c in clusters.items() for q in c.members}
        entries = ctx.get_state(self.query_op, set(member_of) | {d.key for d in query_deltas})
        queries = {}
        for key, entry in entries.items():
            assert member_of.get(key) == entry.value["cluster"], "sem_search_many: a query is outside its cluster"
            queries[key] = _Query(entry.fingerprint, np.asarray(entry.value["vector"]), entry.value["cluster"],
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
                vectors[key] = np.asarray(entry.value["vector"])
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
                value = {"vector": Vector(query.vector), "cluster": query.cluster,
                         "top": [[r, s] for r, s in query.top]}
                ctx.put_state(self.query_op, StateEntry(q, query.fingerprint, {}, value))
        for cid, cluster in list(v.clusters.items()):
            if not cluster.dirty:
                continue
            if not cluster.members:
                del v.clusters[cid]
                ctx.delete_state(self.cluster_op, encode_key(cid))
                continue
            value = {"centroid": Vector(cluster.centroid), "radius": cluster.radius,
                     "members": list(cluster.members)}
            ctx.put_state(self.cluster_op, StateEntry(encode_key(cid), "", {}, value))
        stats = {**v.stats, "clusters": sorted(v.clusters)}
        if v.stats_dirty or stats["clusters"] != v.stats["clusters"]:
            ctx.put_state(self.stats_op, StateEntry(_STATS, "", {}, stats))
