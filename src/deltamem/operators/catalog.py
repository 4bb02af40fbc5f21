"""Every operator a plan can name, by kind: the single-input ones a chain is made of, and the heads with named inputs.

    CHAIN_OPERATORS["sem_map"]("2:sem_map", "Summarise {text}", out="summary", max_tokens=64)
"""

from __future__ import annotations

from deltamem.operators.base import MultiInputOperator, Operator
from deltamem.operators.generate import GenerateOperator
from deltamem.operators.rowwise import SemExtract, SemFilter, SemMap

CHAIN_OPERATORS: dict[str, type[Operator]] = {op.kind: op for op in (SemFilter, SemMap, SemExtract)}
HEAD_OPERATORS: dict[str, type[MultiInputOperator]] = {op.kind: op for op in (GenerateOperator,)}
