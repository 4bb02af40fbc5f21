"""``shard_union``: a sharded view's rows, the union of its shard views' rows (``deltamem.shards``). No model calls.

    ShardUnion("1:shard_union", of=generate_plan, views=["answers#0", "answers#1"]).apply_inputs(deltas, ctx)

Its inputs are the shard views, as roles ``shard0``, ``shard1``, ...; ``of`` is the plan each shard runs on its part
of the tables, kept so that the view's definition says what it computes and a drop of those tables reaches it. At
one version an output key leaves at most one shard and enters at most one (``deltamem.shards``' invariant), so its
delta here is the row it had in the one and the row it has in the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from deltamem.changes import Delta, RowKey
from deltamem.operators.base import MultiInputOperator, OperatorContext


def shard_roles(count: int) -> tuple[str, ...]:
    return tuple(f"shard{index}" for index in range(count))


def is_shard_union(plan: Mapping[str, Any]) -> bool:
    """Whether ``plan`` is a sharded view's: the union of its shard views."""
    return plan.get("op") == ShardUnion.kind


class ShardUnion(MultiInputOperator):
    kind = "shard_union"
    roles: ClassVar[tuple[str, ...]] = ()  # one per shard: ``roles_of`` a plan
    reads_state_through_context = True  # it keeps no state

    def __init__(self, op_id: str, *, of: dict[str, Any], views: Sequence[str]):
        self.op_id = op_id
        self.of = of
        self.views = list(views)

    @classmethod
    def roles_of(cls, head: Mapping[str, Any]) -> tuple[str, ...]:
        return shard_roles(len(head["views"]))

    @classmethod
    def plan(cls, of: dict[str, Any], views: Sequence[str]) -> dict[str, Any]:
        """The view's plan: ``of`` run by ``views``, one per shard, unioned."""
        sources = {role: {"source": "view", "name": view} for role, view in zip(shard_roles(len(views)), views)}
        return {"op": cls.kind, **sources, "of": of, "views": list(views)}

    def output_columns_by_role(self, columns: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
        return tuple(columns[shard_roles(1)[0]])

    def apply_inputs(self, inputs: dict[str, list[Delta]], ctx: OperatorContext) -> list[Delta]:
        merged: dict[RowKey, list] = {}
        for deltas in inputs.values():  # one list per shard
            for delta in deltas:
                sides = merged.setdefault(delta.key, [None, None])
                sides[0] = sides[0] if delta.before is None else delta.before
                sides[1] = sides[1] if delta.after is None else delta.after
        return [Delta(key, before, after) for key, (before, after) in merged.items() if before != after]
