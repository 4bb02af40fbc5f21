"""An in-process approximate nearest-neighbour index over unit vectors, keyed by row key.

    index = VectorIndex.build(384, keys, vectors); index.search(query_vector, k=10)  # -> [(key, score), ...]

Invariant: the index holds exactly one vector per key it reports in ``keys()``, the one last given to ``add`` for it;
``search`` returns keys with their cosine similarity (1 is best), best first, ties by key order.

The index is a cache, never the source of truth: deltamem keeps every embedding in the store (``sem_index`` state)
and rebuilds or patches this index from there (``SearchIndexes``, below, one per database), so losing it costs
time, not data. It embeds nothing but the query of a ``search`` (one call, through the runner).

Why usearch: it is an HNSW graph (logarithmic search, recall tunable by ``expansion_search``), it runs in this process
with no server, it adds vectors one at a time or in multi-threaded bulk, and it supports removal, which deletes and
TTL expiries need. Below ``exact_below`` vectors a brute-force scan is cheaper than the graph and exact, so ``search``
asks usearch for an exact search there (same code path, no second copy of the vectors).

Costs: ``add`` and ``remove`` are O(log n) each (a removed vector leaves a tombstone in the graph until the index is
compacted: rebuilt from its live vectors once tombstones outnumber them); ``search`` is O(log n) above
``exact_below``, O(n) below it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from usearch.index import Index

from deltamem.changes import Row, RowKey, encode_key, key_order
from deltamem.errors import ConfigError, SchemaError
from deltamem.llm.base import EmbeddingBackend
from deltamem.llm.runner import CallRunner
from deltamem.operators.base import Operator
from deltamem.operators.search import SemIndex
from deltamem.operators.vectors import SCORE, check_k
from deltamem.store.base import StateEntry, Store

# Measured with ``deltamem.bench.index`` (384-d): recall@10 of 1.0 at 100k clustered vectors (0.9998 at 10k), ~1.1 ms
# a query. NOTE: on i.i.d. random directions (no structure, unlike embeddings) these give 0.41 at 10k; such data needs
# expansion_search=512 (0.94) or more.
CONNECTIVITY = 16  # HNSW M: graph edges per node
EXPANSION_ADD = 128  # candidate list while inserting (ef_construction)
EXPANSION_SEARCH = 64  # candidate list while searching (ef); raise it for recall, lower it for speed
EXACT_BELOW = 2048  # below this many vectors, search scans them all (exact, and as fast as the graph: measured)


class VectorIndex:
    """Cosine-similarity search over float32 vectors of one dimension, keyed by row key.

    ``_labels`` maps each live key to its usearch label (a uint64 that usearch needs in place of a string) and
    ``_keys`` maps back. Labels are never reused: a replaced vector gets a fresh label, so a search can never
    return a tombstone's label as a live key. ``_num_removed`` counts tombstones in the graph.
    """

    def __init__(self, dim: int, *, connectivity: int = CONNECTIVITY, expansion_add: int = EXPANSION_ADD,
                 expansion_search: int = EXPANSION_SEARCH, exact_below: int = EXACT_BELOW):
        if dim < 1:
            raise ValueError(f"VectorIndex needs a positive dimension, got {dim}")
        self.dim = dim
        self.exact_below = exact_below
        self._options = {"connectivity": connectivity, "expansion_add": expansion_add,
                         "expansion_search": expansion_search}
        self.reset()

    def reset(self) -> None:
        """Empty the index (the one place that defines its initial state)."""
        self._index = Index(ndim=self.dim, metric="cos", dtype="f32", **self._options)
        self._labels: dict[RowKey, int] = {}
        self._keys: dict[int, RowKey] = {}
        self._next_label = 0
        self._num_removed = 0

    @classmethod
    def build(cls, dim: int, keys: Sequence[RowKey], vectors: np.ndarray, **options: Any) -> VectorIndex:
        """An index holding ``vectors[i]`` for ``keys[i]``, added in one multi-threaded bulk insert."""
        index = cls(dim, **options)
        index.add(keys, vectors)
        return index

    # --- Public API -------------------------------------------------------------------------------------------------
    def add(self, keys: Sequence[RowKey], vectors: np.ndarray) -> None:
        """Insert or replace the vector of each key (``vectors`` has one row per key)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(keys), self.dim)
        if len(set(keys)) != len(keys):
            raise ValueError("VectorIndex.add: a key appears twice in one call")
        if not len(keys):
            return
        self.remove([key for key in keys if key in self._labels])
        labels = np.empty(len(keys), dtype=np.uint64)
        for i, key in enumerate(keys):
            labels[i] = self._labels[key] = self._new_label(key)
        self._index.add(labels, vectors)

    def remove(self, keys: Iterable[RowKey]) -> int:
        """Remove the vectors of ``keys`` (absent keys are ignored); return how many were removed."""
        labels = [self._labels.pop(key) for key in keys if key in self._labels]
        for label in labels:
            del self._keys[label]
        if labels:
            self._index.remove(np.asarray(labels, dtype=np.uint64))
            self._num_removed += len(labels)
            self._maybe_compact()
        return len(labels)

    def search(self, query: np.ndarray, k: int) -> list[tuple[RowKey, float]]:
        """The ``k`` keys most similar to ``query`` with their cosine similarity, best first (ties by key order).

        Approximate above ``exact_below`` vectors (HNSW), exact below it.
        """
        if k < 1 or not self._labels:
            return []
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(self.dim)
        exact = len(self._labels) < self.exact_below
        count = min(k + 1, len(self._labels))
        while True:
            matches = self._index.search(query, count, exact=exact)
            pairs = zip(matches.keys.tolist(), matches.distances.tolist(), strict=True)
            found = [(self._keys[label], float(np.float32(1.0 - distance)))  # float32, like the vectors
                     for label, distance in pairs if label in self._keys]
            # Ties at the k-th score are broken by key order, so fetch until the tie is whole (or all is fetched).
            if len(found) <= k or found[-1][1] != found[k - 1][1] or count >= len(self._labels):
                break
            count = min(2 * count, len(self._labels))
        return sorted(found, key=lambda pair: (-pair[1], key_order(pair[0])))[:k]

    def get(self, key: RowKey) -> np.ndarray | None:
        """The vector stored for ``key``, or None."""
        label = self._labels.get(key)
        return None if label is None else np.asarray(self._index.get(label), dtype=np.float32).reshape(self.dim)

    def keys(self) -> list[RowKey]:
        return list(self._labels)

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, key: object) -> bool:
        return key in self._labels

    # --- Internal helpers -----------------------------------------------------------------------------------------
    def _new_label(self, key: RowKey) -> int:
        label = self._next_label
        self._next_label += 1
        self._keys[label] = key
        return label

    def _maybe_compact(self) -> bool:
        """Rebuild the graph from its live vectors once tombstones outnumber them; return whether it did.

        NOTE: HNSW removal only marks a node; a graph that is mostly tombstones searches slowly and wastes memory.
        """
        if self._num_removed <= max(len(self._labels), 1024):
            return False
        keys = list(self._labels)
        labels = np.fromiter((self._labels[key] for key in keys), dtype=np.uint64, count=len(keys))
        vectors = np.asarray(self._index.get(labels), dtype=np.float32).reshape(len(keys), self.dim)
        self.reset()
        self.add(keys, vectors)
        return True


# --- the indexes of a database's sem_index views -------------------------------------------------------------------


@dataclass
class _CachedIndex:
    """One view's index as of ``version``: the vectors of the keys in ``rows`` that have one, and those rows."""

    version: int
    view_id: int | None  # the view's incarnation: a view dropped and created again under its name gets a new index
    op_id: str
    model: str
    index: VectorIndex
    rows: dict[RowKey, Row]  # the view's rows at ``version``
    fingerprints: dict[RowKey, str]  # of the vector indexed per key, so that an unchanged one is not re-added


class SearchIndexes:
    """The HNSW indexes behind ``View.search``, one per ``sem_index`` view: ``{view name: _CachedIndex}``.

    A ``Database`` owns one (no index is shared between databases). An index is a cache of the ``sem_index`` state:
    built from the store when missing (a new process), and brought forward when the view has advanced, by re-reading
    only the keys that changed since its version (the view's change rows and its source's changes, which also
    reveal a TTL ``keep`` that freed a vector while the row stayed). So a search never answers from a stale index.

    NOTE: the view's rows are read as of its applied version, the state as of the store's latest; a key that a newer
    version changed is read again at the next search, which then reflects that version.
    """

    def __init__(self, store: Store, **index_options: Any):
        self.store = store
        self.index_options = index_options
        self._indexes: dict[str, _CachedIndex] = {}
        self._lock = threading.Lock()

    def search(self, view: str, inputs: Mapping[str, Mapping[str, Any]], operators: Sequence[Operator],
               embedder: EmbeddingBackend, query: str, k: int, *, runner: CallRunner) -> list[Row]:
        """The ``k`` rows of ``view`` whose indexed column is most similar to ``query``, each with ``score``, best
        first (ties by key order); one embedding call (the query, through ``runner``: memo, retries, the ledger as
        operator ``search/embed``, reason ``search``). Approximate past ``exact_below`` vectors."""
        if not isinstance(query, str) or not query.strip():
            raise SchemaError(f'View "{view}": search needs a non-empty query')
        check_k(k, "search")
        self._index_op(view, operators)  # raises before the query is embedded
        query_vec = runner.embed_or_raise(embedder, [query], reasons=["search"], view=view, operator="search",
                                          version=None)[0]
        with self._lock:
            cached = self.get(view, inputs, operators, embedder)
            if cached is None:
                return []
            hits = cached.index.search(query_vec, k)
            return [{**cached.rows[key], SCORE: score} for key, score in hits]

    def get(self, view: str, inputs: Mapping[str, Mapping[str, Any]], operators: Sequence[Operator],
            embedder: EmbeddingBackend) -> _CachedIndex | None:
        """The view's index, up to date with its applied version (None before its first build). Call under the lock
        (``search`` does)."""
        op_id = self._index_op(view, operators)
        view_id = self.store.get_view_id(view)
        applied = self.store.get_applied_version(view)
        if applied is None:
            return None
        cached = self._indexes.get(view)
        if cached is None or cached.view_id != view_id or cached.op_id != op_id or \
                cached.model != embedder.model_id or cached.version > applied:
            cached = self._indexes[view] = self._build(view, view_id, op_id, applied, embedder)
        elif cached.version < applied:
            self._catch_up(view, cached, inputs, applied)
        return cached

    @staticmethod
    def _index_op(view: str, operators: Sequence[Operator]) -> str:
        indexers = [op for op in operators if isinstance(op, SemIndex)]
        if not indexers:
            raise SchemaError(f'View "{view}" has no sem_index to search; define it as '
                              f'db.view({view!r}, table.sem_index("text"))')
        return indexers[-1].op_id  # the one nearest the output, if several

    def discard(self, view: str) -> None:
        """Forget ``view``'s index (the view was dropped); a later search builds one from the store."""
        with self._lock:
            self._indexes.pop(view, None)

    def _build(self, view: str, view_id: int | None, op_id: str, applied: int,
               embedder: EmbeddingBackend) -> _CachedIndex:
        rows = self.store.get_view_rows(view, applied)
        state = {key: e for (op, key), e in self.store.get_all_state(view).items() if op == op_id and key in rows}
        cached = _CachedIndex(applied, view_id, op_id, embedder.model_id,
                              VectorIndex(embedder.dim, **self.index_options), rows, {})
        self._index_keys(view, cached, state, list(state))
        return cached

    def _catch_up(self, view: str, cached: _CachedIndex, inputs: Mapping[str, Mapping[str, Any]],
                  applied: int) -> None:
        first = cached.version + 1
        changed: set[RowKey] = set()
        for change in self.store.get_view_changes(view, first, applied):  # per version, retractions first
            key = encode_key(change.key)
            changed.add(key)
            if change.diff < 0:
                cached.rows.pop(key, None)
            else:
                cached.rows[key] = change.row
        for source in inputs.values():  # a forget frees a vector without changing the view's row
            if source.get("source") == "table":
                changed |= {c.key for c in self.store.get_changes(first, applied, [source["name"]])}
            elif source.get("source") == "view":
                changed |= {encode_key(c.key) for c in self.store.get_view_changes(source["name"], first, applied)}
        state = self.store.get_state(view, cached.op_id, changed)
        self._index_keys(view, cached, state, changed)
        cached.version = applied

    def _index_keys(self, view: str, cached: _CachedIndex, state: Mapping[RowKey, StateEntry],
                    keys: Iterable[RowKey]) -> None:
        """Make the index agree with the store on ``keys``: a key is indexed iff it is in the view with a vector."""
        add_keys, add_vectors, remove = [], [], []
        for key in sorted(keys, key=key_order):
            entry = state.get(key)
            if key not in cached.rows or entry is None or entry.value is None:  # None: its embedding failed
                remove.append(key)
                continue
            if cached.fingerprints.get(key) == entry.fingerprint:
                continue
            if entry.value["model"] != cached.model:
                raise ConfigError(f'View "{view}" holds embeddings from {entry.value["model"]!r}, but this database '
                                  f'embeds with {cached.model!r}; reopen it with the embedder that built the view')
            add_keys.append(key)
            add_vectors.append(np.asarray(entry.value["vector"]))
            cached.fingerprints[key] = entry.fingerprint
        for key in remove:
            cached.fingerprints.pop(key, None)
        cached.index.remove(remove)
        if add_keys:
            cached.index.add(add_keys, np.stack(add_vectors))
