"""Plan the SELECT of a continuous view into a chain of Python API calls.

    plan_relation(parse("SELECT id, SEM_MAP('Sum up {text}') AS gist FROM docs WHERE year > 2020")[0].expression, cat)
    # RelationPlan(head=Source('table', 'docs'), steps=[sql_where 'year > 2020', sem_map out='gist', sql_project])

How SQL maps onto operators, in the order the chain applies them:

=====================================  ==========================================================================
``FROM t`` / ``FROM v`` / subquery     the table, the view, or the subquery's own chain
``FROM SEM_SEARCH(t, 'q', k)``         ``t.sem_search('q', k=k, column=...)`` (column: 4th argument, else ``text``)
``FROM SEM_GRAPH(t, '{text}')``        ``t.sem_graph('{text}', synonym_threshold=..., max_tokens=...)``: the graph's
                                       rows (``deltamem.operators.graph``)
``JOIN u ON SEM_MATCH('{a:left}..')``  ``t.sem_join(u, ...)``; other ON terms filter the joined rows
``WHERE`` plain terms                  one ``sql_where`` (``deltamem.sql.operators``), before any model call
``WHERE SEM_FILTER('...')``            ``sem_filter``, one per top-level AND term, in the order written
``SEM_MAP('...') AS c``                ``sem_map(out='c')``
``SEM_EXTRACT('...', 'what') AS c``    ``sem_extract(fields={'c': 'what'})``; terms with the same template share
                                       one call per row
``SEM_AGG('...') [AS c] GROUP BY g``   ``sem_agg(out='c', group_by='g')``
``ORDER BY SEM_RANK('...') LIMIT k``   ``sem_topk(k=k)``; placed before the maps when it reads none of their
                                       columns, so only the top k rows are mapped (the result is the same)
select list naming columns             one ``sql_project`` at the end, to exactly the listed columns; ``*`` (with
                                       or without semantic terms) keeps every column, ``rank`` and ``score`` too;
                                       a plain ``SELECT * FROM t`` is a projection onto all of t's columns
=====================================  ==========================================================================

Invariant: planning reads the catalog and never writes; each step is checked against the columns it receives by the
operator class that will run it, so a plan that comes back is one the API accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from deltamem.errors import SchemaError, did_you_mean
from deltamem.operators.catalog import CHAIN_OPERATORS
from deltamem.operators.join import SemJoin, right_names
from deltamem.operators.template import Template
from deltamem.sql.catalog import Catalog, Source
from deltamem.sql.errors import NotSupported
from deltamem.sql.evaluate import compile_expression, constant, to_sql
from deltamem.sql.operators import register

register()


@dataclass(frozen=True)
class JoinHead:
    """``left.sem_join(right, instruction, **options)``."""

    left: Source
    right: Source
    instruction: str
    options: dict[str, Any]


@dataclass(frozen=True)
class Step:
    """One chained operator: ``relation.<op>(instruction, **options)`` (the SQL operators via ``chain``)."""

    op: str
    instruction: str
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"{self.op}({self.instruction!r}{options})"


@dataclass
class RelationPlan:
    """A view's relation: its head, the chain of steps after it, and the columns that come out."""

    head: Source | JoinHead
    steps: list[Step]
    columns: tuple[str, ...]


class _Scope:
    """Which output column a (possibly qualified) column reference means."""

    def __init__(self, columns: tuple[str, ...], qualified: dict[str, dict[str, str]], ambiguous: set[str],
                 where: str):
        self.columns = columns
        self.where = where  # what the FROM clause reads, for messages
        self.qualified = qualified  # qualifier (table name or alias) -> {its column: output column}
        self.ambiguous = ambiguous  # unqualified names that both join sides have

    def resolve(self, column: exp.Column) -> str:
        name, qualifier = column.name, column.table
        if qualifier:
            if qualifier not in self.qualified:
                raise SchemaError(f"Unknown table or alias {qualifier!r} in {column.sql()!r}."
                                  + did_you_mean(qualifier, self.qualified))
            names = self.qualified[qualifier]
            if name not in names:
                raise SchemaError(f"Column {name!r} is not a column of {qualifier!r}." + did_you_mean(name, names))
            return names[name]
        if name in self.ambiguous:
            sides = " or ".join(f"{q}.{name}" for q, names in self.qualified.items() if name in names)
            raise SchemaError(f"Column {name!r} is ambiguous: both sides of the join have it; write {sides}")
        if name not in self.columns:
            raise SchemaError(f"Column {name!r} is not a column of {self.where}." + did_you_mean(name, self.columns))
        return name

    def rewrite(self, node: exp.Expr) -> exp.Expr:
        """``node`` with every column reference replaced by the bare output column it means."""
        return node.transform(lambda n: exp.column(self.resolve(n)) if isinstance(n, exp.Column) else n)


class _Chain:
    """The relation being planned: head, steps and current columns, each step checked as it is added."""

    def __init__(self, head: Source | JoinHead, columns: tuple[str, ...], where: str):
        self.head, self.columns, self.where, self.steps = head, columns, where, []

    def push(self, step: Step) -> None:
        operator = CHAIN_OPERATORS[step.op](f"{len(self.steps) + 2}:{step.op}", step.instruction, **step.options)
        operator.check_columns(self.columns, where=self.where)
        self.columns = tuple(operator.output_columns(self.columns))
        self.steps.append(step)


def plan_relation(select: exp.Expr, catalog: Catalog) -> RelationPlan:
    """The chain of operators a continuous view's SELECT stands for (see the module table)."""
    if not isinstance(select, exp.Select):
        raise NotSupported(f"{type(select).__name__.upper()} in a continuous view is not supported yet; "
                           "write one SELECT")
    _reject_unsupported(select)
    chain, scope, on_terms = _plan_from(select, catalog)
    plain: list[exp.Expr] = list(on_terms)
    filters: list[exp.Anonymous] = []
    where = select.args.get("where")
    for term in _conjuncts(where.this) if where else []:
        if _is_call(term, "SEM_FILTER"):
            filters.append(term)
        elif any(_is_call(n, "SEM_FILTER") for n in term.find_all(exp.Anonymous)):
            raise NotSupported(f"SEM_FILTER under OR or NOT is not supported yet ({term.sql()!r}); make each "
                               "SEM_FILTER a top-level AND term of WHERE")
        else:
            plain.append(term)
    if plain:
        condition = exp.and_(*(scope.rewrite(t) for t in plain)) if len(plain) > 1 else scope.rewrite(plain[0])
        compile_expression(condition, columns=chain.columns, where=chain.where)  # unsupported syntax fails here
        chain.push(Step("sql_where", to_sql(condition)))
    for term in filters:
        (template,), options = _arguments(term, ("template",), {"default": bool, "max_tokens": int})
        chain.push(Step("sem_filter", _template(template), options))
    base = chain.columns

    items = select.expressions
    aggregates = [i for i in items if _is_call(_unalias(i), "SEM_AGG")]
    rank = _rank(select)
    if aggregates:
        _plan_aggregate(select, chain, scope, aggregates)
    else:
        if select.args.get("group"):
            raise NotSupported("GROUP BY needs SEM_AGG(...) in the select list")
        _plan_rowwise(items, chain, scope, rank)
    if aggregates and rank is not None:
        chain.push(rank)
    _plan_projection(items, chain, scope, base)
    if not chain.steps and not isinstance(chain.head, JoinHead):
        # ``SELECT * FROM t``: a copy of t, kept by a projection onto every column (a view is a chain of operators)
        chain.push(Step("sql_project", ", ".join(chain.columns)))
    return RelationPlan(chain.head, chain.steps, chain.columns)


# --- FROM --------------------------------------------------------------------------------------------------------


def _plan_from(select: exp.Select, catalog: Catalog) -> tuple[_Chain, _Scope, list[exp.Expr]]:
    source = select.args.get("from_")
    if source is None:
        raise NotSupported("A continuous view needs FROM: a table, a view, a subquery, SEM_SEARCH(...) or "
                           "SEM_GRAPH(...)")
    node = source.this
    joins = select.args.get("joins") or []
    if len(joins) > 1:
        raise NotSupported("A continuous view joins two relations at most; join more through views over views")
    if joins:
        return _plan_join(node, joins[0], catalog)
    if isinstance(node, exp.Subquery):
        inner = plan_relation(node.this, catalog)
        chain = _Chain(inner.head, inner.columns, "the subquery")
        chain.steps = list(inner.steps)
        alias = node.alias_or_name
        scope = _Scope(chain.columns, {alias: {c: c for c in chain.columns}} if alias else {}, set(), chain.where)
        return chain, scope, []
    if isinstance(node, exp.Table) and isinstance(node.this, exp.Anonymous) and node.this.name.upper() == "SEM_SEARCH":
        return _plan_search(node, catalog)
    if isinstance(node, exp.Table) and isinstance(node.this, exp.Anonymous) and node.this.name.upper() == "SEM_GRAPH":
        return _plan_graph(node, catalog)
    table = _table_source(node, catalog)
    columns = catalog.columns(table)
    chain = _Chain(table, columns, f'{table.kind} "{table.name}"')
    names = {c: c for c in columns}
    return chain, _Scope(columns, {table.name: names, node.alias_or_name: names}, set(), chain.where), []


def _plan_graph(node: exp.Table, catalog: Catalog) -> tuple[_Chain, _Scope, list[exp.Expr]]:
    call = node.this
    positional, options = _arguments(call, ("source", "passage"), {"synonym_threshold": float, "max_tokens": int},
                                     constants=False)
    if not isinstance(positional[0], exp.Column):
        raise NotSupported(f"SEM_GRAPH's first argument names a table or view, not {positional[0].sql()!r}")
    source = catalog.resolve(positional[0].name)
    chain = _Chain(source, catalog.columns(source), f'{source.kind} "{source.name}"')
    chain.push(Step("sem_graph", _template(constant(positional[1], what="SEM_GRAPH's passage template")), options))
    names = {c: c for c in chain.columns}
    return chain, _Scope(chain.columns, {source.name: names, node.alias_or_name: names}, set(), chain.where), []


def _table_source(node: exp.Expr, catalog: Catalog) -> Source:
    if not isinstance(node, exp.Table) or not isinstance(node.this, exp.Identifier):
        raise NotSupported(f"{node.sql()!r} is not supported here; name a table or a view")
    if node.args.get("version"):
        raise NotSupported("AS OF in a continuous view is not supported: a view follows its sources' latest version")
    return catalog.resolve(node.name)


def _plan_search(node: exp.Table, catalog: Catalog) -> tuple[_Chain, _Scope, list[exp.Expr]]:
    call = node.this
    positional, options = _arguments(call, ("source", "query", "k", "column"), {"column": str}, constants=False,
                                     required=3)
    if not isinstance(positional[0], exp.Column):
        raise NotSupported(f"SEM_SEARCH's first argument names a table or view, not {positional[0].sql()!r}")
    source = catalog.resolve(positional[0].name)
    columns = catalog.columns(source)
    query = constant(positional[1], what="SEM_SEARCH's query")
    k = constant(positional[2], what="SEM_SEARCH's k")
    column = constant(positional[3], what="SEM_SEARCH's column") if len(positional) > 3 else options.get("column")
    if column is None:
        if "text" not in columns:
            raise SchemaError(f'SEM_SEARCH over "{source.name}" needs the column to search, e.g. '
                              f"SEM_SEARCH({source.name}, 'query', 5, '{columns[-1]}'); it has no column 'text'")
        column = "text"
    chain = _Chain(source, columns, f'{source.kind} "{source.name}"')
    chain.push(Step("sem_search", query, {"k": k, "column": column}))
    names = {c: c for c in chain.columns}
    return chain, _Scope(chain.columns, {source.name: names, node.alias_or_name: names}, set(), chain.where), []


def _plan_join(node: exp.Expr, join: exp.Join, catalog: Catalog) -> tuple[_Chain, _Scope, list[exp.Expr]]:
    if join.args.get("kind") or join.side or join.args.get("using"):
        raise NotSupported(f"{join.sql()!r}: only an inner JOIN ... ON SEM_MATCH('...') is supported")
    left, right = _table_source(node, catalog), _table_source(join.this, catalog)
    on = join.args.get("on")
    terms = _conjuncts(on) if on is not None else []
    matches = [t for t in terms if _is_call(t, "SEM_MATCH")]
    if len(matches) != 1:
        raise NotSupported("A JOIN needs exactly one ON SEM_MATCH('{column:left} ... {column:right}') term")
    (template,), options = _arguments(matches[0], ("template",), {"candidates": int, "max_tokens": int})
    left_columns, right_columns = catalog.columns(left), catalog.columns(right)
    head = JoinHead(left, right, template, options)
    operator = SemJoin("1:sem_join", instruction=template, **options)
    where = f'the join of {left.kind} "{left.name}" and {right.kind} "{right.name}"'
    operator.check_columns_by_role({"left": left_columns, "right": right_columns}, where=where)
    columns = operator.output_columns_by_role({"left": left_columns, "right": right_columns})
    renamed = right_names(left_columns, right_columns)
    qualified = {node.alias_or_name: {c: c for c in left_columns}, join.this.alias_or_name: renamed}
    ambiguous = set(left_columns) & set(right_columns)
    rest = [t for t in terms if t is not matches[0]]
    return _Chain(head, columns, where), _Scope(columns, qualified, ambiguous, where), rest


# --- select list ---------------------------------------------------------------------------------------------------


def _plan_rowwise(items: list[exp.Expr], chain: _Chain, scope: _Scope, rank: Step | None) -> None:
    maps: list[Step] = []
    extracts: dict[str, dict[str, str]] = {}  # template -> {field: description}
    max_tokens: dict[str, int] = {}
    for item in items:
        call = _unalias(item)
        if _is_call(call, "SEM_MAP"):
            (template,), options = _arguments(call, ("template",), {"max_tokens": int})
            maps.append(Step("sem_map", _template(template), {"out": _alias(item, "SEM_MAP"), **options}))
        elif _is_call(call, "SEM_EXTRACT"):
            (template, description), options = _arguments(call, ("template", "description"), {"max_tokens": int})
            template = _template(template)
            extracts.setdefault(template, {})[_alias(item, "SEM_EXTRACT")] = description
            if "max_tokens" in options:
                max_tokens[template] = options["max_tokens"]
        elif isinstance(call, exp.Anonymous) and call.name.upper().startswith("SEM_"):
            raise NotSupported(f"{call.name.upper()}(...) is not supported in the select list; use SEM_MAP, "
                               "SEM_EXTRACT or SEM_AGG (SEM_FILTER goes in WHERE, SEM_RANK in ORDER BY)")
        elif not isinstance(call, (exp.Column, exp.Star)):
            raise NotSupported(f"The computed column {item.sql()!r} is not supported in a continuous view yet; "
                               "select columns, SEM_MAP(...) or SEM_EXTRACT(...)")
    steps = maps + [Step("sem_extract", t, {"fields": f, **({"max_tokens": max_tokens[t]} if t in max_tokens else {})})
                    for t, f in extracts.items()]
    added = {c for s in steps for c in (s.options.get("fields") or {s.options["out"]: None})}
    if rank is not None and not set(Template(rank.instruction).columns) & added:
        chain.push(rank)  # before the maps: they run on the top k rows only (see the module table)
        rank = None
    for step in steps:
        chain.push(step)
    if rank is not None:
        chain.push(rank)


def _plan_aggregate(select: exp.Select, chain: _Chain, scope: _Scope, aggregates: list[exp.Expr]) -> None:
    if len(aggregates) > 1:
        raise NotSupported("One SEM_AGG per view is supported; make one view per digest")
    group = select.args.get("group")
    keys = group.expressions if group else []
    if len(keys) > 1 or (keys and not isinstance(keys[0], exp.Column)):
        raise NotSupported("GROUP BY takes one column with SEM_AGG")
    group_by = scope.resolve(keys[0]) if keys else None
    (template,), options = _arguments(_unalias(aggregates[0]), ("template",),
                                      {"fanout": int, "fold": bool, "max_tokens": int})
    out = aggregates[0].alias if isinstance(aggregates[0], exp.Alias) else "digest"
    for item in select.expressions:
        if item is aggregates[0]:
            continue
        call = _unalias(item)
        if not isinstance(call, exp.Column) or call.name not in (group_by, "num_rows"):
            raise NotSupported(f"{item.sql()!r} next to SEM_AGG: select the GROUP BY column, num_rows and the "
                               "digest; compute other columns in a view first")
    chain.push(Step("sem_agg", _template(template), {"out": out, "group_by": group_by, **options}))


def _plan_projection(items: list[exp.Expr], chain: _Chain, scope: _Scope, base: tuple[str, ...]) -> None:
    if any(isinstance(i, exp.Star) for i in items) and all(isinstance(_unalias(i), (exp.Star, exp.Anonymous))
                                                          for i in items):
        return  # ``*`` keeps every column, including those the operators add (rank, score, num_rows)
    pairs: list[tuple[str, str]] = []
    for item in items:
        call = _unalias(item)
        if isinstance(call, exp.Star):
            pairs += [(c, c) for c in base]
        elif isinstance(call, exp.Column):
            plain = not call.table and call.name not in scope.ambiguous and call.name in chain.columns
            source = call.name if plain else scope.resolve(call)  # resolve() names the fault when there is one
            pairs.append((item.alias_or_name if isinstance(item, exp.Alias) else source, source))
        else:
            name = item.alias if isinstance(item, exp.Alias) else "digest"
            pairs.append((name, name))
    if pairs == [(c, c) for c in chain.columns]:
        return  # the identity: nothing to project
    text = ", ".join(source if out == source else f"{source} AS {out}" for out, source in pairs)
    chain.push(Step("sql_project", text))


# --- helpers -------------------------------------------------------------------------------------------------------


def _rank(select: exp.Select) -> Step | None:
    order, limit = select.args.get("order"), select.args.get("limit")
    if order is None:
        if limit is not None:
            raise NotSupported("LIMIT in a continuous view needs ORDER BY SEM_RANK('...'): a view's rows are "
                               "ordered by key")
        return None
    terms = order.expressions
    if len(terms) != 1 or not _is_call(terms[0].this, "SEM_RANK"):
        raise NotSupported("ORDER BY in a continuous view takes one SEM_RANK('...') (with LIMIT k); a view's rows "
                           "are ordered by key")
    if terms[0].args.get("desc"):
        raise NotSupported("SEM_RANK ranks best first; drop DESC (write the criterion the other way round)")
    if limit is None:
        raise NotSupported("ORDER BY SEM_RANK('...') needs LIMIT k: the view keeps the k best rows")
    (template,), options = _arguments(terms[0].this, ("template",), {"max_tokens": int})
    k = constant(limit.expression, what="LIMIT")
    return Step("sem_topk", template, {"k": k, **options})


def _reject_unsupported(select: exp.Select) -> None:
    for arg, what in (("distinct", "DISTINCT"), ("having", "HAVING"), ("offset", "OFFSET"), ("with_", "WITH"),
                      ("windows", "WINDOW"), ("qualify", "QUALIFY")):
        if select.args.get(arg):
            raise NotSupported(f"{what} in a continuous view is not supported yet")


def _conjuncts(node: exp.Expr) -> list[exp.Expr]:
    node = node.unnest()
    if isinstance(node, exp.And):
        return _conjuncts(node.this) + _conjuncts(node.expression)
    return [node]


def _is_call(node: exp.Expr, name: str) -> bool:
    return isinstance(node, exp.Anonymous) and node.name.upper() == name


def _unalias(item: exp.Expr) -> exp.Expr:
    return item.this if isinstance(item, exp.Alias) else item


def _alias(item: exp.Expr, function: str) -> str:
    if not isinstance(item, exp.Alias):
        raise SchemaError(f"{function}(...) needs AS name: the column it adds, e.g. {function}('...') AS summary")
    return item.alias


def _template(template: Any) -> str:
    if not isinstance(template, str):
        raise SchemaError(f"A semantic function's first argument is a text template like '{{abstract}} is about X'"
                          f", not {template!r}")
    return template


def _arguments(call: exp.Anonymous, names: tuple[str, ...], options: dict[str, type], *, constants: bool = True,
               required: int | None = None) -> tuple[list[Any], dict[str, Any]]:
    """Positional arguments (as values, or nodes with ``constants=False``) and ``name => value`` options."""
    function = call.name.upper()
    positional: list[Any] = []
    named: dict[str, Any] = {}
    for argument in call.expressions:
        if isinstance(argument, (exp.Kwarg, exp.PropertyEQ)):
            name = argument.this.name.lower()
            if name not in options:
                raise SchemaError(f"{function} has no option {name!r}." + did_you_mean(name, options))
            value = constant(argument.expression, what=f"{function}'s option {name}")
            if not isinstance(value, options[name]) or (options[name] is int and isinstance(value, bool)):
                raise SchemaError(f"{function}'s option {name} takes a {options[name].__name__}, not {value!r}")
            named[name] = value
        elif named:
            raise SchemaError(f"{function}: positional arguments come before name => value options")
        else:
            positional.append(constant(argument, what=f"{function}'s arguments") if constants else argument)
    required = len(names) if required is None else required
    if not required <= len(positional) <= len(names):
        expected = ", ".join(names[:required]) + "".join(f"[, {n}]" for n in names[required:])
        raise SchemaError(f"{function} takes ({expected}), got {len(positional)} arguments")
    return positional, named
