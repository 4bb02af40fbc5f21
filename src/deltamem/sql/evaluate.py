"""Plain SQL expressions over one row: the WHERE of views, UPDATE and DELETE, INSERT values, ad-hoc reads.

    compile_expression(parse_expression("year > 2020 AND venue IS NOT NULL"), columns=["year", "venue"])({"year": 2021})

Invariant: evaluating never raises. SQL's three-valued logic holds: NULL (None) propagates through arithmetic and
comparisons, and a WHERE keeps a row only when its condition is TRUE. Values of types that cannot be ordered against
each other (text < 3), and division by zero, give NULL rather than an error, because a stored view filter that raised
on one row would stop the maintenance of every view. Unknown columns and unsupported constructs are errors when the
expression is compiled, before anything runs.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlglot import exp

from deltamem.errors import SchemaError, did_you_mean
from deltamem.sql.errors import BindError, NotSupported

Row = Mapping[str, Any]
Compiled = Callable[[Row], Any]
SEMANTIC_FUNCTIONS = ("SEM_FILTER", "SEM_MAP", "SEM_EXTRACT", "SEM_AGG", "SEM_RANK", "SEM_MATCH", "SEM_SEARCH",
                      "SEM_GRAPH")


class Bound(exp.Expression):
    """A parameter's value, bound in place of ``?``/``$n``/``:name``; ``this`` is the Python value itself."""

    arg_types = {"this": False}


def parse_expression(text: str) -> exp.Expr:
    """Parse one expression in the deltamem dialect (what a stored view filter keeps as text)."""
    items = parse_select_list(text)
    if len(items) != 1:
        raise SchemaError(f"{text!r} is not one expression")
    return items[0]


def parse_select_list(text: str) -> list[exp.Expr]:
    """Parse ``a, b AS c`` (a select list) in the deltamem dialect."""
    from sqlglot import parse_one

    from deltamem.sql.dialect import Deltamem

    select = parse_one(f"SELECT {text}", dialect=Deltamem)  # the dialect parses statements: read one SELECT's items
    assert isinstance(select, exp.Select), "evaluate: SELECT parses into a Select"
    return list(select.expressions)


def to_sql(node: exp.Expr) -> str:
    """The canonical text of an expression; a bound JSON value prints as a string literal of its JSON."""
    from deltamem.sql.dialect import Deltamem

    def literal(n: exp.Expr) -> exp.Expr:
        return python_literal(n.this) if isinstance(n, Bound) else n

    return node.transform(literal).sql(dialect=Deltamem)


def python_literal(value: Any) -> exp.Expr:
    if value is None:
        return exp.Null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, (int, float)):
        return exp.Literal.number(value)
    if isinstance(value, str):
        return exp.Literal.string(value)
    return exp.Literal.string(json.dumps(value))


class Params:
    """Parameters handed to ``execute``: a sequence for ``?`` (taken in order, across statements) and ``$n``
    (1-based), or a mapping for ``:name``."""

    def __init__(self, values: Sequence[Any] | Mapping[str, Any] | None):
        self.values = values if values is not None else ()
        self.next_positional = 0  # the ``?`` consumed so far

    def bind(self, tree: exp.Expr) -> exp.Expr:
        """A copy of ``tree`` with every placeholder replaced by its value (values never become SQL text)."""

        def replace(node: exp.Expr) -> exp.Expr:
            if isinstance(node, exp.Placeholder):
                name = node.args.get("this")  # ``:name``; a bare ``?`` has none
                if name:
                    return Bound(this=self._named(str(name)))
                return Bound(this=self._positional(None))
            if isinstance(node, exp.Parameter) and isinstance(node.this, exp.Literal) and not node.this.is_string:
                return Bound(this=self._positional(int(node.this.name)))
            return node

        return tree.transform(replace)

    def _positional(self, number: int | None) -> Any:
        if isinstance(self.values, Mapping):
            raise BindError("This statement uses positional parameters (? or $1); pass a list, not a dict")
        if number is None:
            number = self.next_positional = self.next_positional + 1
        if not 1 <= number <= len(self.values):
            raise BindError(f"Parameter {number} has no value: {len(self.values)} given")
        return self.values[number - 1]

    def _named(self, name: str) -> Any:
        if not isinstance(self.values, Mapping):
            raise BindError(f"This statement uses the named parameter :{name}; pass a dict")
        if name not in self.values:
            raise BindError(f"Parameter :{name} has no value." + did_you_mean(name, self.values))
        return self.values[name]


def constant(node: exp.Expr, *, what: str) -> Any:
    """The value of an expression that reads no column (INSERT values, LIMIT, options)."""
    return compile_expression(node, columns=(), where=what)({})


def columns_read(node: exp.Expr) -> list[str]:
    return list(dict.fromkeys(c.name for c in node.find_all(exp.Column)))


def compile_expression(node: exp.Expr, *, columns: Sequence[str] | None, where: str = "the input") -> Compiled:
    """A function of a row for ``node``; ``columns`` (when given) are the names it may read."""
    if columns is not None:
        for column in node.find_all(exp.Column):
            if column.name not in columns:
                if not columns:
                    raise SchemaError(f"{where} cannot read column {column.name!r}: use a constant or a parameter")
                raise SchemaError(f"Column {column.name!r} is not a column of {where}."
                                  + did_you_mean(column.name, columns))
    return _compile(node)


def is_true(value: Any) -> bool:
    return value is True


# --- the compiler -------------------------------------------------------------------------------------------------

_ARITHMETIC: dict[type, Callable[[Any, Any], Any]] = {
    exp.Add: operator.add, exp.Sub: operator.sub, exp.Mul: operator.mul, exp.Mod: operator.mod,
}
_COMPARISON: dict[type, Callable[[Any, Any], Any]] = {
    exp.EQ: operator.eq, exp.NEQ: operator.ne, exp.GT: operator.gt, exp.GTE: operator.ge,
    exp.LT: operator.lt, exp.LTE: operator.le,
}
_FUNCTIONS: dict[type, Callable[[Any], Any]] = {
    exp.Lower: lambda v: v.lower() if isinstance(v, str) else None,
    exp.Upper: lambda v: v.upper() if isinstance(v, str) else None,
    exp.Length: lambda v: len(v) if isinstance(v, str) else None,
    exp.Abs: lambda v: abs(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None,
}


def _safe(function: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        if any(a is None for a in args):
            return None
        try:
            return function(*args)
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):
            return None  # see the module invariant: a row never makes a stored filter raise

    return call


def _divide(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool) and not isinstance(b, bool):
        return int(a / b)  # integer division truncates toward zero, as in Postgres
    return a / b


def _compile(node: exp.Expr) -> Compiled:  # noqa: C901 - one dispatch over the node types we run
    if isinstance(node, Bound):
        value = node.this
        return lambda row: value
    if isinstance(node, exp.Literal):
        value = node.this if node.is_string else _number(node.this)
        return lambda row: value
    if isinstance(node, exp.Boolean):
        value = bool(node.this)
        return lambda row: value
    if isinstance(node, exp.Null):
        return lambda row: None
    if isinstance(node, exp.Column):
        name = node.name
        return lambda row: row.get(name)
    if isinstance(node, exp.Paren):
        return _compile(node.this)
    if isinstance(node, exp.Neg):
        inner = _compile(node.this)
        negate = _safe(operator.neg)
        return lambda row: negate(inner(row))
    if type(node) in _ARITHMETIC or isinstance(node, exp.Div):
        function = _safe(_divide if isinstance(node, exp.Div) else _ARITHMETIC[type(node)])
        left, right = _compile(node.this), _compile(node.expression)
        return lambda row: function(left(row), right(row))
    if isinstance(node, exp.DPipe):
        left, right = _compile(node.this), _compile(node.expression)
        concat = _safe(lambda a, b: f"{_text(a)}{_text(b)}")
        return lambda row: concat(left(row), right(row))
    if type(node) in _COMPARISON:
        compare = _safe(_COMPARISON[type(node)])
        left, right = _compile(node.this), _compile(node.expression)
        return lambda row: compare(left(row), right(row))
    if isinstance(node, exp.And):
        left, right = _compile(node.this), _compile(node.expression)
        return lambda row: _and(left(row), right(row))
    if isinstance(node, exp.Or):
        left, right = _compile(node.this), _compile(node.expression)
        return lambda row: _or(left(row), right(row))
    if isinstance(node, exp.Not):
        inner = _compile(node.this)
        return lambda row: _not(inner(row))
    if isinstance(node, exp.Is) and isinstance(node.expression, exp.Null):
        inner, negate = _compile(node.this), bool(node.args.get("negate"))
        return lambda row: (inner(row) is None) != negate
    if isinstance(node, exp.In) and not node.args.get("query") and not node.args.get("unnest"):
        return _compile_in(node)
    if isinstance(node, exp.Between):
        value, low, high = _compile(node.this), _compile(node.args["low"]), _compile(node.args["high"])
        ge, le = _safe(operator.ge), _safe(operator.le)
        return lambda row: _and(ge(value(row), low(row)), le(value(row), high(row)))
    if isinstance(node, (exp.Like, exp.ILike)):
        return _compile_like(node)
    if isinstance(node, exp.Coalesce):
        parts = [_compile(node.this), *(_compile(e) for e in node.expressions)]
        return lambda row: next((v for v in (p(row) for p in parts) if v is not None), None)
    if type(node) in _FUNCTIONS:
        inner, function = _compile(node.this), _safe(_FUNCTIONS[type(node)])
        return lambda row: function(inner(row))
    if isinstance(node, exp.Anonymous) and node.name.upper() in SEMANTIC_FUNCTIONS:
        raise NotSupported(f"{node.name.upper()}(...) is not supported here: semantic functions run in continuous "
                           "views (CREATE CONTINUOUS VIEW name AS SELECT ...), SEM_FILTER as a top-level AND term "
                           "of WHERE")
    raise NotSupported(f"The expression {node.sql()!r} ({type(node).__name__}) is not supported yet; use columns, "
                       "constants, + - * / % ||, comparisons, AND/OR/NOT, IS [NOT] NULL, IN, BETWEEN, LIKE, "
                       "LOWER, UPPER, LENGTH, ABS or COALESCE")


def _compile_in(node: exp.In) -> Compiled:
    value = _compile(node.this)
    options = [_compile(e) for e in node.expressions]
    negate = bool(node.args.get("negate"))

    def test(row: Row) -> Any:
        left = value(row)
        if left is None:
            return None
        result: Any = False
        for option in options:
            right = option(row)
            if right is None:
                result = None  # x IN (NULL, ...) is NULL unless some value matches
            elif left == right:
                result = True
                break
        return _not(result) if negate else result

    return test


def _compile_like(node: exp.Like | exp.ILike) -> Compiled:
    value, pattern = _compile(node.this), _compile(node.expression)
    flags = re.IGNORECASE if isinstance(node, exp.ILike) else 0
    negate = bool(node.args.get("negate"))

    def test(row: Row) -> Any:
        text, like = value(row), pattern(row)
        if not isinstance(text, str) or not isinstance(like, str):
            return None
        regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in like)
        matched = re.fullmatch(regex, text, flags | re.DOTALL) is not None
        return matched != negate

    return test


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _and(a: Any, b: Any) -> Any:
    if a is False or b is False:
        return False
    return True if a is True and b is True else None


def _or(a: Any, b: Any) -> Any:
    if a is True or b is True:
        return True
    return False if a is False and b is False else None


def _not(a: Any) -> Any:
    return None if a is None else not a if isinstance(a, bool) else None
