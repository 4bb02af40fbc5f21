"""Every operator a plan can name, by kind: the single-input ones a chain is made of, and the heads with named inputs.

    chain_operator("sem_map")("2:sem_map", "Summarise {text}", out="summary", max_tokens=64)

A layer above the operators may add kinds of its own (the SQL layer's plain ``sql_where`` and ``sql_project``): they
register in ``CHAIN_OPERATORS`` when their module is imported, and ``chain_operator`` imports that module the first
time a stored plan names one, so ``dm.connect`` alone can maintain every view a plan describes.
"""

from __future__ import annotations

import importlib

from deltamem.operators.agg import SemAgg
from deltamem.operators.base import MultiInputOperator, Operator
from deltamem.operators.compose import ComposeOperator
from deltamem.operators.graph import SemGraph
from deltamem.operators.generate import GenerateOperator
from deltamem.operators.join import SemJoin
from deltamem.operators.rowwise import SemExtract, SemFilter, SemMap
from deltamem.operators.search import SemIndex, SemSearch
from deltamem.operators.search_many import SemSearchMany
from deltamem.operators.shard_union import ShardUnion
from deltamem.operators.topk import SemTopK

CHAIN_OPERATORS: dict[str, type[Operator]] = {
    op.kind: op for op in (SemFilter, SemMap, SemExtract, SemTopK, SemAgg, SemIndex, SemSearch, SemGraph)
}
HEAD_OPERATORS: dict[str, type[MultiInputOperator]] = {
    op.kind: op for op in (GenerateOperator, ComposeOperator, SemJoin, SemSearchMany, ShardUnion)
}

_REGISTERED_BY = {"sql_where": "deltamem.sql.operators", "sql_project": "deltamem.sql.operators"}


def chain_operator(kind: str) -> type[Operator] | None:
    """The chain operator class of ``kind``, or None when no layer provides one."""
    if kind not in CHAIN_OPERATORS and kind in _REGISTERED_BY:
        importlib.import_module(_REGISTERED_BY[kind])  # registers its kinds
    return CHAIN_OPERATORS.get(kind)
