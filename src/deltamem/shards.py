"""Shards of a partitioned view: the unit that one worker leases, so several workers share one view's work.

    db.generate("answers", prompt=..., context=questions, data_source=docs, partition="qid", shards=4)

A partitioned ``LLM_GENERATE`` (or ``decompose``) view with ``shards=n`` is stored as n hidden *shard views*
(``answers#0`` ... ``answers#3``) and the view itself, which unions them (``deltamem.operators.shard_union``). Shard
``i`` is the same plan over only the rows of both tables whose partition value hashes to ``i`` (``shard_of``); as an
answer reads only the documents of its own partition, each shard computes exactly the answers of its partitions, and
the union is the view unsharded. Each shard view is an ordinary view to maintenance: its own lease, applied version,
state, rows and baselines; so ``deltamem worker`` processes share the shards out like views (``deltamem.leases``),
and the view reflects a version once every shard does.

Invariant: a row belongs to the shard of its partition value at each version, so a row whose partition value changes
to one of another shard leaves the first shard (a delete there) and enters the second (an insert) at that version;
an output key is in at most one shard at any version.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from deltamem.changes import Delta, Row
from deltamem.errors import SchemaError

SHARD_MARK = "#"  # view names are identifiers, so no view a user names has it
MAX_SHARDS = 256


def shard_of(value: Any, count: int) -> int:
    """The shard (``0 <= shard < count``) of a partition value: a hash of its JSON, the same in every process."""
    digest = hashlib.blake2b(json.dumps(value, sort_keys=True).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def shard_view_names(view: str, count: int) -> list[str]:
    """The names of ``view``'s ``count`` shard views."""
    return [f"{view}{SHARD_MARK}{index}" for index in range(count)]


def is_shard_view(name: str) -> bool:
    return SHARD_MARK in name


def parent_view(name: str) -> str:
    """The view a shard view is part of (``"answers#2"`` -> ``"answers"``); any other name unchanged."""
    return name.partition(SHARD_MARK)[0]


def check_shards(shards: object, partition: str | None, *, view: str) -> None:
    """Raise ``SchemaError`` naming what is wrong with ``shards`` (a count; only a partitioned view has shards)."""
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise SchemaError(f"{view!r}: shards must be an integer from 1 to {MAX_SHARDS}, got {shards!r}")
    if shards > 1 and partition is None:
        raise SchemaError(f"{view!r}: shards={shards} needs partition=<column>: a view is sharded by the value of "
                          "its partition column")


@dataclass(frozen=True)
class ShardFilter:
    """Which rows of a source shard ``index`` of ``count`` reads: those whose ``column`` value hashes to it. A table
    source of a shard view's plan carries it as ``"shard": [column, index, count]``."""

    column: str
    index: int
    count: int

    @classmethod
    def of(cls, source: dict[str, Any]) -> "ShardFilter | None":
        found = source.get("shard")
        return None if found is None else cls(*found)

    def to_plan(self) -> list[Any]:
        return [self.column, self.index, self.count]

    def holds(self, row: Row | None) -> bool:
        return row is not None and shard_of(row.get(self.column), self.count) == self.index

    def delta(self, delta: Delta) -> Delta | None:
        """``delta`` as this shard sees it: each side kept only if its row is in the shard; None if neither is."""
        before = delta.before if self.holds(delta.before) else None
        after = delta.after if self.holds(delta.after) else None
        if before is None and after is None:
            return None
        if before is delta.before and after is delta.after:
            return delta
        return Delta(delta.key, before, after)  # a move between shards: no TTL expiry


def shard_plan(plan: dict[str, Any], roles: tuple[str, ...], shard: ShardFilter) -> dict[str, Any]:
    """``plan`` (a head operator over tables) reading, in each of ``roles``, only the rows of ``shard``."""
    return {**plan, **{role: {**plan[role], "shard": shard.to_plan()} for role in roles}}


def shard_plans(union: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Each shard view of a ``shard_union`` plan with its plan: the plan it unions, on the shard's rows only."""
    of, views = union["of"], union["views"]
    roles = tuple(role for role, source in of.items() if isinstance(source, dict) and source.get("source") == "table")
    return [(view, shard_plan(of, roles, ShardFilter(of["partition"], index, len(views))))
            for index, view in enumerate(views)]
