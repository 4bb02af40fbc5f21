"""Planning a pass's model calls before computing it, so that a store across a network claims them in one round.

    covered = prepay_pass(operators, versions, by_version, view=..., store=..., runner=..., ...)   # 0: not planned

On PostgreSQL (``Store.remote``) each claim of a version's calls cost two or three round trips, and a pass of many
small versions waited on them one version after the other. So before computing a pass the maintainer runs the
view's leading operators over its versions once as a dry run: the operators before the first one that calls the
model (SQL ``WHERE``/``SELECT``: no calls), then that one, whose calls are recorded, not made (each gets an error
placeholder). The runner then claims and pays them all at once (``CallRunner.prepay``), and the real computation of
the pass takes each result where it first asks for it, as paid there.

Invariant: every planned call is made by the real computation, first at the version and operator where it was
planned. The dry run sees the real inputs and state, and differs only where a planned call's value would be read:
there a placeholder stands in. Whether the planned operator calls for a row depends on the row's prompt and the
fingerprint of its stored entry, never on a value, so it asks what the real run asks (a row asked again for the same
prompt is planned once, and a placeholder is not retried as a failure; a call that really fails is retried by the
real run, unplanned). The calls of the operators after it depend on its values: they are not planned, and the real
computation makes them as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from deltamem.changes import Delta, RowKey
from deltamem.llm import LazyBackend
from deltamem.llm.base import EmbeddingBackend
from deltamem.llm.runner import CallResult, CallRunner, CallSpec, PlannedCall
from deltamem.operators.base import MultiInputOperator, Operator, OperatorContext
from deltamem.operators.rowwise import RowwiseOperator
from deltamem.store.base import StateEntry, Store, ViewCommit

PLACEHOLDER = "planned, not made (a dry run)"
# Keys whose state a dry run reads in one query: a few round trips per pass, and never much more than it uses (a
# pass may end after a few versions, and each query costs the server in proportion to its keys).
PREFETCH_CHANGES = 256
PLAN_BELOW_CHANGES = 100  # a pass is planned when its first version has fewer input changes (``worth_planning``)


class _Unplannable(Exception):
    """The dry run reached a call it cannot plan: the pass is computed without a plan."""


@dataclass
class PlanningContext(OperatorContext):
    """An ``OperatorContext`` that records the calls of ``planned_op`` instead of making them."""

    planned_op: str = ""
    planned: list[PlannedCall] | None = None

    def run_calls(self, op_id: str, calls: Sequence[CallSpec]) -> list[CallResult]:
        if op_id != self.planned_op or self.planned is None:
            raise _Unplannable(op_id)
        self.planned.extend(PlannedCall(spec, op_id, self.version) for spec in calls)
        return [CallResult(spec.call_hash or "", None, PLACEHOLDER, memo_hit=False) for spec in calls]

    def get_failed_state(self, op_id: str) -> list[StateEntry]:
        # A placeholder is no failure: its call was planned once, and the real computation retries it only if it
        # fails there (then unplanned). Retrying placeholders here would plan each call again at every version.
        return [entry for entry in super().get_failed_state(op_id) if entry.error != PLACEHOLDER]

    def embed(self, op_id: str, texts, reasons):
        raise _Unplannable(op_id)

    def embed_or_raise(self, op_id: str, texts, reasons):
        raise _Unplannable(op_id)


def worth_planning(store: Store, versions: Sequence[int], by_version: dict[int, dict[str, list[Delta]]]) -> bool:
    """Whether planning the pass that starts at ``versions[0]`` saves more than its dry run costs: on a remote
    store, with two versions or more to go (one version's calls are claimed in one round anyway), of few changes each
    (a big version's claim is small beside its own work, and the dry run's CPU is not)."""
    return (store.remote and len(versions) > 1
            and sum(len(d) for d in by_version[versions[0]].values()) < PLAN_BELOW_CHANGES)


def prepay_pass(operators: Sequence[Operator], versions: Sequence[int], by_version: dict[int, dict[str, list[Delta]]],
                *, view: str, store: Store, runner: CallRunner, embedder: LazyBackend[EmbeddingBackend] | None,
                stored_failures: dict[str, list[StateEntry]], stored_state: dict[str, dict[RowKey, StateEntry | None]],
                max_seconds: float, max_changes: int) -> int:
    """Plan the calls of the pass that starts at ``versions[0]`` (``plan_pass``) and pay them in one round
    (``CallRunner.prepay``); return how many versions the pass covers, or 0 when they cannot be planned. The
    ``stored_*`` caches are the pass's (``OperatorContext``)."""

    def context_for(version: int, pending: list[ViewCommit], planned: list[PlannedCall],
                    planned_op: str) -> PlanningContext:
        return PlanningContext(view, version, store, runner, ViewCommit(view, version), embedder=embedder,
                               pending=pending, stored_failures=stored_failures, stored_state=stored_state,
                               planned_op=planned_op, planned=planned)

    planned, covered = plan_pass(operators, versions, by_version, context_for, max_seconds=max_seconds,
                                 max_changes=max_changes, max_calls=runner.calls_payable_in(max_seconds))
    if covered:
        runner.prepay(planned, view=view)
    return covered


def plan_pass(operators: Sequence[Operator], versions: Sequence[int], by_version: dict[int, dict[str, list[Delta]]],
              context_for: Callable[[int, list[ViewCommit], list[PlannedCall], str], PlanningContext],
              *, max_seconds: float, max_changes: int, max_calls: int) -> tuple[list[PlannedCall], int]:
    """The calls of the pass that starts at ``versions[0]``, and how many of ``versions`` it covers: at least one,
    and more while the dry run has taken less than ``max_seconds``, read fewer than ``max_changes`` input changes
    and planned fewer than ``max_calls`` calls (what the backend pays in about a pass's time: a pass commits nothing
    until its calls are paid). No calls and 0 when the view's operators cannot be planned.

    ``context_for(version, pending, planned, planned_op)`` builds the dry run's context for one version: its
    ``commit`` new, its state reads on top of ``pending``."""
    caller = next((i for i, op in enumerate(operators) if isinstance(op, RowwiseOperator)), None)
    if caller is None or any(isinstance(op, MultiInputOperator) for op in operators[:caller]):
        return [], 0
    leading, planned_op = operators[:caller + 1], operators[caller].op_id
    planned: list[PlannedCall] = []
    pending: list[ViewCommit] = []
    started, changes, fetched_to = time.monotonic(), 0, 0
    try:
        for index, version in enumerate(versions):
            if pending and (time.monotonic() - started >= max_seconds or changes >= max_changes
                            or len(planned) >= max_calls):
                break
            ctx = context_for(version, pending, planned, planned_op)
            if index == fetched_to:  # the state of the keys of the next versions, read in one round trip
                waited = time.monotonic()
                fetched_to = _prefetch(versions, index, by_version, ctx, planned_op)
                started += time.monotonic() - waited  # ``max_seconds`` bounds the dry run's work, not the store's
            inputs = by_version[version]
            deltas = inputs.get("input", [])
            for operator in leading:
                deltas = operator.apply(deltas, ctx)
            pending.append(ctx.commit)
            changes += sum(len(d) for d in inputs.values())
    except _Unplannable:
        return [], 0
    return planned, len(pending)


def _prefetch(versions: Sequence[int], start: int, by_version: dict[int, dict[str, list[Delta]]],
              ctx: OperatorContext, op_id: str) -> int:
    """Read ``op_id``'s state of the keys that the versions from ``versions[start]`` change, about
    ``PREFETCH_CHANGES`` of them, into ``ctx``'s pass cache; return the index of the first version left out."""
    keys: dict[RowKey, None] = {}
    end = start
    while end < len(versions) and (end == start or len(keys) < PREFETCH_CHANGES):
        keys.update((delta.key, None) for delta in by_version[versions[end]].get("input", []))
        end += 1
    ctx.get_state(op_id, keys)
    return end
