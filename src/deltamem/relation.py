"""What users hold: relations (unmaterialised operator chains), tables and views.

    insights = papers.sem_filter("{abstract} is about databases").sem_map("State the key insight of {abstract}", out="insight")
    digest = db.view("insights", insights)

A relation is a plan: JSON naming its source (a table or a view) and the operators applied to it, checked against
the source's columns when it is built, before any model call. ``db.view(name, relation)`` maintains it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from deltamem.changes import Row, encode_key, key_order
from deltamem.errors import ConfigError, NoRow
from deltamem.operators.base import Operator
from deltamem.operators.generate import GenerateOperator
from deltamem.operators.rowwise import OPERATORS
from deltamem.store.base import ChangeRow, HistoryEntry

if TYPE_CHECKING:
    from deltamem.engine import Database
    from deltamem.subscribe import Subscription

Plan = dict[str, Any]


def plan_source(plan: Plan) -> Plan:
    """The leaf of a chain plan: ``{"source": "table" | "view", "name": ...}``."""
    while "input" in plan:
        plan = plan["input"]
    return plan


def plan_inputs(plan: Plan) -> dict[str, Plan]:
    """A view plan's sources by input name: ``{"input": leaf}`` for a chain, ``context``/``data_source`` for
    ``llm_generate``."""
    if plan.get("op") == GenerateOperator.kind:
        return {"context": plan["context"], "data_source": plan["data_source"]}
    return {"input": plan_source(plan)}


def build_operators(plan: Plan) -> list[Operator]:
    """The plan's operators, source first; op ids are ``"<position>:<kind>"`` and so stable across restarts."""
    if plan.get("op") == GenerateOperator.kind:
        params = {k: v for k, v in plan.items() if k not in ("op", "context", "data_source")}
        return [GenerateOperator(f"1:{GenerateOperator.kind}", **params)]
    chain: list[Plan] = []
    while "input" in plan:
        chain.append(plan)
        plan = plan["input"]
    operators = []
    for position, node in enumerate(reversed(chain), start=1):
        params = {k: v for k, v in node.items() if k not in ("op", "input", "instruction")}
        if node["op"] not in OPERATORS:
            raise ConfigError(f"Unknown operator {node['op']!r} in a stored plan")
        operators.append(OPERATORS[node["op"]](f"{position}:{node['op']}", node["instruction"], **params))
    return operators


class Relation:
    """An operator chain over one table or view; chain more operators, or materialise it with ``db.view``."""

    def __init__(self, db: "Database", plan: Plan):
        self._db = db
        self.plan = plan

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns of this relation's rows (the source's, then what each operator adds)."""
        inputs = plan_inputs(self.plan)
        columns = self._db._source_columns(inputs.get("input") or inputs["context"])
        for operator in build_operators(self.plan):
            columns = operator.output_columns(columns)
        return columns

    def describe(self) -> str:
        inputs = plan_inputs(self.plan)
        ops = "".join(f" -> {op.kind}" for op in build_operators(self.plan))
        if "input" in inputs:
            return f"{inputs['input']['source']} {inputs['input']['name']!r}{ops}"
        return "llm_generate over " + " and ".join(f"{role} {s['name']!r}" for role, s in inputs.items())

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

    def _chain(self, node: Plan) -> "Relation":
        plan = {**node, "input": self.plan}
        operator = build_operators(plan)[-1]  # validates the parameters
        operator.template.check(self.columns, where=self.describe())
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

    def upsert(self, rows: Row | Iterable[Row]) -> int | None:
        """Insert or replace rows (each a full row); return the version that holds them (None inside a batch)."""
        return self._db._write_rows(self.name, [rows] if isinstance(rows, Mapping) else list(rows))

    def delete(self, keys: Any) -> int | None:
        """Delete rows by primary key (a missing key is a no-op); return the commit's version (None inside a batch)."""
        keys = list(keys) if isinstance(keys, (list, tuple, set)) else [keys]
        return self._db._delete_rows(self.name, keys)

    def get(self, key: Any) -> Row | None:
        return self._db.store.get_row(self.name, encode_key(key))

    def rows(self) -> list[Row]:
        """The table's current rows, ordered by key."""
        rows = self._db.store.get_rows(self.name)
        return [rows[key] for key in sorted(rows, key=key_order)]

    def __repr__(self) -> str:
        return f"<Table {self.name!r} key={self.key!r}>"


@dataclass(frozen=True)
class ViewRows:
    """A read of a view: its rows (ordered by key), the version they reflect, and how far that is behind."""

    rows: list[Row]
    version: int
    lag: int  # committed versions not yet reflected
    lag_seconds: float  # age of the oldest commit not yet reflected; 0.0 when fresh

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

    def history(self, key: Any) -> list[HistoryEntry]:
        """Every version of one output row, oldest first."""
        self._db._view_def(self.name)
        return self._db.store.get_view_history(self.name, encode_key(key))

    def changes(self, first: int, last: int) -> list[ChangeRow]:
        """Materialize-style change rows (version, diff, row) for versions ``first..last``."""
        return self._db.store.get_view_changes(self.name, first, last)

    def subscribe(self, callback: Callable[[ChangeRow], None], *, snapshot: bool = True) -> "Subscription":
        """Call ``callback`` with every change row from now on (after the current rows as +1, if ``snapshot``)."""
        return self._db._subscribe(self.name, callback, snapshot=snapshot)

    def explain(self, key: Any) -> dict[str, Any]:
        """One output: what each operator stored for it (value, cost), its ``dependencies`` (for ``LLM_GENERATE``:
        the sentences in its prompt with their document versions, the attention attribution of its output sentences
        to them, and the key spans it copies) and its decision log."""
        self._db._view_def(self.name)
        row_key = encode_key(key)
        all_state = self._db.store.get_all_state(self.name)
        state = {op: entry for (op, k), entry in all_state.items() if k == row_key}
        decisions = self._db.store.get_decisions(self.name, row_key)
        if not state and not decisions and not self._db.store.get_view_history(self.name, row_key):
            raise NoRow(f'View "{self.name}" has no output, state or decision for key {key!r}')
        _inputs, operators = self._db._view_plan(self.name)
        dependencies = {op.op_id: op.describe_output(row_key, all_state) for op in operators
                        if isinstance(op, GenerateOperator)}
        return {
            "key": key,
            "row": self._db.store.get_view_rows(self.name).get(row_key),
            "operators": {op: {"value": e.value, "error": e.error, "cost": asdict(e.cost), "fingerprint": e.fingerprint}
                          for op, e in state.items()},
            "dependencies": {op: d for op, d in dependencies.items() if d is not None},
            "decisions": [asdict(d) for d in decisions],
        }

    @property
    def version(self) -> int | None:
        """The version this view reflects (``None`` before its first build)."""
        return self._db.store.get_applied_version(self.name)

    def __repr__(self) -> str:
        return f"<View {self.name!r}: {self.definition.describe()}>"
