"""Vector search: ``sem_index`` (ad-hoc top-k over a view) and ``sem_search`` (one standing top-k query); the
clustered ``sem_search_many`` (many standing queries, as in VectraFlow) is in ``deltamem.operators.search_many``.

    db.view("idx", docs.sem_index("text")).search("vector databases", k=5)   # rows with ``score``, best first
    db.view("top5", docs.sem_search("vector databases", k=5, column="text"))
    db.view("alerts", docs.sem_search_many(db.table("subs", key="sid"), k=3, column="text", query_column="query"))

Invariant: every embedding lives in the store, fingerprinted by the embedder's model id and the embedded text, so a
row is embedded again only when that text changes; a standing view is always the exact top k of its current input
(cosine similarity = dot product of unit vectors; ties by row key order), equal to a recompute from scratch. Rows
whose column is NULL are not indexed or ranked. In-memory structures (the HNSW index behind ``View.search``) are
caches rebuilt from the store.

Costs. Embedding calls go through the runner, like completions: memo first, retried with backoff, and on the ledger
(``db.usage().embeddings``; operator ``<op_id>/embed``); similarities are dot products, no model call;
``sem_search_many`` counts its similarities (``SemSearchMany.get_stats``). An embedding that still fails is stored as
the row's error in ``sem_index`` (its row shows ``_error``; the next refresh embeds it again); ``sem_search`` and
``sem_search_many`` have no row to show it on, so it fails the view's version, which maintenance retries later.

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

import json
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from deltamem.changes import ERROR_COLUMN, Delta, Row, RowKey, key_order
from deltamem.errors import SchemaError
from deltamem.operators.base import Operator, OperatorContext, retract
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
from deltamem.store.base import StateEntry
from deltamem.store.state_vectors import Vector

_TOP = RowKey(json.dumps("top"))  # the standing query and its current top k

# --- sem_index --------------------------------------------------------------------------------------------------------


class SemIndex(Operator):
    """Pass rows through unchanged and keep the embedding of ``column`` for each, for ``View.search``.

    State, under ``op_id``: per key whose current row reached this operator with a non-NULL ``column``,
    ``StateEntry(key, vector_fingerprint(model, text), {}, {"model": model_id, "vector": Vector})``; no entry
    for other keys. The input row itself is not stored (the view holds it), except while the row's embedding fails:
    then the entry is ``StateEntry(key, fingerprint, row, None, error)``, the view's row shows ``_error``, and the
    next refresh embeds it again.
    """

    kind: ClassVar[str] = "sem_index"

    def __init__(self, op_id: str, column: str):
        check_column_name(column, self.kind)
        self.op_id = op_id
        self.column = column

    def output_columns(self, input_columns: Sequence[str]) -> tuple[str, ...]:
        return tuple(input_columns)

    def check_columns(self, input_columns: Sequence[str], *, where: str) -> None:
        check_has_column(input_columns, self.column, kind=self.kind, where=where)

    def apply(self, deltas: Sequence[Delta], ctx: OperatorContext) -> list[Delta]:
        stored = ctx.get_state(self.op_id, [d.key for d in deltas])
        out: list[Delta] = []
        indexed: list[tuple[Delta, str, StateEntry | None]] = []
        for delta in deltas:
            old = stored.get(delta.key)
            before_out = self._output(delta.before, old)
            if delta.forget or delta.after is None:
                retracted = retract(self.op_id, delta, old, before_out, ctx)
                out += [retracted] if retracted else []
                continue
            text = text_of(delta.after, self.column)
            if text is not None:
                indexed.append((delta, text, old))
                continue
            if old is not None:
                ctx.delete_state(self.op_id, delta.key)
            out.append(Delta(delta.key, before_out, delta.after))
        touched = {d.key for d in deltas}
        for failed in ctx.get_failed_state(self.op_id):  # embeddings that failed before: asked again
            if failed.key not in touched:
                row, text = failed.input_row, text_of(failed.input_row, self.column)
                assert text is not None, "sem_index: an entry exists only for a row with text"
                indexed.append((Delta(failed.key, row, row), text, failed))
        if indexed:
            out += self._index(indexed, ctx)
        return [d for d in out if d.forget or d.before != d.after]

    def _index(self, indexed: list[tuple[Delta, str, StateEntry | None]], ctx: OperatorContext) -> list[Delta]:
        """Store the vector of each row's text (embedding only texts that changed or failed before) and return the
        rows' output deltas: the row as it is, or with ``_error`` while its embedding fails."""
        embedder = embedder_of(ctx, self.kind)
        out: list[Delta] = []
        todo: list[tuple[Delta, str, str, Row | None]] = []  # (delta, text, fingerprint, output before)
        reasons: list[str] = []
        for delta, text, old in indexed:
            before_out = self._output(delta.before, old)
            fingerprint = vector_fingerprint(embedder.model_id, text)
            if old is not None and old.fingerprint == fingerprint and old.error is None:
                out.append(Delta(delta.key, before_out, delta.after))  # an unchanged text costs no embedding
                continue
            todo.append((delta, text, fingerprint, before_out))
            reasons.append("refresh" if ctx.building else "insert" if old is None else
                           "retry" if old.error is not None else "update")
        results = ctx.embed(self.op_id, [text for _d, text, _f, _b in todo], reasons)
        for (delta, _text, fingerprint, before_out), result in zip(todo, results, strict=True):
            assert delta.after is not None, "sem_index: only rows with an after-image are embedded"
            if result.vector is None:  # the row is kept, to be embedded again at the next refresh
                entry = StateEntry(delta.key, fingerprint, delta.after, None, result.error)
            else:
                entry = StateEntry(delta.key, fingerprint, {}, {"model": embedder.model_id,
                                                                "vector": Vector(result.vector)})
            ctx.put_state(self.op_id, entry)
            out.append(Delta(delta.key, before_out, self._output(delta.after, entry)))
        return out

    @staticmethod
    def _output(row: Row | None, entry: StateEntry | None) -> Row | None:
        """The view's row for an input row: unchanged, or with ``_error`` while its embedding fails."""
        if row is None or entry is None or entry.error is None:
            return row
        return {**row, ERROR_COLUMN: entry.error}


# --- sem_search -------------------------------------------------------------------------------------------------------


class SemSearch(Operator):
    """A standing top-k vector search: the ``k`` input rows whose ``column`` is most similar to ``query``, with
    column ``score``.

    State: under ``op_id``, per candidate row (non-NULL ``column``), ``StateEntry(key, vector_fingerprint(model,
    text), row, {"score": s})``: only the score is kept, since the query never changes. Under ``op_id/top``, one
    entry: ``{"model", "query_vec": Vector, "members": [[key, score], ...]}``, the current top k, best first.
    Invariant: ``members`` is the top ``k`` of the per-row entries by ``rank``; a member that a TTL ``keep`` freed
    leaves ``members`` (its output stays, see the module docstring).

    NOTE: after a change of embedder, only rows whose text changes are scored again; build a new view to rescore all.
    """

    kind: ClassVar[str] = "sem_search"

    def __init__(self, op_id: str, query: str, *, k: int, column: str):
        if not isinstance(query, str) or not query.strip():
            raise SchemaError("sem_search needs a non-empty query, e.g. sem_search('vector databases', k=5, ...)")
        check_k(k, self.kind)
        check_column_name(column, self.kind)
        self.op_id = op_id
        self.top_op = f"{op_id}/top"
        self.query = query
        self.k = k
        self.column = column

    def output_columns(self, input_columns: Sequence[str]) -> tuple[str, ...]:
        return (*[c for c in input_columns if c != SCORE], SCORE)

    def check_columns(self, input_columns: Sequence[str], *, where: str) -> None:
        check_has_column(input_columns, self.column, kind=self.kind, where=where)

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
            vec = query_vec if query_vec is not None else np.asarray(top.value["query_vec"])
            model = top.value["model"] if query_vec is None else embedder_of(ctx, self.kind).model_id
            value = {"model": model, "query_vec": Vector(vec),
                     "members": [[k, s] for k, s in new_members.items()]}
            ctx.put_state(self.top_op, StateEntry(_TOP, vector_fingerprint(model, self.query), {}, value))
        return out

    def _score(self, unscored: list[tuple[Delta, StateEntry | None, str]], top: StateEntry | None,
               scores: dict[RowKey, float], ctx: OperatorContext) -> np.ndarray | None:
        """Fill ``scores`` for the changed candidate rows: the stored score when the text is unchanged, else one
        embedding and one similarity each. Return the query vector when it was embedded now (None otherwise)."""
        if not unscored and top is not None:
            return None
        embedder = embedder_of(ctx, self.kind)
        todo: list[tuple[Delta, str, str, StateEntry | None]] = []
        for delta, old, text in unscored:
            fingerprint = vector_fingerprint(embedder.model_id, text)
            if old is not None and old.fingerprint == fingerprint:
                scores[delta.key] = old.value["score"]
                if old.input_row != delta.after:
                    ctx.put_state(self.op_id, StateEntry(delta.key, fingerprint, delta.after, old.value))
            else:
                todo.append((delta, text, fingerprint, old))
        query_fp = vector_fingerprint(embedder.model_id, self.query)
        fresh_query = top is None or top.fingerprint != query_fp
        if not todo and not fresh_query:
            return None
        # One embedding call for the rows and, the first time only, the query. A failure fails the view's version
        # (a top k has no place to show a row's error); maintenance retries it.
        reasons = (["refresh" if top is None else "update"] if fresh_query else []) + [
            "refresh" if ctx.building else "insert" if old is None else "update" for _d, _t, _f, old in todo]
        vectors = ctx.embed_or_raise(self.op_id, ([self.query] if fresh_query else []) +
                                     [text for _d, text, _f, _o in todo], reasons)
        query_vec = vectors[0] if fresh_query else np.asarray(top.value["query_vec"])
        row_vecs = vectors[1:] if fresh_query else vectors
        if todo:
            sims = similarities(row_vecs, query_vec[None, :])[:, 0]
            for (delta, _text, fingerprint, _old), sim in zip(todo, sims, strict=True):
                scores[delta.key] = float(sim)
                ctx.put_state(self.op_id, StateEntry(delta.key, fingerprint, delta.after, {"score": float(sim)}))
        return query_vec if fresh_query else None

    @staticmethod
    def _strip(row: Row) -> Row:
        return {c: v for c, v in row.items() if c != SCORE}
