"""Run SQL against a database: parse, plan, then call the Python API; results come back as columns and rows.

    execute(db, "SELECT * FROM insights AS OF VERSION 3").rows   # [(1, 'Streams', ...), ...]

Invariant: a statement that fails changes nothing. Every multi-row write goes through one ``db.batch()``, which
commits as one version or not at all, and planning checks names, columns and options before the first write.
INSERT, UPDATE and DELETE read what they decide on (the key check, WHERE, SET) inside their own write transaction
(``db.batch(atomic=True)``), so each is atomic with respect to every other writer, in this process or another.
Statements of a script run in order; a syntax error anywhere stops the script before its first statement runs.
Reads of views wait until the view reflects the latest commit (``rows(fresh=True)``), so a script reads what it wrote.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deltamem.changes import ERROR_COLUMN, Row
from deltamem.errors import DependentViews, NoView, PrimaryKeyError
from deltamem.ingest import Record, load_file
from deltamem.operators.base import MultiInputOperator
from deltamem.operators.shard_union import ShardUnion, is_shard_union
from deltamem.cost_model import describe as describe_estimate, generate_head
from deltamem.relation import Relation, build_operators, split_plan
from deltamem.sql.catalog import CATALOG_COLUMNS, CATALOG_TABLE, SEQUENCE_COLUMN, Catalog, Source
from deltamem.sql.dialect import Statement, parse
from deltamem.sql.evaluate import Params, is_true
from deltamem.sql.operators import chain
from deltamem.sql.planner import (
    CopyPlan, CreateGenerate, CreateTable, CreateView, Delete, DropPlan, ExplainPlan, Insert, Plan, Query,
    RefreshPlan, Show, SubscribePlan, Update, plan_statement,
)
from deltamem.sql.relations import JoinHead, RelationPlan

if TYPE_CHECKING:
    from deltamem.engine import Database

# Seconds a read of a view waits for freshness, for the statements run in this context (``bounded_reads``): None, the
# default of the shell and of scripts, waits for as long as maintenance takes; the HTTP server sets a bound.
_READ_TIMEOUT: ContextVar[float | None] = ContextVar("read_timeout", default=None)
# Stream sequence numbers are read and written under this lock, so two threads of one process never hand out the
# same number. INSERT and COPY also read them from the store and write them back inside their own write transaction
# (an atomic batch), which makes them safe across processes: no two processes hand out the same number.
_SEQUENCE_LOCK = threading.Lock()


@dataclass
class Result:
    """What one statement did: a psql-style ``status`` line, and ``columns``/``rows`` when it returns rows.

    ``version`` is the commit a write made, or the version a read reflects; ``view`` is set by SUBSCRIBE, so a
    shell can go on following it from ``version``.
    """

    status: str
    columns: list[str] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    version: int | None = None
    view: str | None = None

    def rich_table(self, title: str | None = None):  # -> rich.table.Table; rich is imported only by the CLI
        from rich.table import Table

        from deltamem.display import literal

        table = Table(title=title, title_justify="left")
        for column in self.columns:
            table.add_column(literal(column), overflow="fold")
        for row in self.rows:
            table.add_row(*(literal(format_value(v)) for v in row))
        return table


def format_value(value: Any) -> str:
    """A value as the shell prints it: NULL, true/false, JSON for objects and lists."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def execute(db: "Database", sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None, *,
            base_dir: Path | None = None, read_files: bool = True) -> Result:
    """Run every statement of ``sql`` in order and return the last one's result (``base_dir`` and ``read_files``
    as for ``execute_script``)."""
    results = [result for _statement, result in execute_script(db, sql, params, base_dir=base_dir,
                                                                read_files=read_files)]
    if not results:
        return Result("EMPTY")
    return results[-1]


def execute_script(db: "Database", sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None, *,
                   base_dir: Path | None = None, read_files: bool = True) -> Iterator[tuple[Statement, Result]]:
    """Each statement of ``sql`` with its result, run as it is reached; ``?`` parameters are taken in order.
    COPY reads a relative path from ``base_dir`` (default: the working directory); ``read_files=False`` refuses
    COPY ... FROM a file, for SQL that comes from others."""
    statements = parse(sql)  # all of them first: a syntax error anywhere runs nothing
    bound = Params(params)
    for statement in statements:
        plan = plan_statement(statement.expression, Catalog(db), bound, base_dir=base_dir, read_files=read_files)
        yield statement, run_plan(db, plan)


@contextmanager
def bounded_reads(seconds: float | None) -> Iterator[None]:
    """Make the view reads of the statements run in this block (SELECT, SUBSCRIBE, EXPLAIN ... KEY, SHOW VIEWS and
    SHOW USAGE) wait at most ``seconds`` for the latest commit, then raise ``FreshnessTimeout``; None waits on."""
    token = _READ_TIMEOUT.set(seconds)
    try:
        yield
    finally:
        _READ_TIMEOUT.reset(token)


def run_plan(db: "Database", plan: Plan) -> Result:
    handler = _HANDLERS[type(plan)]
    return handler(db, plan)


# --- DDL -----------------------------------------------------------------------------------------------------------


def _create_table(db: "Database", plan: CreateTable) -> Result:
    kind = "STREAM" if plan.stream else "TABLE"
    if plan.if_not_exists and Catalog(db).exists(plan.name):
        return Result(f'CREATE {kind}: "{plan.name}" exists, skipped')
    db.table(plan.name, key=plan.key, columns=plan.columns, **plan.options)
    # NOTE(sql): the catalog row is a write, so CREATE TABLE commits a version (with no change to any user table).
    catalog = db.table(CATALOG_TABLE, key="name", columns=CATALOG_COLUMNS)
    written = catalog.upsert({"name": plan.name, "kind": kind.lower(), "columns": list(plan.columns), "next_seq": 1})
    assert written is not None, "sql: CREATE runs outside a batch"
    return Result(f"CREATE {kind}", version=written.version)


def _create_view(db: "Database", plan: CreateView) -> Result:
    if plan.if_not_exists and Catalog(db).exists(plan.name):
        return Result(f'CREATE CONTINUOUS VIEW: "{plan.name}" exists, skipped')
    db.view(plan.name, build_relation(db, plan.relation))
    return Result("CREATE CONTINUOUS VIEW")


def build_relation(db: "Database", plan: RelationPlan) -> Relation:
    """The Python API calls a relation plan stands for, made in order."""
    def source(s):
        return db.table(s.name) if s.kind == "table" else db.view(s.name)

    head = plan.head
    if isinstance(head, JoinHead):
        relation: Relation = source(head.left).sem_join(source(head.right), head.instruction, **head.options)
    else:
        relation = source(head)
    for step in plan.steps:
        if step.op.startswith("sql_"):
            relation = chain(relation, {"op": step.op, "instruction": step.instruction, **step.options})
        else:
            relation = getattr(relation, step.op)(step.instruction, **step.options)
    return relation


def _create_generate(db: "Database", plan: CreateGenerate) -> Result:
    if plan.if_not_exists and Catalog(db).exists(plan.name):
        return Result(f'CREATE CONTINUOUS VIEW: "{plan.name}" exists, skipped')
    db.generate(plan.name, context=db.table(plan.context), data_source=db.table(plan.data_source), **plan.options)
    return Result("CREATE CONTINUOUS VIEW")


def _drop(db: "Database", plan: DropPlan) -> Result:
    skipped = "".join(f'; "{name}" does not exist, skipped' for name in plan.missing)
    if not plan.names:
        return Result(f"DROP {plan.kind}{skipped}")
    catalog = Catalog(db)
    try:
        with db.batch() as batch:  # the _sql_catalog rows go in the drop's own transaction
            for name in plan.names:
                if plan.kind == "VIEW":
                    db.drop_view(name, cascade=plan.cascade)
                    continue
                if catalog.entry(name) is not None:
                    db.table(CATALOG_TABLE).delete(name)
                db.drop_table(name, cascade=plan.cascade)
    except DependentViews as exc:  # the engine's advice is Python's (cascade=True): give SQL's
        raise DependentViews(exc.reason, exc.views, f"Drop them first, or write DROP {plan.kind} "
                                                    f"{', '.join(plan.names)} CASCADE to drop them too") from None
    assert batch.dropped is not None, "sql: a batch with drops reports what it dropped"
    cascaded = [view for view in batch.dropped.views if view not in plan.names]
    also = f"; CASCADE dropped view{'s' if len(cascaded) > 1 else ''} {', '.join(cascaded)}" if cascaded else ""
    return Result(f"DROP {plan.kind}{also}{skipped}", version=batch.version)


# --- writes --------------------------------------------------------------------------------------------------------


def _insert(db: "Database", plan: Insert) -> Result:
    table = db.table(plan.table)
    key = table.key
    rows = [dict(row) for row in plan.rows]
    with _SEQUENCE_LOCK, db.batch(atomic=True) as batch:  # the key check and the write: one transaction
        counter = None
        if plan.stream and key == SEQUENCE_COLUMN:
            counter = _next_sequence(db, plan.table)
            for row in rows:
                if row.get(key) is None:
                    row[key], counter = counter, counter + 1
                elif isinstance(row[key], int):
                    counter = max(counter, row[key] + 1)
        kept = []
        for row in rows:
            if row.get(key) is not None and table.get(row[key]) is not None:
                if plan.on_conflict == "nothing":
                    continue
                raise PrimaryKeyError(f'Key {row[key]!r} already exists in table "{plan.table}"; use UPDATE, or '
                                      "INSERT ... ON CONFLICT DO NOTHING")
            kept.append(row)
        if not kept:
            return Result("INSERT 0")
        table.upsert(kept)
        if counter is not None:
            entry = Catalog(db).entry(plan.table)
            assert entry is not None, "sql: a stream with an implicit key has a catalog row"
            db.table(CATALOG_TABLE).upsert({**entry, "next_seq": counter})
    return Result(f"INSERT {len(kept)}", version=batch.version)


def _next_sequence(db: "Database", stream: str) -> int:
    entry = Catalog(db).entry(stream)
    assert entry is not None, "sql: a stream with an implicit key has a catalog row"
    return entry["next_seq"]


def _copy(db: "Database", plan: CopyPlan) -> Result:
    if not plan.numbered:
        result = load_file(db, plan.table, plan.path, format=plan.format, limit=plan.limit)
    else:
        with _SEQUENCE_LOCK:
            counter = 0

            def number(records: list[Record]) -> list[Record]:  # load_file runs it inside its write transaction
                nonlocal counter
                counter = _next_sequence(db, plan.table)
                numbered = []
                for record in records:
                    seq = record.row.get(SEQUENCE_COLUMN)
                    if seq is None and not record.delete:
                        record, counter = replace(record, row={**record.row, SEQUENCE_COLUMN: counter}), counter + 1
                    elif isinstance(seq, int) and not isinstance(seq, bool):
                        counter = max(counter, seq + 1)
                    numbered.append(record)
                return numbered

            def save_counter() -> None:
                entry = Catalog(db).entry(plan.table)
                assert entry is not None, "sql: a stream with an implicit key has a catalog row"
                db.table(CATALOG_TABLE).upsert({**entry, "next_seq": counter})

            result = load_file(db, plan.table, plan.path, format=plan.format, limit=plan.limit, number=number,
                               also=save_counter)
    replaced = f"; {result.superseded} replaced by a later record with the same key" if result.superseded else ""
    return Result(f"COPY {result.records}: {result.inserted} inserted, {result.updated} updated, {result.deleted} "
                  f"deleted, {result.unchanged} unchanged{replaced}", version=result.version)


def _update(db: "Database", plan: Update) -> Result:
    table = db.table(plan.table)
    with db.batch(atomic=True) as batch:  # WHERE and SET read the rows this commit replaces: no write lands between
        current = table.rows()
        matched = [row for row in current if plan.where is None or is_true(plan.where(row))]
        if not matched:
            return Result("UPDATE 0")
        new_rows = [{**row, **{column: value(row) for column, value in plan.assignments.items()}} for row in matched]
        moved = [old[plan.key] for old, new in zip(matched, new_rows, strict=True) if new[plan.key] != old[plan.key]]
        untouched = {row[plan.key] for row in current} - {row[plan.key] for row in matched}
        for new in new_rows:
            if new[plan.key] in untouched:
                raise PrimaryKeyError(f'UPDATE would give two rows of table "{plan.table}" the key {new[plan.key]!r}')
        if moved:
            table.delete(moved)  # first: in a batch the last write of a key wins, and the new rows come next
        table.upsert(new_rows)
    return Result(f"UPDATE {len(new_rows)}", version=batch.version)


def _delete(db: "Database", plan: Delete) -> Result:
    table = db.table(plan.table)
    with db.batch(atomic=True) as batch:  # WHERE reads the rows this commit deletes: the count is what it deleted
        keys = [row[plan.key] for row in table.rows() if plan.where is None or is_true(plan.where(row))]
        if not keys:
            return Result("DELETE 0")
        table.delete(keys)
    return Result(f"DELETE {len(keys)}", version=batch.version)


# --- reads ---------------------------------------------------------------------------------------------------------


def _read(db: "Database", kind: str, name: str, as_of: int | None) -> tuple[list[Row], int]:
    if kind == "table":
        return db.table(name).rows(), db.version
    read = db.view(name).rows(fresh=True, as_of=as_of, timeout=_READ_TIMEOUT.get())
    return read.rows, read.version


def _query(db: "Database", plan: Query) -> Result:
    rows, version = _read(db, plan.source.kind, plan.source.name, plan.as_of)
    if plan.where is not None:
        rows = [row for row in rows if is_true(plan.where(row))]
    if plan.count:
        return Result("SELECT 1", ["count"], [(len(rows),)], version=version)
    for value, descending in reversed(plan.order):  # stable sorts, last key first
        rows.sort(key=lambda row, v=value, d=descending: _sort_key(v(row), d), reverse=descending)
    rows = rows[plan.offset:None if plan.limit is None else plan.offset + plan.limit]
    columns = [name for name, _ in plan.columns]
    out = [tuple(value(row) for _, value in plan.columns) for row in rows]
    if plan.star and any(row.get(ERROR_COLUMN) is not None for row in rows):
        columns.append(ERROR_COLUMN)
        out = [(*values, row.get(ERROR_COLUMN)) for values, row in zip(out, rows, strict=True)]
    return Result(f"SELECT {len(out)}", columns, out, version=version)


def _sort_key(value: Any, descending: bool) -> tuple[Any, ...]:
    # NULLs sort last ascending and first descending, as in Postgres; numbers before text before other values.
    if value is None:
        return (1,)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, 0, value)
    if isinstance(value, str):
        return (0, 1, value)
    return (0, 2, json.dumps(value, sort_keys=True))


def _subscribe(db: "Database", plan: SubscribePlan) -> Result:
    view = db.view(plan.view)
    now = view.rows(fresh=True, timeout=_READ_TIMEOUT.get())
    if plan.as_of is None:
        start, changes = now.version, [(now.version, 1, row) for row in now.rows]
    else:
        start = plan.as_of
        changes = [(start, 1, row) for row in view.rows(as_of=start).rows]
        changes += [(c.version, c.diff, c.row) for c in view.changes(start + 1, now.version)]
    columns = view_columns(view.columns, [row for _, _, row in changes])
    rows = [(version, diff, *(row.get(c) for c in columns)) for version, diff, row in changes]
    return Result(f"SUBSCRIBE {len(rows)}", ["version", "diff", *columns], rows, version=now.version,
                  view=plan.view)


def follow(db: "Database", view: str, after: int) -> tuple[list[tuple[Any, ...]], int]:
    """The change rows of ``view`` after version ``after`` (each ``(version, diff, *columns)``, as SUBSCRIBE shows
    them), and the version they reach; a shell calls this in a loop to stream a subscription."""
    handle = db.view(view)
    if db.store.get_view_id(view) is None:  # dropped by another process while followed
        raise NoView(f'View "{view}" was dropped')
    applied = handle.version
    if applied is None or applied <= after:
        return [], after
    changes = handle.changes(after + 1, applied)
    columns = view_columns(handle.columns, [c.row for c in changes])
    return [(c.version, c.diff, *(c.row.get(name) for name in columns)) for c in changes], applied


def view_columns(columns: Sequence[str], rows: Sequence[Row]) -> list[str]:
    """A view's columns, plus ``_error`` when a row carries one."""
    return [*columns, *([ERROR_COLUMN] if any(r.get(ERROR_COLUMN) is not None for r in rows) else [])]


def _explain(db: "Database", plan: ExplainPlan) -> Result:
    view = db.view(plan.view)
    if plan.key is None:
        rows = _graph(view.definition.plan)
        if generate_head(view.definition.plan) is not None:
            rows += [(part, "", detail) for part, detail in describe_estimate(view.estimate())]
        return Result(f"EXPLAIN VIEW {plan.view}", ["operator", "input", "parameters"], rows)
    view.rows(fresh=True, timeout=_READ_TIMEOUT.get())
    report = view.explain(plan.key)
    rows: list[tuple[Any, ...]] = [("row", json.dumps(report["row"]))]  # in the view's declared column order
    for op, state in report["operators"].items():
        cost = state["cost"]
        error = f"; error: {state['error']}" if state["error"] else ""
        rows.append((f"operator {op}", f"calls={cost['calls']} prompt_tokens={cost['prompt_tokens']} "
                                       f"output_tokens={cost['output_tokens']}{error}"))
    for op, dependencies in report["dependencies"].items():
        if dependencies.get("reuse"):
            r = dependencies["reuse"]
            rows.append((f"reused ({op})", f"the answer of {r['reused_from']!r}: similarity {r['similarity']:.3f}, "
                                           f"threshold {r['threshold']:.3f}, probability {r['probability']:.2f}, "
                                           f"error bound {r['error_bound']:.1%}"))
        if dependencies.get("decomposition"):
            d = dependencies["decomposition"]
            rows.append((f"decomposed ({op})", f"pattern {d['pattern']!r}" if d["pattern"] else "no pattern: its own "
                                               "base question"))
            for base in d["bases"]:
                rows.append((f"base answer ({op})", f"{base['question']} -> {base['answer']}"))
        for p in dependencies.get("provenance", []):
            state = "" if p["current"] else " (changed since)"
            rows.append((f"depends on ({op})", f"doc {p['doc']} v{p['doc_version']} sentence {p['position']}: "
                                               f"{p['text']}{state}"))
        if dependencies.get("graph"):
            g = dependencies["graph"]
            rows.append((f"graph seeds ({op})", ", ".join(g["seeds"]) or "none: its question names no entity of "
                                                                        "the graph"))
            following = "none" if g["next"] is None else f"{g['next']:.4g}"
            rows.append((f"graph subgraph ({op})", f"{len(g['subgraph'])} nodes, {len(g['edges'])} edges kept; every "
                                                   f"other node has mass at most {g['cut']:.3g}; k-th passage "
                                                   f"{g['kth']:.4g}, next {following}, slack {g['slack']:.2g}"))
            for passage, path in g["paths"].items():
                rows.append((f"graph evidence ({op})", f"passage {passage}: " + " -> ".join(path)))
        if dependencies.get("key_spans"):
            rows.append((f"key spans ({op})", ", ".join(dependencies["key_spans"])))
        if dependencies.get("attribution"):
            matrix = dependencies["attribution"].get("matrix") or []
            rows.append((f"attribution ({op})", f"{len(matrix)} output sentences x "
                                                f"{len(matrix[0]) if matrix else 0} prompt sentences"))
    for d in report["decisions"]:
        rows.append((f"decision v{d['version']}", f"{d['strategy']}: {d['reason']} (calls={d['calls']}, "
                                                  f"prompt_tokens={d['prompt_tokens']}, reused_tokens="
                                                  f"{d['reused_tokens']}, output_tokens={d['output_tokens']})"))
    return Result(f"EXPLAIN VIEW {plan.view} KEY {plan.key!r}", ["part", "detail"], rows)


def _graph(plan: dict[str, Any]) -> list[tuple[Any, ...]]:
    """One row per operator, head first: its id, what it reads, and its parameters. A sharded view's rows are
    those of the plan each shard runs, then the union of its shard views."""
    head, nodes = split_plan(plan)
    if is_shard_union(head):
        return [*_graph(head["of"]), (ShardUnion.kind, ", ".join(head["views"]),
                                      f"shards={len(head['views'])}, partition={head['of']['partition']!r}")]
    operators = build_operators(plan)
    rows = []
    if "op" in head:
        first = operators[0]
        roles = type(first).roles_of(head) if isinstance(first, MultiInputOperator) else ()
        inputs = ", ".join(f"{role}: {head[role]['source']} {head[role]['name']}" for role in roles)
        rows.append((first.op_id, inputs, _parameters(head, skip=("op", *roles))))
        previous, operators = first.op_id, operators[1:]
    else:
        previous = f"{head['source']} {head['name']}"
    for node, operator in zip(nodes, operators, strict=True):
        rows.append((operator.op_id, previous, _parameters(node, skip=("op", "input"))))
        previous = operator.op_id
    return rows


def _parameters(node: Mapping[str, Any], *, skip: tuple[str, ...]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in node.items() if k not in skip and v is not None)


def _refresh(db: "Database", plan: RefreshPlan) -> Result:
    """Retry the view's failed calls now: ``db.refresh()`` commits an empty version, at which every view retries
    what failed (the others too: their failures are as stale), then the view is read fresh. Without a failure
    there is nothing to redo, and nothing is committed: a view is kept fresh on its own."""
    view = db.view(plan.view)
    timeout = _READ_TIMEOUT.get()
    before = view.rows(fresh=True, timeout=timeout)
    _inputs, operators = db._view_plan(plan.view)
    if not any(db.store.get_failed_state(plan.view, op.op_id) for op in operators):
        return Result(f"REFRESH VIEW {plan.view}: no failed rows, nothing to retry")  # and no version
    failed = sum(row.get(ERROR_COLUMN) is not None for row in before.rows)
    version = db.refresh()
    after = view.rows(fresh=True, timeout=timeout)
    still = sum(row.get(ERROR_COLUMN) is not None for row in after.rows)
    return Result(f"REFRESH VIEW {plan.view}: {failed} failed row{'s' if failed != 1 else ''} retried, "
                  f"{still} still failing", version=version)


def _show(db: "Database", plan: Show) -> Result:
    catalog = Catalog(db)
    if plan.what == "TABLES":
        streams = catalog.streams()
        defs = {t.name: t for t in db.store.get_table_defs()}
        rows = []
        for name in catalog.tables():
            t = defs[name]
            types = t.columns or {}
            columns = ", ".join(f"{c} {types[c].value}" for c in catalog.columns(Source("table", name)) if c in types)
            rows.append((name, "stream" if name in streams else "table", t.key, columns,
                         None if t.ttl is None else _duration(t.ttl), t.ttl_column, t.expire.value if t.ttl else None))
        return Result(f"SHOW {len(rows)}", ["name", "kind", "key", "columns", "ttl", "ttl_column", "expire"], rows)
    db.maintain(_READ_TIMEOUT.get())  # views and costs as of the latest commit
    if plan.what == "VIEWS":
        rows = [(name, db.view(name).definition.describe(), db.view(name).version) for name in catalog.views()]
        return Result(f"SHOW {len(rows)}", ["name", "definition", "version"], rows)
    usage = db.usage()
    rows = []
    for name in sorted(set(usage.by_view) | set(usage.full_recompute)):
        paid = usage.by_view.get(name)
        full = usage.full_recompute.get(name)
        rows.append(_usage_row(name, paid and asdict(paid), full and asdict(full.cost)))
    totals = {k: getattr(usage, k) for k in ("calls", "prompt_tokens", "output_tokens", "memo_hits", "failures")}
    full_total = {"calls": usage.full_recompute_calls,
                  "prompt_tokens": sum(f.cost.prompt_tokens for f in usage.full_recompute.values()),
                  "output_tokens": sum(f.cost.output_tokens for f in usage.full_recompute.values())}
    rows.append(_usage_row("total", totals, full_total))
    columns = ["view", "calls", "tokens", "memo hits", "failures", "full recompute calls", "full recompute tokens",
               "calls saved"]
    return Result(f"SHOW {len(rows)}", columns, rows)


def _usage_row(name: str, paid: Mapping[str, Any] | None, full: Mapping[str, Any] | None) -> tuple[Any, ...]:
    # Seconds are left out on purpose: they differ run to run, and these rows are compared in tests.
    paid = paid or {"calls": 0, "prompt_tokens": 0, "output_tokens": 0, "memo_hits": 0, "failures": 0}
    full = full or {"calls": 0, "prompt_tokens": 0, "output_tokens": 0}
    saved = f"{1 - paid['calls'] / full['calls']:.0%}" if full["calls"] else "-"
    return (name, paid["calls"], paid["prompt_tokens"] + paid["output_tokens"], paid["memo_hits"], paid["failures"],
            full["calls"], full["prompt_tokens"] + full["output_tokens"], saved)


def _duration(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} seconds"


_HANDLERS = {
    CreateTable: _create_table, CreateView: _create_view, CreateGenerate: _create_generate, DropPlan: _drop,
    Insert: _insert, Update: _update, Delete: _delete, CopyPlan: _copy, Query: _query, SubscribePlan: _subscribe,
    ExplainPlan: _explain, Show: _show, RefreshPlan: _refresh,
}
