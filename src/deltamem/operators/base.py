"""What every operator gets from the engine, and what it must provide.

An operator turns the deltas of one version into output deltas, reading and writing only its own state through the
``OperatorContext`` the engine hands it. It never imports a store or a backend: the context carries both, so any
operator runs on the deterministic test backend in a unit test.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from deltamem.changes import Delta, Row, RowKey
from deltamem.llm import LazyBackend
from deltamem.llm.base import EmbeddingBackend
from deltamem.llm.embedding_runs import EmbedResult
from deltamem.llm.runner import CallResult, CallRunner, CallSpec
from deltamem.store.base import StateEntry, Store, ViewCommit


@dataclass
class OperatorContext:
    """One view's refresh at one version: the state reads and call runs it makes, and the writes it buffers.

    Writes go into ``commit`` and reach the store only when the engine commits the whole version at once.
    """

    view: str
    version: int
    store: Store
    runner: CallRunner
    commit: ViewCommit
    building: bool = False  # True while a new view is built from its source's rows: its calls are "refresh"
    embedder: LazyBackend[EmbeddingBackend] | None = None  # loaded only by the operators that embed
    # The commits of this view's earlier versions computed in the same pass and not yet in the store, oldest first:
    # the state reads see their writes (only operators with ``reads_state_through_context`` are run so).
    pending: Sequence[ViewCommit] = ()
    # Per operator, its failed state and the entries read so far (None: no entry) as the store held them when the
    # pass began, shared by the pass's contexts: the store's copy cannot change during a pass (the view's maintainer
    # is its only writer), so each is read from the store once a pass.
    stored_failures: dict[str, list[StateEntry]] | None = None
    stored_state: dict[str, dict[RowKey, StateEntry | None]] | None = None

    def get_state(self, op_id: str, keys: Iterable[RowKey]) -> dict[RowKey, StateEntry]:
        keys = list(keys)
        if self.stored_state is None:
            found = self.store.get_state(self.view, op_id, keys)
        else:
            known = self.stored_state.setdefault(op_id, {})
            missing = [key for key in dict.fromkeys(keys) if key not in known]
            if missing:
                read = self.store.get_state(self.view, op_id, missing)
                known.update({key: read.get(key) for key in missing})
            found = {key: entry for key in keys if (entry := known[key]) is not None}
        if self.pending:
            wanted = set(keys)
            for commit in self.pending:
                _replay(found, commit, op_id, lambda key: key in wanted)
        return found

    def get_failed_state(self, op_id: str) -> list[StateEntry]:
        if self.stored_failures is None:
            return self.store.get_failed_state(self.view, op_id)
        if op_id not in self.stored_failures:
            self.stored_failures[op_id] = self.store.get_failed_state(self.view, op_id)
        found = self.stored_failures[op_id]
        failed = {entry.key: entry for entry in found}
        for commit in self.pending:
            _replay(failed, commit, op_id, lambda _key: True)
        return [failed[key] for key in sorted(failed) if failed[key].error is not None]

    def put_state(self, op_id: str, entry: StateEntry) -> None:
        self.commit.state_puts.append((op_id, entry))

    def delete_state(self, op_id: str, key: RowKey) -> None:
        self.commit.state_deletes.append((op_id, key))

    def run_calls(self, op_id: str, calls: Sequence[CallSpec]) -> list[CallResult]:
        results = self.runner.run(calls, view=self.view, operator=op_id, version=self.version)
        # For the full-recompute baseline: these were not in the memo before this refresh.
        self.commit.paid_calls.update(r.call_hash for r in results if r.completion is not None and not r.memo_hit)
        return results

    def embed(self, op_id: str, texts: Sequence[str], reasons: Sequence[str]) -> list[EmbedResult]:
        """Embed ``texts`` through the runner (memo, retries, ledger): a vector or an error per text."""
        assert self.embedder is not None, f"{op_id}: the engine passed no embedder to an operator that embeds"
        return self.runner.embed(self.embedder.get(), texts, reasons=reasons, view=self.view, operator=op_id,
                                 version=self.version)

    def embed_or_raise(self, op_id: str, texts: Sequence[str], reasons: Sequence[str]) -> np.ndarray:
        """``embed`` for an operator with no row to show an error on: ``BackendError`` fails the view's version,
        which maintenance retries later."""
        assert self.embedder is not None, f"{op_id}: the engine passed no embedder to an operator that embeds"
        return self.runner.embed_or_raise(self.embedder.get(), texts, reasons=reasons, view=self.view,
                                          operator=op_id, version=self.version)


def _replay(state: dict[RowKey, StateEntry], commit: ViewCommit, op_id: str, wanted) -> None:
    """Apply ``commit``'s state writes for ``op_id`` to ``state`` where ``wanted(key)``, as the store would:
    deletes first, then puts, the last put of a key winning."""
    for op, key in commit.state_deletes:
        if op == op_id and wanted(key):
            state.pop(key, None)
    for op, entry in commit.state_puts:
        if op == op_id and wanted(entry.key):
            state[entry.key] = entry


def retract(op_id: str, delta: Delta, old: StateEntry | None, before_out: Row | None,
            ctx: OperatorContext) -> Delta | None:
    """Handle a delete or a TTL ``keep`` expiry of ``delta.key``: drop the operator's state for it and return the
    output delta to pass on (a ``forget``, or the stored output retracted), or None when there is nothing to pass."""
    if old is not None:
        ctx.delete_state(op_id, delta.key)
    if delta.forget:
        return Delta(delta.key, None, None, forget=True)
    return None if before_out is None else Delta(delta.key, before_out, None)


class Operator(abc.ABC):
    """A node of a view's operator graph. ``op_id`` is unique within its view and stable across restarts."""

    op_id: str
    # True when ``apply`` reads the view's state only through ``ctx.get_state`` and ``ctx.get_failed_state``: then
    # maintenance may compute several versions before committing them (``OperatorContext.pending``).
    reads_state_through_context: ClassVar[bool] = False

    @abc.abstractmethod
    def output_columns(self, input_columns: Sequence[str]) -> tuple[str, ...]:
        """The columns of this operator's output rows, given its input's."""

    @abc.abstractmethod
    def apply(self, deltas: Sequence[Delta], ctx: OperatorContext) -> list[Delta]:
        """Turn one version's input deltas into output deltas, retrying stored failures on the way."""

    def check_columns(self, input_columns: Sequence[str], *, where: str) -> None:
        """Raise ``TemplateError`` or ``SchemaError`` when the input lacks a column this operator reads (checked when
        a relation is defined, before any model call)."""


class MultiInputOperator(Operator):
    """An operator with named inputs (``llm_generate``: ``context`` and ``data_source``); it heads its view's chain.
    ``roles`` names the inputs, in the order a plan lists them."""

    roles: ClassVar[tuple[str, ...]]

    @classmethod
    def roles_of(cls, head: Mapping[str, object]) -> tuple[str, ...]:
        """The input names of the plan node ``head``: ``roles``, unless the operator's inputs vary in number."""
        return cls.roles

    def apply(self, deltas: Sequence[Delta], ctx: OperatorContext) -> list[Delta]:
        raise TypeError(f"{type(self).__name__} takes named inputs: call apply_inputs")

    def output_columns(self, input_columns: Sequence[str]) -> tuple[str, ...]:
        raise TypeError(f"{type(self).__name__} takes named inputs: call output_columns_by_role")

    @abc.abstractmethod
    def output_columns_by_role(self, columns: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
        """The columns of this operator's output rows, given each input's."""

    def check_columns_by_role(self, columns: Mapping[str, Sequence[str]], *, where: str) -> None:
        """Like ``check_columns``, for each named input."""

    @abc.abstractmethod
    def apply_inputs(self, inputs: dict[str, list[Delta]], ctx: OperatorContext) -> list[Delta]:
        """Turn one version's deltas, by input name, into output deltas."""
