"""Every operator a plan can name, by kind: the single-input ones a chain is made of, and the heads with named inputs.

    CHAIN_OPERATORS["sem_map"]("2:sem_map", "Summarise {text}", out="summary", max_tokens=64)
"""

from __future__ import annotations

from deltamem.operators.agg import SemAgg
from deltamem.operators.base import MultiInputOperator, Operator
from deltamem.operators.generate import GenerateOperator
from deltamem.operators.join import SemJoin
from deltamem.operators.rowwise import SemExtract, SemFilter, SemMap
from deltamem.operators.search import SemIndex, SemSearch
from deltamem.operators.search_many import SemSearchMany
from deltamem.operators.topk import SemTopK

CHAIN_OPERATORS: dict[str, type[Operator]] = {
    op.kind: op for op in (SemFilter, SemMap, SemExtract, SemTopK, SemAgg, SemIndex, SemSearch)
}
HEAD_OPERATORS: dict[str, type[MultiInputOperator]] = {
    op.kind: op for op in (GenerateOperator, SemJoin, SemSearchMany)
}
