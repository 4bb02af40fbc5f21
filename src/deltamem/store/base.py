"""The store interface: everything deltamem knows lives behind it.

The store is the source of truth: base tables and their change log, the catalog, per-operator state, every version of
every view row, the memo cache and the usage ledger. Indexes, KV caches and in-memory memos are rebuildable from it or
safely lost. Engine code talks to this interface only; SQL lives in the implementations (``store/sqlite.py``).

Each mutating method is one atomic transaction: after a crash a commit is either wholly there or wholly absent.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from deltamem.changes import Change, ColumnType, ExpireMode, Row, RowKey, RowWrite
from deltamem.llm.base import Completion


@dataclass(frozen=True)
class TableDef:
    """A base table. ``columns`` is ``None`` until declared or inferred from the first row."""

    name: str
    key: str
    columns: dict[str, ColumnType] | None = None
    ttl: float | None = None  # seconds
    ttl_column: str | None = None  # None: the TTL runs from the row's last write
    expire: ExpireMode = ExpireMode.RETRACT

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "key": self.key, "ttl": self.ttl, "ttl_column": self.ttl_column,
            "expire": self.expire.value,
            "columns": None if self.columns is None else {c: t.value for c, t in self.columns.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TableDef":
        columns = data["columns"]
        return cls(
            name=data["name"], key=data["key"], ttl=data["ttl"], ttl_column=data["ttl_column"],
            expire=ExpireMode(data["expire"]),
            columns=None if columns is None else {c: ColumnType(t) for c, t in columns.items()},
        )


@dataclass(frozen=True)
class ViewDef:
    """A view: its name and its operator plan as JSON (see ``deltamem.plan``)."""

    name: str
    plan: dict[str, Any]


@dataclass(frozen=True)
class CallCost:
    """What producing one stored LLM value cost when it was paid (the unit of the full-recompute baseline)."""

    calls: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0

    def __add__(self, other: "CallCost") -> "CallCost":
        return CallCost(
            self.calls + other.calls, self.prompt_tokens + other.prompt_tokens,
            self.output_tokens + other.output_tokens, self.seconds + other.seconds,
        )


@dataclass(frozen=True)
class StateEntry:
    """One operator's stored result for one input row: replayed on retraction, reused while ``fingerprint`` holds.

    ``fingerprint`` hashes everything the value depends on (rendered prompt, model, parameters); ``error`` is set
    (and ``value`` is None) when the call failed after its retries.
    """

    key: RowKey
    fingerprint: str
    input_row: Row
    value: Any
    error: str | None = None
    cost: CallCost = CallCost()


@dataclass(frozen=True)
class Decision:
    """How one output was refreshed at one version, why, and what it cost (the decision log behind ``explain``)."""

    view: str
    key: RowKey
    version: int
    strategy: str  # skip | full | regenerate | ... ; "new" for an output's first answer, "retract" when it leaves
    reason: str
    calls: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    evidence: float | None = None  # the measure an approximate decision rested on (attention share), for calibration


@dataclass
class ViewCommit:
    """Everything one view writes for one version, applied atomically with its new ``applied_version``.

    ``outputs`` maps a key to the view's new row for it, or ``None`` when the key leaves the view.
    """

    view: str
    version: int
    state_puts: list[tuple[str, StateEntry]] = field(default_factory=list)  # (op_id, entry)
    state_deletes: list[tuple[str, RowKey]] = field(default_factory=list)  # (op_id, key)
    outputs: dict[RowKey, Row | None] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    # True when a full recompute would have rerun this view at this version; the store then adds the summed cost
    # of the view's stored values (after this commit) to the view's full-recompute baseline.
    count_baseline: bool = False


@dataclass(frozen=True)
class ChangeRow:
    """A Materialize-style change row of a view: at ``version``, ``row`` was added (+1) or removed (-1)."""

    version: int
    diff: int
    key: RowKey
    row: Row


@dataclass(frozen=True)
class HistoryEntry:
    """One version of one view row: it held from ``valid_from`` up to, not including, ``valid_to``."""

    valid_from: int
    valid_to: int | None
    row: Row


@dataclass(frozen=True)
class LedgerEntry:
    """One model call as the ledger records it. ``outcome`` is ``paid``, ``memo`` (a hit: nothing paid) or ``failed``.

    For a memo hit the token counts are what the original call cost, i.e. what the hit saved.
    """

    ts: float
    version: int | None
    view: str
    operator: str
    reason: str  # insert | update | refresh | retry
    model: str
    outcome: str
    prompt_tokens: int
    reused_tokens: int
    output_tokens: int
    seconds: float
    call_hash: str
    error: str | None = None


@dataclass(frozen=True)
class LedgerTotals:
    """Ledger sums for one (view, operator, outcome) group."""

    view: str
    operator: str
    outcome: str
    calls: int
    prompt_tokens: int
    reused_tokens: int
    output_tokens: int
    seconds: float


class Store(abc.ABC):
    """One database of deltamem state. Implementations are safe to share between the threads of one process."""

    # --- catalog ----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def put_table_def(self, table: TableDef) -> None: ...

    @abc.abstractmethod
    def get_table_defs(self) -> list[TableDef]: ...

    @abc.abstractmethod
    def put_view_def(self, view: ViewDef) -> None:
        """Create a view (unbuilt: no applied version yet) or replace an unchanged definition."""

    @abc.abstractmethod
    def get_view_defs(self) -> list[ViewDef]: ...

    # --- base tables and the change log -----------------------------------------------------------------------
    @abc.abstractmethod
    def commit(
        self, writes: Sequence[RowWrite], committed_at: float, note: str = "", table_defs: Sequence[TableDef] = ()
    ) -> tuple[int, list[Change]]:
        """Save ``table_defs`` and apply ``writes`` as the next version; return it with the changes it made (no-op writes dropped).

        A write of a row equal to the stored one, or a delete of an absent key, makes no change, but the version
        is still allocated so that a caller can always wait for the version it was given.
        """

    @abc.abstractmethod
    def get_latest_version(self) -> int: ...

    @abc.abstractmethod
    def get_changes(self, first: int, last: int, tables: Iterable[str]) -> list[Change]:
        """Changes to ``tables`` with ``first <= version <= last``, in version order."""

    @abc.abstractmethod
    def get_rows(self, table: str) -> dict[RowKey, Row]: ...

    @abc.abstractmethod
    def get_row(self, table: str, key: RowKey) -> Row | None: ...

    @abc.abstractmethod
    def get_snapshot(self, tables: Sequence[str]) -> tuple[int, dict[str, dict[RowKey, Row]]]:
        """The latest version and each table's rows at it, read consistently."""

    @abc.abstractmethod
    def expire(self, tables: dict[str, ExpireMode], now: float) -> tuple[int, list[Change]] | None:
        """Delete every row of ``tables`` whose TTL ended by ``now`` as one new version; ``None`` if none had."""

    @abc.abstractmethod
    def get_commit_time(self, version: int) -> float | None: ...

    # --- views --------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def get_applied_version(self, view: str) -> int | None:
        """The version a view reflects, or ``None`` before its first build."""

    @abc.abstractmethod
    def get_state(self, view: str, op_id: str, keys: Iterable[RowKey]) -> dict[RowKey, StateEntry]: ...

    @abc.abstractmethod
    def get_failed_state(self, view: str, op_id: str) -> list[StateEntry]: ...

    @abc.abstractmethod
    def get_all_state(self, view: str) -> dict[tuple[str, RowKey], StateEntry]:
        """Every stored value of a view, keyed by (op_id, key): for inspection and tests."""

    @abc.abstractmethod
    def get_state_cost(self, view: str) -> CallCost:
        """The summed cost of a view's stored values: what recomputing the view once, now, would cost."""

    @abc.abstractmethod
    def commit_view(self, commit: ViewCommit) -> None:
        """Apply one view's writes for one version and advance its applied version; a no-op if already applied."""

    @abc.abstractmethod
    def get_view_rows(self, view: str, as_of: int | None = None) -> dict[RowKey, Row]: ...

    @abc.abstractmethod
    def get_view_history(self, view: str, key: RowKey) -> list[HistoryEntry]: ...

    @abc.abstractmethod
    def get_view_changes(self, view: str, first: int, last: int) -> list[ChangeRow]:
        """Change rows with ``first <= version <= last``: per version, retractions before insertions."""

    @abc.abstractmethod
    def get_decisions(self, view: str, key: RowKey | None = None, strategy: str | None = None) -> list[Decision]:
        """The decision log of a view (of one output, of one strategy, if given), oldest first."""

    @abc.abstractmethod
    def get_baselines(self) -> dict[str, tuple[int, CallCost]]:
        """Per view: (number of refreshes a full recompute would have run, their summed cost)."""

    # --- memo and ledger ----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def get_memo(self, call_hash: str) -> Completion | None: ...

    @abc.abstractmethod
    def record_call(self, entry: LedgerEntry, memo: Completion | None = None) -> None:
        """Append ``entry`` to the ledger and, for a paid call, store its result in the memo: one transaction."""

    @abc.abstractmethod
    def get_ledger_totals(self) -> list[LedgerTotals]: ...

    @abc.abstractmethod
    def get_ledger(self, view: str | None = None) -> list[LedgerEntry]:
        """Every ledger entry (of one view, if given), oldest first."""

    @abc.abstractmethod
    def close(self) -> None: ...
