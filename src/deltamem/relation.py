"""What users hold: relations (unmaterialised operator chains), tables and views.

    insights = papers.sem_filter("{abstract} is about databases").sem_map("State the key insight of {abstract}", out="insight")
    digest = db.view("insights", insights)

A relation is a plan: JSON naming its source (a table or a view) and the operators applied to it, checked against
the source's columns when it is built, before any model call. ``db.view(name, relation)`` maintains it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from deltamem.changes import Row, Written, decode_key, encode_key, key_order
from deltamem.cost_model import Estimate, estimate, generate_head, inputs_for, retrieval_of
from deltamem.errors import ConfigError, NoRow, SchemaError
from deltamem.frames import frame_rows, is_frame, plain, to_frame
from deltamem.operators.base import MultiInputOperator, Operator
from deltamem.operators.catalog import HEAD_OPERATORS, chain_operator
from deltamem.operators.compose import ComposeOperator
from deltamem.operators.generate import GenerateOperator
from deltamem.operators.shard_union import is_shard_union
from deltamem.shards import shard_of
from deltamem.store.base import ChangeRow, HistoryEntry

if TYPE_CHECKING:
    import pandas

    from deltamem.engine import Database
    from deltamem.subscribe import Subscription

Plan = dict[str, Any]


def split_plan(plan: Plan) -> tuple[Plan, list[Plan]]:
    """A plan's head and its chain: the head is a source (``{"source": "table" | "view", "name": ...}``) or a node
    with named inputs (``llm_generate``, ``sem_join``, ...); the chain lists the single-input nodes after it, in
    order."""
    chain: list[Plan] = []
    while "input" in plan:
        chain.append(plan)
        plan = plan["input"]
    return plan, chain[::-1]


def plan_inputs(plan: Plan) -> dict[str, Plan]:
    """A view plan's sources by input name: ``{"input": source}`` for a chain over a source, the head operator's
    roles (``context``/``data_source`` for ``llm_generate``, ``left``/``right`` for ``sem_join``, ...) otherwise."""
    head, _chain = split_plan(plan)
    if "op" in head:
        return {role: head[role] for role in _head_class(head).roles_of(head)}
    return {"input": head}


def build_operators(plan: Plan) -> list[Operator]:
    """The plan's operators, head first; op ids are ``"<position>:<kind>"`` and so stable across restarts."""
    head, chain = split_plan(plan)
    operators: list[Operator] = []
    if "op" in head:
        cls = _head_class(head)
        roles = cls.roles_of(head)
        params = {k: v for k, v in head.items() if k != "op" and k not in roles}
        operators.append(cls(f"1:{cls.kind}", **params))
    for node in chain:
        cls = chain_operator(node["op"])
        if cls is None:
            raise ConfigError(f"Unknown operator {node['op']!r} in a stored plan")
        params = {k: v for k, v in node.items() if k not in ("op", "input", "instruction")}
        position = len(operators) + 1
        operators.append(cls(f"{position}:{node['op']}", node["instruction"], **params))
    return operators


def _head_class(head: Plan) -> type[MultiInputOperator]:
    if head["op"] not in HEAD_OPERATORS:
        raise ConfigError(f"Unknown operator {head['op']!r} in a stored plan")
    return HEAD_OPERATORS[head["op"]]


class Relation:
    """An operator chain over one table or view; chain more operators, or materialise it with ``db.view``."""

    def __init__(self, db: "Database", plan: Plan):
        self._db = db
        self.plan = plan

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns of this relation's rows (the source's, then what each operator adds)."""
        inputs = plan_inputs(self.plan)
        operators = build_operators(self.plan)
        if "input" in inputs:
            columns = self._db._source_columns(inputs["input"])
        else:
            head, operators = operators[0], operators[1:]
            assert isinstance(head, MultiInputOperator)
            columns = head.output_columns_by_role({r: self._db._source_columns(s) for r, s in inputs.items()})
        for operator in operators:
            columns = operator.output_columns(columns)
        return columns

    def describe(self) -> str:
        head, _chain = split_plan(self.plan)
        if is_shard_union(head):
            return f"{Relation(self._db, head['of']).describe()} in {len(head['views'])} shards"
        inputs = plan_inputs(self.plan)
        ops = "".join(f" -> {op.kind}" for op in build_operators(self.plan))
        if "input" in inputs:
            return f"{inputs['input']['source']} {inputs['input']['name']!r}{ops}"
        return " and ".join(f"{role} {s['name']!r}" for role, s in inputs.items()) + ops

    def sem_filter(self, instruction: str, *, default: bool = False, max_tokens: int = 4) -> "Relation":
        """Keep rows for which ``instruction`` (a ``{column}`` template) holds; one call per row."""
        return self._chain({"op": "sem_filter", "instruction": instruction, "default": default,
                            "max_tokens": max_tokens})

    def sem_map(self, instruction: str, *, out: str, max_tokens: int = 64) -> "Relation":
        """Add column ``out`` with the model's answer to ``instruction`` for each row; one call per row."""
        return self._chain({"op": "sem_map", "instruction": instruction, "out": out, "max_tokens": max_tokens})

    def sem_extract(self, instruction: str, *, fields: Mapping[str, str], max_tokens: int = 128) -> "Relation":
        """Add one column per field of ``fields`` (name -> description), extracted in one call per row."""
        return self._chain({"op": "sem_extract", "instruction": instruction, "fields": dict(fields),
                            "max_tokens": max_tokens})

    def sem_topk(self, instruction: str, *, k: int, max_tokens: int = 4) -> "Relation":
        """The ``k`` rows that best fit ``instruction`` (a ``{column}`` template), ranked by pairwise model
        comparisons; adds column ``rank`` (1 is best)."""
        return self._chain({"op": "sem_topk", "instruction": instruction, "k": k, "max_tokens": max_tokens})

    def sem_agg(self, instruction: str, *, fanout: int = 8, fold: bool = False, out: str = "digest",
                group_by: str | None = None, max_tokens: int = 128) -> "Relation":
        """One summary of all rows (per ``group_by`` value) built by ``instruction`` over a tree of partial summaries
        of ``fanout`` children each; ``fold=True`` folds each new row into the result with one call."""
        return self._chain({"op": "sem_agg", "instruction": instruction, "fanout": fanout, "fold": fold, "out": out,
                            "group_by": group_by, "max_tokens": max_tokens})

    def sem_search(self, query: str, *, k: int, column: str) -> "Relation":
        """A standing vector search: the ``k`` rows whose ``column`` is most similar to ``query`` (embedding cosine),
        with column ``score``; one similarity per new row."""
        return self._chain({"op": "sem_search", "instruction": query, "k": k, "column": column})

    def sem_index(self, column: str) -> "Relation":
        """The rows unchanged, with the embedding of ``column`` stored per row and an HNSW index over them, so that
        ``db.view(name, table.sem_index("text")).search(query, k)`` answers ad-hoc queries."""
        return self._chain({"op": "sem_index", "instruction": column})

    def sem_graph(self, instruction: str, *, synonym_threshold: float = 0.9, max_tokens: int = 256) -> "Relation":
        """A knowledge graph of these rows as passages (``instruction`` renders one): one extraction call per
        passage; one row per node, fact edge and synonymy edge, each with the passages that assert it
        (``deltamem.operators.graph``)."""
        return self._chain({"op": "sem_graph", "instruction": instruction, "synonym_threshold": synonym_threshold,
                            "max_tokens": max_tokens})

    def sem_search_many(self, queries: "Relation", *, k: int, column: str, query_column: str = "query") -> "Relation":
        """Standing vector searches, one per row of ``queries``: for each, the ``k`` rows of this relation whose
        ``column`` is most similar to its ``query_column``; keyed by (query key, row key), with column ``score``.
        Queries are clustered, so a new row is compared with a few clusters before any single query."""
        for side, relation in (("data", self), ("queries", queries)):
            if not isinstance(relation, (Table, View)) or relation._db is not self._db:
                raise SchemaError(f"sem_search_many reads tables or views of this database; its {side} is {relation!r}")
        plan = {"op": "sem_search_many", "data": self.plan, "queries": queries.plan, "k": k, "column": column,
                "query_column": query_column}
        head = build_operators(plan)[0]  # validates the parameters
        head.check_columns_by_role({"data": self.columns, "queries": queries.columns},
                                   where=f"sem_search_many over {self.describe()}")
        return Relation(self._db, plan)

    def sem_join(self, other: "Relation", instruction: str, *, candidates: int | None = None,
                 max_tokens: int = 4) -> "Relation":
        """Pairs of this relation's rows and ``other``'s for which ``instruction`` holds; the template names columns
        as ``{title:left}`` and ``{title:right}``. ``candidates=m`` asks the model only about the m rows of the
        other side most similar to a new row (embedding blocking); None asks about all."""
        for side, relation in (("left", self), ("right", other)):
            if not isinstance(relation, (Table, View)) or relation._db is not self._db:
                raise SchemaError(f"sem_join reads tables or views of this database; its {side} side is {relation!r}")
        plan = {"op": "sem_join", "left": self.plan, "right": other.plan, "instruction": instruction,
                "candidates": candidates, "max_tokens": max_tokens}
        head = build_operators(plan)[0]  # validates the parameters
        head.check_columns_by_role({"left": self.columns, "right": other.columns},
                                   where=f"sem_join of {self.describe()} and {other.describe()}")
        return Relation(self._db, plan)

    def _chain(self, node: Plan) -> "Relation":
        plan = {**node, "input": self.plan}
        operator = build_operators(plan)[-1]  # validates the parameters
        operator.check_columns(self.columns, where=self.describe())
        return Relation(self._db, plan)

    def __repr__(self) -> str:
        return f"<Relation {self.describe()}>"


class Table(Relation):
    """A base table: rows keyed by one primary-key column. Writes commit at once, or with the enclosing batch."""

    def __init__(self, db: "Database", name: str):
        super().__init__(db, {"source": "table", "name": name})
        self.name = name

    @property
    def key(self) -> str:
        return self._db._table_def(self.name).key

    def upsert(self, rows: "Row | Iterable[Row] | pandas.DataFrame") -> Written | None:
        """Insert or replace rows (each a full row; or a pandas DataFrame, one row per row, its missing values NULL:
        see ``deltamem.frames``); return what changed and the version that holds it (``Written``; None inside a
        batch). A row equal to the stored one changes nothing (it renews its TTL), and a write that changes nothing
        commits no version."""
        if is_frame(rows):
            return self._db._write_rows(self.name, frame_rows(rows, self._db._table_def(self.name).columns))
        return self._db._write_rows(self.name, [rows] if isinstance(rows, Mapping) else list(rows))

    def delete(self, keys: Any) -> Written | None:
        """Delete rows by primary key; return what changed and the version (``Written``; None inside a batch). A
        missing key changes nothing, and a delete that changes nothing commits no version."""
        keys = list(keys) if isinstance(keys, (list, tuple, set)) else [keys]
        return self._db._delete_rows(self.name, keys)

    def get(self, key: Any) -> Row | None:
        """The row with primary key ``key`` (its columns in declared order), or None."""
        row = self._db.store.get_row(self.name, encode_key(plain(key)))
        return None if row is None else self._in_order(row)

    def rows(self) -> list[Row]:
        """The table's current rows, ordered by key, each with its columns in declared order."""
        rows = self._db.store.get_rows(self.name)
        return [self._in_order(rows[key]) for key in sorted(rows, key=key_order)]

    def _in_order(self, row: Row) -> Row:
        columns = self._db._table_def(self.name).columns or {}
        return {**{c: row[c] for c in columns if c in row}, **row}

    def __repr__(self) -> str:
        return f"<Table {self.name!r} key={self.key!r}>"


@dataclass(frozen=True)
class ViewRows:
    """A read of a view: its rows (ordered by key, each with its columns in the view's declared order, as
    ``view.columns`` lists them), the version they reflect, and how far that is behind."""

    rows: list[Row]
    version: int
    lag: int  # committed versions not yet reflected
    lag_seconds: float  # age of the oldest commit not yet reflected; 0.0 when fresh
    keys: list[str | int] = field(default_factory=list)  # each row's key (as history/explain take it), as ``rows``
    error: str | None = None  # why maintenance cannot bring the view up to date now (it is retried); None if it can

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Row:
        return self.rows[index]


class View(Relation):
    """A continuous view: maintained in the background; every version of every row is kept."""

    def __init__(self, db: "Database", name: str):
        super().__init__(db, {"source": "view", "name": name})
        self.name = name

    @property
    def definition(self) -> Relation:
        return Relation(self._db, self._db._view_def(self.name).plan)

    def rows(self, *, fresh: bool = False, as_of: int | None = None, timeout: float | None = None) -> ViewRows:
        """The view's rows now, or ``as_of`` an older version; ``fresh=True`` first waits for the latest commit."""
        return self._db._read_view(self.name, fresh=fresh, as_of=as_of, timeout=timeout)

    def to_pandas(self, version: int | None = None, *, fresh: bool = False,
                  timeout: float | None = None) -> "pandas.DataFrame":
        """The rows ``rows()`` gives (``as_of`` ``version`` when given) as a DataFrame: one column per view column in
        order, and ``_error`` when a row carries one. Needs pandas: ``pip install 'deltamem[pandas]'``."""
        read = self.rows(fresh=fresh, as_of=version, timeout=timeout)
        return to_frame(self.columns, read.rows)

    def history(self, key: Any) -> list[HistoryEntry]:
        """Every version of one output row, oldest first; ``key`` as ``rows().keys`` and ``ChangeRow.key`` give it
        (``2``, ``"q2"``)."""
        self._db._view_def(self.name)
        order = self._db._row_order(self.name)
        return [replace(entry, row=order(entry.row))
                for entry in self._db.store.get_view_history(self.name, encode_key(plain(key)))]

    def changes(self, first: int, last: int) -> list[ChangeRow]:
        """Materialize-style change rows (version, diff, row) for versions ``first..last``."""
        order = self._db._row_order(self.name)
        return [replace(change, row=order(change.row)) for change in self._db.store.get_view_changes(self.name, first,
                                                                                                      last)]

    def search(self, query: str, k: int, *, fresh: bool = False) -> list[Row]:
        """The ``k`` rows of this view most similar to ``query`` by the embedding its ``sem_index`` keeps, each with
        column ``score`` (cosine similarity), best first, ties by key order; ``fresh=True`` first waits for the latest
        commit. Costs one embedding call (the query). Answered from an in-memory HNSW index (``usearch``), exact below
        a few thousand rows, built from the stored embeddings and brought up to date with the view before each search.
        """
        self._db._view_def(self.name)
        if fresh:
            self._db.maintainer.wait_for(self.name, self._db.version, None)
        inputs, operators = self._db._view_plan(self.name)
        return self._db._search_indexes.search(self.name, inputs, operators, self._db.embedder, query, k,
                                               runner=self._db.runner)

    def subscribe(self, callback: Callable[[ChangeRow], None], *, snapshot: bool = True) -> "Subscription":
        """Call ``callback`` with every change row from now on (after the current rows as +1, if ``snapshot``)."""
        return self._db._subscribe(self.name, callback, snapshot=snapshot)

    def explain(self, key: Any) -> dict[str, Any]:
        """One output: what each operator stored for it (value, cost), its ``dependencies`` (for ``LLM_GENERATE``:
        the sentences in its prompt with their document versions, the attention attribution of its output sentences
        to them, the key spans it copies and, with graph retrieval, its seeds, subgraph and evidence paths) and its
        decision log. ``key`` as ``history`` takes it; every key in the report (the decisions', the documents') is
        such a value too, so it prints once-encoded as JSON."""
        plan = self._db._view_def(self.name).plan
        if is_shard_union(plan):
            return self._explain_in_shards(key, plan)
        row_key = encode_key(plain(key))
        all_state = self._db.store.get_all_state(self.name)
        state = {op: entry for (op, k), entry in all_state.items() if k == row_key}
        decisions = self._db.store.get_decisions(self.name, row_key)
        if not state and not decisions and not self._db.store.get_view_history(self.name, row_key):
            raise NoRow(f'View "{self.name}" has no output, state or decision for key {key!r}')
        _inputs, operators = self._db._view_plan(self.name)
        dependencies = {op.op_id: op.describe_output(row_key, all_state) for op in operators
                        if isinstance(op, (GenerateOperator, ComposeOperator))}
        row = self._db.store.get_view_rows(self.name).get(row_key)
        for found in dependencies.values():
            for source in (found or {}).get("provenance", ()):
                source["doc"] = decode_key(source["doc"])
        return {
            "key": key,
            "row": None if row is None else self._db._row_order(self.name)(row),
            "operators": {op: {"value": e.value, "error": e.error, "cost": asdict(e.cost), "fingerprint": e.fingerprint}
                          for op, e in state.items()},
            "dependencies": {op: d for op, d in dependencies.items() if d is not None},
            "decisions": [{**asdict(d), "key": decode_key(d.key)} for d in decisions],
        }

    def _explain_in_shards(self, key: Any, plan: Plan) -> dict[str, Any]:
        """``explain`` of a sharded view: the report of the shard view that has ``key``, naming it (``shard``). The
        shard of the key's last row's partition value is asked first: the others would each read all their state
        only to find nothing."""
        shards = plan["views"]
        history = self._db.store.get_view_history(self.name, encode_key(plain(key)))
        if history:
            holder = shards[shard_of(history[-1].row.get(plan["of"]["partition"]), len(shards))]
            shards = [holder, *(shard for shard in shards if shard != holder)]
        for shard in shards:
            try:
                report = View(self._db, shard).explain(key)
            except NoRow:
                continue
            return {**report, "shard": shard}
        raise NoRow(f'View "{self.name}" has no output, state or decision for key {key!r} in any of its '
                    f"{len(shards)} shards")

    def estimate(self) -> Estimate:
        """What maintaining this ``LLM_GENERATE`` view costs with each retrieval (all, dense, graph) at the rates its
        history measured, and which is cheapest (``deltamem.cost_model``)."""
        plan = self._db._view_def(self.name).plan
        head = generate_head(plan)
        if head is None:
            raise SchemaError(f'View "{self.name}" is not an LLM_GENERATE view; only those have a retrieval to '
                              "estimate")
        return estimate(inputs_for(self._db, head), retrieval_of(head))

    @property
    def version(self) -> int | None:
        """The version this view reflects (``None`` before its first build)."""
        return self._db.store.get_applied_version(self.name)

    def __repr__(self) -> str:
        return f"<View {self.name!r}: {self.definition.describe()}>"
