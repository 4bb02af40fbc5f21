"""The two relational operators SQL views need and the Python API lacks: a plain WHERE and a projection.

    chain(papers, {"op": "sql_where", "instruction": "year > 2020"})   # a Relation, like papers.sem_filter(...)

Both are stateless and call no model: an output row is a function of its input row alone, so a delta maps to at most
one delta and nothing is stored. They plug into the operator catalog under the kinds ``sql_where`` and
``sql_project``; importing ``deltamem.sql`` registers them.

Invariant: for every input delta ``(key, before, after)`` the output is ``(key, f(before), f(after))``, dropped when
the two are equal; a TTL ``keep`` (``forget``) passes through. A row that carries an upstream ``_error`` passes the
WHERE, as it passes ``sem_filter``: a failure is shown, never filtered away.

``deltamem.operators.catalog.chain_operator`` imports this module the first time a stored plan names one of these
kinds, so any process can maintain a view defined in SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from deltamem.changes import ERROR_COLUMN, Delta, Row
from deltamem.errors import SchemaError, did_you_mean
from deltamem.operators.base import Operator, OperatorContext
from deltamem.operators.catalog import CHAIN_OPERATORS
from deltamem.relation import Relation
from deltamem.sql.evaluate import compile_expression, is_true, parse_expression, parse_select_list


class _RowFunction(Operator):
    """A stateless operator whose output row is ``map_row`` of its input row (None drops it)."""

    reads_state_through_context = True  # it reads none

    def map_row(self, row: Row | None) -> Row | None:
        raise NotImplementedError

    def apply(self, deltas: Sequence[Delta], ctx: OperatorContext) -> list[Delta]:
        out = []
        for delta in deltas:
            if delta.forget:
                out.append(Delta(delta.key, None, None, forget=True))
                continue
            before, after = self.map_row(delta.before), self.map_row(delta.after)
            if before != after:
                out.append(Delta(delta.key, before, after))
        return out


class SqlWhere(_RowFunction):
    """Keep the rows for which ``instruction``, a plain SQL condition over the input's columns, is TRUE."""

    kind: ClassVar[str] = "sql_where"

    def __init__(self, op_id: str, instruction: str):
        self.op_id = op_id
        self.condition = instruction
        self._tree = parse_expression(instruction)
        self._test = compile_expression(self._tree, columns=None)

    def output_columns(self, input_columns: Sequence[str]) -> tuple[str, ...]:
        return tuple(input_columns)

    def check_columns(self, input_columns: Sequence[str], *, where: str) -> None:
        compile_expression(self._tree, columns=list(input_columns), where=where)

    def map_row(self, row: Row | None) -> Row | None:
        if row is None:
            return None
        return row if row.get(ERROR_COLUMN) is not None or is_true(self._test(row)) else None


class SqlProject(_RowFunction):
    """Keep, rename and reorder columns: ``instruction`` is a select list of columns, e.g. ``"id, title AS name"``."""

    kind: ClassVar[str] = "sql_project"

    def __init__(self, op_id: str, instruction: str):
        from sqlglot import exp

        self.op_id = op_id
        self.select_list = instruction
        self.columns: list[tuple[str, str]] = []  # (output name, input name), in output order
        for item in parse_select_list(instruction):
            source = item.this if isinstance(item, exp.Alias) else item
            if not isinstance(source, exp.Column) or source.table:
                raise SchemaError(f"sql_project reads plain columns, not {item.sql()!r}")
            self.columns.append((item.alias_or_name, source.name))
        names = [name for name, _ in self.columns]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates or ERROR_COLUMN in names:
            raise SchemaError(f"Output column names must be unique and not {ERROR_COLUMN!r}: {duplicates or names}")

    def output_columns(self, input_columns: Sequence[str]) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    def check_columns(self, input_columns: Sequence[str], *, where: str) -> None:
        for _, source in self.columns:
            if source not in input_columns:
                raise SchemaError(f"Column {source!r} is not a column of {where}."
                                  + did_you_mean(source, input_columns))

    def map_row(self, row: Row | None) -> Row | None:
        if row is None:
            return None
        projected = {name: row.get(source) for name, source in self.columns}
        if row.get(ERROR_COLUMN) is not None:
            projected[ERROR_COLUMN] = row[ERROR_COLUMN]  # the failure stays visible whatever is selected
        return projected


SQL_OPERATORS: dict[str, type[Operator]] = {op.kind: op for op in (SqlWhere, SqlProject)}


def register() -> None:
    """Make the catalog know these kinds (idempotent)."""
    for kind, cls in SQL_OPERATORS.items():
        registered = CHAIN_OPERATORS.setdefault(kind, cls)
        assert registered is cls, f"sql: operator kind {kind!r} is taken by {registered.__name__}"


def chain(relation: Relation, node: dict[str, Any]) -> Relation:
    """``relation`` followed by one SQL operator node, checked against its columns like every API method."""
    register()
    # NOTE(sql): Relation._chain validates and appends a node; the API has one public method per semantic operator
    # and none for these, so the SQL layer calls the shared private step rather than copy it.
    return relation._chain(node)


register()
