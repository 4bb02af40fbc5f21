"""Turn one parsed statement into a plan: a small record of the Python API calls that carry it out.

    plan_statement(parse("INSERT INTO papers (id, title) VALUES (?, ?)")[0].expression, Catalog(db), Params([1, "T"]))
    # Insert(table='papers', rows=[{'id': 1, 'title': 'T'}], on_conflict='error', stream=False)

Invariant: planning only reads the catalog. Every name, column, option and parameter is checked here, so the executor
starts writing only with a plan that names existing objects; parameters are bound into the syntax tree as values and
never become SQL text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlglot import exp

from deltamem.changes import ColumnType
from deltamem.errors import AlreadyExists, ConfigError, SchemaError, did_you_mean
from deltamem.sql.catalog import SEQUENCE_COLUMN, Catalog, Source, refuse_internal
from deltamem.sql.copy_from import CopyPlan, plan_copy
from deltamem.sql.dialect import ContinuousView, ExplainView, LLMGenerate, RefreshView, ShowObjects, Subscribe
from deltamem.sql.drop import DropPlan, plan_drop
from deltamem.sql.errors import NotSupported
from deltamem.sql.evaluate import Compiled, Params, compile_expression, constant
from deltamem.sql.relations import RelationPlan, plan_relation

# SQL type names -> deltamem column types. TIMESTAMP holds ISO-8601 text; an epoch-seconds TTL column is an INT.
TYPES: dict[str, ColumnType] = {
    **dict.fromkeys(("TEXT", "VARCHAR", "CHAR", "NCHAR", "NVARCHAR", "BPCHAR", "NAME", "TIMESTAMP", "TIMESTAMPTZ",
                     "DATE", "UUID"), ColumnType.TEXT),
    **dict.fromkeys(("INT", "TINYINT", "SMALLINT", "BIGINT", "INTEGER", "SERIAL", "BIGSERIAL"), ColumnType.INT),
    **dict.fromkeys(("FLOAT", "DOUBLE", "REAL", "DECIMAL", "NUMERIC", "DOUBLE PRECISION"), ColumnType.FLOAT),
    "BOOLEAN": ColumnType.BOOL,
    **dict.fromkeys(("JSON", "JSONB"), ColumnType.JSON),
}
TABLE_OPTIONS = ("ttl", "ttl_column", "expire")
GENERATE_OPTIONS = ("prompt", "context", "data_source", "retrieve", "strategy", "refresh", "question", "document",
                    "out", "max_tokens", "shadow", "append_budget", "partition", "reuse", "max_error", "reuse_check",
                    "decompose", "shards", "k")


@dataclass(frozen=True)
class CreateTable:
    name: str
    key: str
    columns: dict[str, str]
    options: dict[str, Any]  # ttl, ttl_column, expire
    stream: bool  # a stream: rows are events; with ``implicit_key`` its key is a sequence the executor assigns
    implicit_key: bool
    if_not_exists: bool


@dataclass(frozen=True)
class CreateView:
    name: str
    relation: RelationPlan
    if_not_exists: bool


@dataclass(frozen=True)
class CreateGenerate:
    name: str
    context: str
    data_source: str
    options: dict[str, Any]  # db.generate's keyword arguments
    if_not_exists: bool


@dataclass(frozen=True)
class Insert:
    table: str
    rows: list[dict[str, Any]]
    on_conflict: str  # "error" | "nothing"
    stream: bool


@dataclass(frozen=True)
class Update:
    table: str
    key: str
    assignments: dict[str, Compiled]
    where: Compiled | None


@dataclass(frozen=True)
class Delete:
    table: str
    key: str
    where: Compiled | None


@dataclass(frozen=True)
class Query:
    source: Source
    as_of: int | None
    columns: list[tuple[str, Compiled]]  # (output name, value); empty with ``count``
    where: Compiled | None = None
    order: list[tuple[Compiled, bool]] = field(default_factory=list)  # (value, descending)
    limit: int | None = None
    offset: int = 0
    count: bool = False  # SELECT COUNT(*)
    star: bool = False  # the select list has ``*``: a view's ``_error`` column is shown when a row carries one


@dataclass(frozen=True)
class SubscribePlan:
    view: str
    as_of: int | None


@dataclass(frozen=True)
class ExplainPlan:
    view: str
    key: Any  # None: the operator graph


@dataclass(frozen=True)
class Show:
    what: str  # TABLES | VIEWS | USAGE


@dataclass(frozen=True)
class RefreshPlan:
    view: str


Plan = (CreateTable | CreateView | CreateGenerate | DropPlan | Insert | Update | Delete | CopyPlan | Query
        | SubscribePlan | ExplainPlan | Show | RefreshPlan)


def plan_statement(expression: exp.Expr, catalog: Catalog, params: Params, *, base_dir: Path | None = None,
                   read_files: bool = True) -> Plan:
    """The plan for one statement, parameters bound; raises a ``DeltamemError`` naming what is wrong. ``base_dir``
    is where COPY's relative paths start (default: the working directory); ``read_files=False`` refuses COPY."""
    tree = params.bind(expression)
    # Every table the statement names, before any lookup: CREATE and DROP ... IF EXISTS would otherwise reach an
    # internal name without resolving it (the catalog's resolve refuses the names that are not Table nodes).
    for table in tree.find_all(exp.Table):
        refuse_internal(table.name)
    if isinstance(tree, exp.Create):
        return _create_table(tree, catalog)
    if isinstance(tree, ContinuousView):
        return _create_view(tree, catalog)
    if isinstance(tree, exp.Drop):
        return plan_drop(tree, catalog)
    if isinstance(tree, exp.Copy):
        return plan_copy(tree, catalog, base_dir=base_dir, read_files=read_files)
    if isinstance(tree, exp.Insert):
        return _insert(tree, catalog)
    if isinstance(tree, exp.Update):
        return _update(tree, catalog)
    if isinstance(tree, exp.Delete):
        return _delete(tree, catalog)
    if isinstance(tree, exp.Select):
        return _query(tree, catalog)
    if isinstance(tree, Subscribe):
        return SubscribePlan(catalog.resolve(tree.this.name, kinds=("view",)).name, _as_of(tree.args.get("version")))
    if isinstance(tree, ExplainView):
        view = catalog.resolve(tree.this.name, kinds=("view",)).name
        key = tree.args.get("key")
        return ExplainPlan(view, None if key is None else constant(key, what="EXPLAIN's KEY"))
    if isinstance(tree, ShowObjects):
        return Show(tree.name)
    if isinstance(tree, RefreshView):
        return RefreshPlan(catalog.resolve(tree.this.name, kinds=("view",)).name)
    raise NotSupported(f"{type(tree).__name__.upper()} statements are not supported yet")


# --- DDL -----------------------------------------------------------------------------------------------------------


def _create_table(tree: exp.Create, catalog: Catalog) -> CreateTable:
    kind = tree.kind
    if kind == "VIEW":
        raise NotSupported("deltamem views are continuous: write CREATE CONTINUOUS VIEW name AS ...")
    schema = tree.this
    if tree.expression is not None or not isinstance(schema, exp.Schema):
        raise NotSupported(f"CREATE {kind} needs a column list; CREATE {kind} ... AS SELECT is not supported yet")
    name = schema.this.name
    if catalog.exists(name) and not tree.args.get("exists"):
        raise AlreadyExists(f'"{name}" already exists; pick another name, or write CREATE {kind} IF NOT EXISTS')
    columns: dict[str, str] = {}
    keys: list[str] = []
    for item in schema.expressions:
        if isinstance(item, exp.PrimaryKey):
            keys += [e.name for e in item.expressions]
            continue
        if not isinstance(item, exp.ColumnDef):
            raise NotSupported(f"{item.sql()!r} in CREATE {kind} is not supported yet")
        column = item.name
        if column in columns:
            raise SchemaError(f"Column {column!r} is declared twice")
        type_name = item.args["kind"].sql(dialect="postgres").upper().split("(")[0] if item.args.get("kind") else ""
        if type_name not in TYPES:
            raise SchemaError(f"Column {column!r} has type {type_name or 'none'}, which deltamem does not know."
                              + did_you_mean(type_name, TYPES))
        columns[column] = TYPES[type_name].value
        for constraint in item.args.get("constraints") or []:
            if isinstance(constraint.kind, exp.PrimaryKeyColumnConstraint):
                keys.append(column)
            elif not isinstance(constraint.kind, exp.NotNullColumnConstraint):
                raise NotSupported(f"The column constraint {constraint.sql()!r} is not supported yet")
    if len(keys) > 1:
        raise NotSupported(f"Composite primary keys ({', '.join(keys)}) are not supported yet; key by one column")
    for key in keys:
        if key not in columns:
            raise SchemaError(f"PRIMARY KEY column {key!r} is not declared." + did_you_mean(key, columns))
    stream = kind == "STREAM"
    implicit = stream and not keys
    if not keys and not stream:
        raise SchemaError(f'Table "{name}" needs a PRIMARY KEY column (deltamem keys every row), e.g. id TEXT '
                          "PRIMARY KEY; or CREATE STREAM for events keyed by an implicit sequence")
    if implicit:
        if SEQUENCE_COLUMN in columns:
            raise SchemaError(f'Stream "{name}" has a column {SEQUENCE_COLUMN!r} but no PRIMARY KEY; make it the key, '
                              f"or rename it: {SEQUENCE_COLUMN!r} is the implicit key's name")
        columns = {SEQUENCE_COLUMN: ColumnType.INT.value, **columns}
        keys = [SEQUENCE_COLUMN]
    options = _options(tree.args.get("properties"), TABLE_OPTIONS, f"CREATE {kind}")
    return CreateTable(name, keys[0], columns, options, stream, implicit, bool(tree.args.get("exists")))


def _create_view(tree: ContinuousView, catalog: Catalog) -> CreateView | CreateGenerate:
    name = tree.this.name
    exists = bool(tree.args.get("exists"))
    if catalog.exists(name) and not exists:
        raise AlreadyExists(f'"{name}" already exists; pick another name, or write CREATE CONTINUOUS VIEW IF NOT '
                            "EXISTS")
    body = tree.expression
    if not isinstance(body, LLMGenerate):
        if tree.args.get("properties"):
            raise ConfigError("A SELECT view takes its options in the SEM_* calls (e.g. SEM_MATCH('...', "
                              "candidates => 5)); WITH (...) is for LLM_GENERATE and tables")
        return CreateView(name, plan_relation(body, catalog), exists)
    arguments = _options(exp.Properties(expressions=body.expressions), GENERATE_OPTIONS, "LLM_GENERATE", tables=True)
    options = _options(tree.args.get("properties"), GENERATE_OPTIONS[3:], "LLM_GENERATE's WITH")
    for option in set(arguments) & set(options):
        raise ConfigError(f"LLM_GENERATE option {option!r} is given twice (in the call and in WITH)")
    options.update(arguments)
    for required in ("prompt", "context", "data_source"):
        if required not in options:
            raise SchemaError(f"LLM_GENERATE needs {required.upper()} = ..., e.g. " + {
                "prompt": "PROMPT = 'Answer from the documents.'", "context": "CONTEXT = STREAM(questions)",
                "data_source": "DATA_SOURCE = STREAM(docs)"}[required])
    roles = {}
    for role in ("context", "data_source"):
        table = options.pop(role)
        if not isinstance(table, Source):
            raise SchemaError(f"LLM_GENERATE's {role.upper()} names a table or stream, e.g. STREAM(docs); got "
                              f"{table!r}")
        roles[role] = catalog.resolve(table.name, kinds=("table",)).name
    return CreateGenerate(name, roles["context"], roles["data_source"], options, exists)


def _options(properties: exp.Expr | None, allowed: tuple[str, ...], where: str, *,
             tables: bool = False) -> dict[str, Any]:
    """``name = value`` options as a dict; a value is a constant, a bare word (text), or with ``tables``
    ``STREAM(t)`` / ``t`` (a ``Source``)."""
    found: dict[str, Any] = {}
    for prop in properties.expressions if properties is not None else []:
        if not isinstance(prop, exp.Property):
            raise NotSupported(f"{prop.sql()!r} in {where} is not supported; write name = value")
        name = prop.name.lower()
        if name not in allowed:
            raise ConfigError(f"{where} has no option {name!r}." + did_you_mean(name, allowed))
        if name in found:
            raise ConfigError(f"{where} option {name!r} is given twice")
        value = prop.args.get("value")
        if tables and isinstance(value, exp.Anonymous) and value.name.upper() == "STREAM":
            if len(value.expressions) != 1 or not isinstance(value.expressions[0], exp.Column):
                raise SchemaError(f"STREAM(...) takes one table name, got {value.sql()!r}")
            found[name] = Source("table", value.expressions[0].name)
        elif tables and isinstance(value, exp.Column) and name in ("context", "data_source"):
            found[name] = Source("table", value.name)
        elif isinstance(value, (exp.Var, exp.Column)):
            found[name] = value.name  # a bare word, e.g. strategy = auto
        else:
            found[name] = constant(value, what=f"{where} option {name}")
    return found


# --- writes --------------------------------------------------------------------------------------------------------


def _insert(tree: exp.Insert, catalog: Catalog) -> Insert:
    target = tree.this
    table_node = target.this if isinstance(target, exp.Schema) else target
    name = catalog.resolve(table_node.name, kinds=("table",)).name
    definition = catalog.table_def(name)
    if definition.columns is None and isinstance(target, exp.Schema):
        declared = [c.name for c in target.expressions]  # a Python-API table without columns: the first row fixes them
    else:
        declared = list(catalog.columns(Source("table", name)))
    stream = name in catalog.streams()
    if isinstance(target, exp.Schema):
        columns = [c.name for c in target.expressions]
    else:  # no column list: the declared order, without a stream's implicit key
        columns = [c for c in declared if not (stream and c == definition.key == SEQUENCE_COLUMN)]
    for column in columns:
        if column not in declared:
            raise SchemaError(f'Table "{name}" has no column {column!r}.' + did_you_mean(column, declared))
    if len(set(columns)) != len(columns):
        raise SchemaError("INSERT names a column twice")
    values = tree.expression
    if not isinstance(values, exp.Values):
        raise NotSupported("INSERT ... SELECT is not supported yet; INSERT ... VALUES (...), (...)")
    rows = []
    for position, row in enumerate(values.expressions, 1):
        cells = row.expressions if isinstance(row, exp.Tuple) else [row]
        if len(cells) != len(columns):
            raise SchemaError(f"INSERT row {position} has {len(cells)} values for {len(columns)} columns "
                              f"({', '.join(columns)})")
        rows.append({c: constant(v, what=f"INSERT row {position}") for c, v in zip(columns, cells, strict=True)})
    conflict = tree.args.get("conflict")
    on_conflict = "error"
    if conflict is not None:
        action = conflict.args.get("action")
        if action is None or action.name.upper() != "DO NOTHING":
            raise NotSupported("ON CONFLICT ... DO UPDATE is not supported yet; use ON CONFLICT DO NOTHING, or UPDATE")
        on_conflict = "nothing"
    if tree.args.get("returning"):
        raise NotSupported("INSERT ... RETURNING is not supported yet")
    return Insert(name, rows, on_conflict, stream)


def _update(tree: exp.Update, catalog: Catalog) -> Update:
    name = catalog.resolve(tree.this.name, kinds=("table",)).name
    if tree.args.get("from_") or tree.args.get("returning"):
        raise NotSupported("UPDATE ... FROM / RETURNING is not supported yet")
    definition = catalog.table_def(name)
    columns = list(catalog.columns(Source("table", name)))
    where = f'table "{name}"'
    assignments: dict[str, Compiled] = {}
    for assignment in tree.expressions:
        if not isinstance(assignment, exp.EQ) or not isinstance(assignment.this, exp.Column):
            raise NotSupported(f"{assignment.sql()!r}: write SET column = value")
        column = assignment.this.name
        if column not in columns:
            raise SchemaError(f'Table "{name}" has no column {column!r}.' + did_you_mean(column, columns))
        assignments[column] = compile_expression(assignment.expression, columns=columns, where=where)
    return Update(name, definition.key, assignments, _where(tree, columns, where))


def _delete(tree: exp.Delete, catalog: Catalog) -> Delete:
    name = catalog.resolve(tree.this.name, kinds=("table",)).name
    if tree.args.get("using") or tree.args.get("returning"):
        raise NotSupported("DELETE ... USING / RETURNING is not supported yet")
    definition = catalog.table_def(name)
    columns = list(definition.columns or {})
    return Delete(name, definition.key, _where(tree, columns, f'table "{name}"'))


def _where(tree: exp.Expr, columns: list[str], where: str) -> Compiled | None:
    clause = tree.args.get("where")
    return None if clause is None else compile_expression(clause.this, columns=columns, where=where)


# --- reads ---------------------------------------------------------------------------------------------------------


def _query(tree: exp.Select, catalog: Catalog) -> Query:
    """An ad-hoc read of one table or view (``AS OF VERSION`` for views): WHERE, columns, ORDER BY, LIMIT."""
    source_node = tree.args.get("from_")
    if source_node is None or tree.args.get("joins") or not isinstance(source_node.this, exp.Table) \
            or not isinstance(source_node.this.this, exp.Identifier):
        raise NotSupported("An ad-hoc SELECT reads one table or view (SELECT ... FROM v [AS OF VERSION n]); "
                           "joins, subqueries and SEM_* functions define continuous views: CREATE CONTINUOUS VIEW")
    for arg in ("group", "having", "distinct", "with_", "windows"):
        if tree.args.get(arg):
            raise NotSupported(f"{arg.upper().rstrip('_')} in an ad-hoc SELECT is not supported yet")
    table = source_node.this
    source = catalog.resolve(table.name)
    as_of = _as_of(table.args.get("version"))
    if as_of is not None and source.kind == "table":
        raise NotSupported(f'AS OF reads a view\'s history; table "{source.name}" keeps only its current rows')
    columns = list(catalog.columns(source))
    where = f'{source.kind} "{source.name}"'
    items = tree.expressions
    if len(items) == 1 and isinstance(items[0], exp.Count) and isinstance(items[0].this, exp.Star):
        return Query(source, as_of, [], _where(tree, columns, where), count=True)
    out: list[tuple[str, Compiled]] = []
    for item in items:
        if isinstance(item, exp.Star):
            out += [(c, compile_expression(exp.column(c), columns=None)) for c in columns]
            continue
        node = item.this if isinstance(item, exp.Alias) else item
        out.append((item.alias_or_name or item.sql(), compile_expression(node, columns=columns, where=where)))
    order = []
    for term in (tree.args["order"].expressions if tree.args.get("order") else []):
        order.append((compile_expression(term.this, columns=columns, where=where), bool(term.args.get("desc"))))
    limit = tree.args.get("limit")
    offset = tree.args.get("offset")
    return Query(source, as_of, out, _where(tree, columns, where), order,
                 None if limit is None else _count(limit.expression, "LIMIT"),
                 0 if offset is None else _count(offset.expression, "OFFSET"),
                 star=any(isinstance(item, exp.Star) for item in items))


def _count(node: exp.Expr, what: str) -> int:
    value = constant(node, what=what)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SchemaError(f"{what} takes a whole number, not {value!r}")
    return value


def _as_of(version: exp.Expr | None) -> int | None:
    if version is None:
        return None
    if version.name != "VERSION" or version.text("kind") != "AS OF":
        raise NotSupported(f"{version.sql()!r}: deltamem reads AS OF VERSION n (a commit version)")
    value = constant(version.expression, what="AS OF VERSION")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SchemaError(f"AS OF VERSION takes a version number, not {value!r}")
    return value
