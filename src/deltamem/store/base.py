"""The store interface: everything deltamem knows lives behind it.

The store is the source of truth: base tables and their change log, the catalog, per-operator state, every version of
every view row, the memo cache and the usage ledger. Indexes, KV caches and in-memory memos are rebuildable from it or
safely lost. Engine code talks to this interface only; SQL lives in the implementations (``store/sqlite.py``).
Several processes may share one store: the catalog each caches is checked against the store's (``get_catalog_version``,
``commit(checked=...)``), and views and calls are shared out through it (``deltamem.store.coordination``).

Each mutating method is one atomic transaction: after a crash a commit is either wholly there or wholly absent.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from deltamem.changes import Change, ColumnType, ExpireMode, Row, RowKey, RowWrite
from deltamem.errors import DependentViews, NoTable, NoView, did_you_mean
from deltamem.llm.base import Completion
from deltamem.shards import is_shard_view
from deltamem.store.coordination import Coordination
from deltamem.store.positions import SourcePositions


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
        # ``column_order`` keeps the declared order, which a sorted-key JSON encoding of ``columns`` would lose: it is
        # the order of SELECT * and of a subscription's columns in every process, not only in the one that created it.
        return {
            "name": self.name, "key": self.key, "ttl": self.ttl, "ttl_column": self.ttl_column,
            "expire": self.expire.value,
            "columns": None if self.columns is None else {c: t.value for c, t in self.columns.items()},
            "column_order": None if self.columns is None else list(self.columns),
        }

    def describe_columns(self) -> str:
        """``(id int, text text)``, or ``no columns yet``: what an error message shows of the columns."""
        if self.columns is None:
            return "no columns yet"
        return "(" + ", ".join(f"{c} {t.value}" for c, t in self.columns.items()) + ")"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TableDef":
        columns = data["columns"]
        # A definition stored before ``column_order`` existed has its columns in name order.
        order = data.get("column_order") or sorted(columns or {})
        return cls(
            name=data["name"], key=data["key"], ttl=data["ttl"], ttl_column=data["ttl_column"],
            expire=ExpireMode(data["expire"]),
            columns=None if columns is None else {c: ColumnType(columns[c]) for c in order},
        )


@dataclass(frozen=True)
class ViewDef:
    """A view: its name, its operator plan as JSON (see ``deltamem.relation``) and its incarnation ``id``.

    ``id`` is given by the store when the view is created and never reused, so a view dropped and created again under
    the same name is another view: work computed for the old one (a maintenance commit in flight, a subscription, a
    search index) can tell, and is discarded. ``None`` for a definition not stored yet.
    """

    name: str
    plan: dict[str, Any]
    id: int | None = None


def get_plan_sources(plan: dict[str, Any]) -> set[tuple[str, str]]:
    """Every ``(kind, name)`` a view plan reads directly: ``("table", "docs")``, ``("view", "insights")``.

    >>> sorted(get_plan_sources({"op": "sem_join", "left": {"source": "table", "name": "a"},
    ...                          "right": {"source": "view", "name": "b"}, "instruction": "{x:left}"}))
    [('table', 'a'), ('view', 'b')]
    """
    found: set[tuple[str, str]] = set()
    stack: list[Any] = [plan]
    while stack:  # a walk over the JSON, so that a new operator's inputs are found without a change here
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("source") in ("table", "view") and isinstance(node.get("name"), str):
                found.add((node["source"], node["name"]))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def resolve_drop(tables: Sequence[str], views: Sequence[str], *, cascade: bool, table_names: Iterable[str],
                 plans: dict[str, dict[str, Any]]) -> list[str]:
    """The views a drop of ``tables`` and ``views`` removes, in creation order (``plans`` maps every view to its plan,
    in creation order): those named, then every view that reads a dropped table or view, transitively. Raises
    ``NoTable``/``NoView`` for a missing name, and ``DependentViews`` when views not named read what is dropped and
    ``cascade`` is False (Postgres's RESTRICT). A store calls this inside the transaction that drops.
    """
    table_names = set(table_names)
    for name in tables:
        if name not in table_names:
            raise NoTable(f'Table "{name}" does not exist.' + did_you_mean(name, table_names))
    for name in views:
        if name not in plans:
            raise NoView(f'View "{name}" does not exist.' + did_you_mean(name, plans))
    reached = {("table", name) for name in tables} | {("view", name) for name in views}
    reads: dict[str, tuple[str, str]] = {}  # a dependent view -> one dropped thing it reads, for the message
    grew = True
    while grew:  # to a fixed point: one pass in creation order would do (it is topological); this does not rely on it
        grew = False
        for name, plan in plans.items():
            if ("view", name) in reached:
                continue
            hit = sorted(get_plan_sources(plan) & reached)
            if hit:
                reached.add(("view", name))
                reads[name] = hit[0]
                grew = True
    shown = {view: read for view, read in reads.items() if not is_shard_view(view)}  # a shard's view is named
    if reads and not cascade:
        named = ", ".join(f'{kind} "{name}"' for kind, name in [*(("table", t) for t in tables),
                                                                 *(("view", v) for v in views
                                                                   if not is_shard_view(v))])
        detail = ", ".join(f'view "{view}" reads {kind} "{name}"' for view, (kind, name) in
                           sorted(shown.items(), key=lambda item: list(plans).index(item[0])))
        dependents = tuple(view for view in plans if view in shown)
        raise DependentViews(f"Cannot drop {named} because other views depend on it: {detail}", dependents)
    return [name for name in plans if ("view", name) in reached]


@dataclass(frozen=True)
class Dropped:
    """What one drop removed, and the version it committed as."""

    tables: tuple[str, ...]
    views: tuple[str, ...]  # those named, then those CASCADE reached, in creation order
    version: int


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
class Baseline:
    """A view's full-recompute counterfactual, summed over its ``refreshes`` (see ``Store.commit_view``).

    ``cost``: a full recompute in this engine, the memo answering identical calls. ``no_memo``: every stored value
    paid again at every refresh, as a system with neither incremental maintenance nor a memo would.
    """

    refreshes: int = 0
    cost: CallCost = CallCost()
    no_memo: CallCost = CallCost()

    def __add__(self, other: "Baseline") -> "Baseline":
        return Baseline(self.refreshes + other.refreshes, self.cost + other.cost, self.no_memo + other.no_memo)


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
    evidence: float | None = None  # the attention share on what changed that a skip or a verification rested on


@dataclass
class ViewCommit:
    """Everything one view writes for one version, applied atomically with its new ``applied_version``.

    ``outputs`` maps a key to the view's new row for it, or ``None`` when the key leaves the view.
    """

    view: str
    version: int
    view_id: int | None = None  # the incarnation it was computed for (``ViewDef.id``); None: whichever is there
    state_puts: list[tuple[str, StateEntry]] = field(default_factory=list)  # (op_id, entry)
    state_deletes: list[tuple[str, RowKey]] = field(default_factory=list)  # (op_id, key)
    outputs: dict[RowKey, Row | None] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    # True when a full recompute would have rerun this view at this version; the store then adds to the view's
    # full-recompute baseline what that recompute would pay in this engine (``Store.commit_view``).
    count_baseline: bool = False
    # The memo hashes of the calls this refresh paid (not those the memo answered): a full recompute would have
    # paid them too, though they are in the memo by the time the view commits.
    paid_calls: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class ChangeRow:
    """A Materialize-style change row of a view: at ``version``, ``row`` was added (+1) or removed (-1).

    ``key`` is the row's key as the user sees it (an int or a str, as ``view.history`` and ``view.explain`` take
    it), not its stored text: ``encode_key(change.key)`` gives that."""

    version: int
    diff: int
    key: str | int
    row: Row


@dataclass(frozen=True)
class HistoryEntry:
    """One version of one view row: it held from ``valid_from`` up to, not including, ``valid_to``."""

    valid_from: int
    valid_to: int | None
    row: Row


@dataclass(frozen=True)
class LedgerEntry:
    """One model call as the ledger records it. ``outcome`` is ``paid``, ``memo`` (a hit: nothing paid), ``failed``,
    or ``interrupted``: the call was in flight when its process died, so it may have been paid and its result is lost.

    For a memo hit the token counts are what the original call cost, i.e. what the hit saved; an interrupted call's
    are 0 (unknown), its ``ts`` is when it started, and its ``error`` names the process.
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
class CallInFlight:
    """A call this process is about to pay (``Store.begin_call``): on the store until its ledger entry is written."""

    started_at: float
    version: int | None
    view: str
    operator: str
    reason: str
    model: str
    call_hash: str


@dataclass(frozen=True)
class CallRecord:
    """One outcome for ``Store.record_calls``: its ledger entry, a paid call's memo value, the call in flight it ends."""

    entry: LedgerEntry
    memo: Completion | None = None
    in_flight: int | None = None


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


class Store(Coordination, SourcePositions, abc.ABC):
    """One database of deltamem state. Implementations are safe to share between the threads of one process, and
    several processes may open one store (see ``deltamem.store.coordination``)."""

    # True when each statement is a round trip over a network: maintenance then spends CPU to save round trips
    # (it plans a pass's calls and claims them in one round: ``deltamem.pass_plan``).
    remote: ClassVar[bool] = False

    # --- catalog ----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def put_table_def(self, table: TableDef) -> None:
        """Create table ``table.name``; a no-op when the store has that very definition. Raises ``AlreadyExists``,
        changing nothing, when the name is a view's or another definition's (another process created it first)."""

    @abc.abstractmethod
    def get_table_defs(self) -> list[TableDef]: ...

    @abc.abstractmethod
    def get_catalog_version(self) -> int:
        """A number that changes with every change to the catalog (a table or view created, a table's columns
        inferred, a drop), so that a process can tell at the cost of one read whether the catalog it cached is
        still the store's."""

    @abc.abstractmethod
    def put_view_def(self, view: ViewDef, *, replace: bool = False) -> ViewDef:
        """Create a view (unbuilt: no applied version yet), or find an unchanged definition; return it with its
        ``id`` (a new one for a new view, the same one for an unchanged definition). Raises ``AlreadyExists``,
        changing nothing, when the name is a table's or another view's; ``replace=True`` instead puts the new plan in
        the view's place, keeping its id, state and rows (a tool switching a view's strategy)."""

    @abc.abstractmethod
    def get_view_defs(self) -> list[ViewDef]:
        """Every view, in creation order (a view is created after the views it reads)."""

    @abc.abstractmethod
    def get_view_id(self, view: str) -> int | None:
        """The incarnation ``id`` of view ``view``, or ``None`` when there is no such view (never was, or dropped)."""

    @abc.abstractmethod
    def drop(
        self, tables: Sequence[str], views: Sequence[str], *, cascade: bool, committed_at: float, note: str = "",
        writes: Sequence[RowWrite] = (), table_defs: Sequence[TableDef] = (), checked: Sequence[TableDef] = (),
    ) -> Dropped:
        """Remove ``tables`` and ``views`` with everything stored for them, as one transaction that also commits
        ``table_defs`` and ``writes`` as the next version (``checked`` as for ``commit``; a drop always takes a
        version, so it has a place in the commit log); return what was removed. Raises, changing nothing, when a name
        is missing (``NoTable``/``NoView``) or when other views read what is dropped and ``cascade`` is False
        (``DependentViews``); with ``cascade`` those views are dropped too, transitively. A dropped view's lease ends.

        A table takes its rows and its change log with it. A view takes its rows and their history, its operator
        state and its decisions. The ledger stays, and so does the full-recompute baseline of a dropped view, both
        filed under its name: money already spent is still in ``usage()``. The memo stays: it is keyed by the exact
        call, not by view, so a view created again answers identical calls from it.
        """

    # --- base tables and the change log -----------------------------------------------------------------------
    @abc.abstractmethod
    def commit(
        self, writes: Sequence[RowWrite], committed_at: float, note: str = "", table_defs: Sequence[TableDef] = (),
        checked: Sequence[TableDef] = (),
    ) -> tuple[int | None, list[Change]]:
        """Save ``table_defs`` and apply ``writes`` as the next version; return it with the changes it made.

        ``checked`` are the definitions the caller checked ``writes`` (and inferred ``table_defs``) against: when the
        store holds another definition of one of those tables by now (another process dropped and re-created it, or
        inferred its columns first), the commit raises ``CatalogChanged`` and changes nothing.

        A version is a change: a write of a row equal to the stored one (it only renews the row's TTL) and a delete
        of an absent key change nothing, and when no write changes anything no version is made (``None, []``).
        With no ``writes`` at all, an empty version is committed (``db.refresh()``: failed calls are retried at it).
        """

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """One write transaction around the calls this thread makes in the block: taken at once, so every other
        writer, in this process or another, waits until the block ends; reads in it see the latest commit, and its
        writes (``commit``, ``drop``) are kept together, or rolled back together if the block raises. That makes a
        read-modify-write atomic. Other threads' calls wait for the block: keep it short.
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

    @abc.abstractmethod
    def get_commit_times(self, first: int, last: int) -> dict[int, float]:
        """When each version from ``first`` to ``last`` was committed (one read, for logs and charts)."""

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

    def commit_view(self, commit: ViewCommit) -> bool:
        """``commit_views`` of one commit."""
        return self.commit_views([commit])[0]

    @abc.abstractmethod
    def commit_views(self, commits: Sequence[ViewCommit]) -> list[bool]:
        """Apply one view's writes for each of ``commits`` (versions ascending) and advance its applied version, in
        one transaction, as if each had been committed alone in turn; return, per commit, whether it was applied.

        A no-op (False) if that version is already applied, or if the view is gone or is another incarnation than
        ``commit.view_id``: then the work was for a view that has been dropped.

        With ``commit.count_baseline``, the view's full-recompute baseline grows by one refresh, costed after the
        commit's writes. Every stored value with a paid call (``cost.calls``, no error) has as fingerprint the memo
        hash of the call that would produce it now, so a full recompute at this version asks for exactly those
        calls. Of them, it pays once for each distinct hash that neither the memo held before this refresh (a call
        in ``commit.paid_calls`` was not there yet) nor an earlier refresh's full recompute already paid (the
        baseline memo, which remembers what the counterfactual paid where deltamem skipped); each is costed at what
        its stored value cost when paid. For ``strategy="full"`` that is exactly what the view paid. ``no_memo``
        grows by the summed cost of every stored value, duplicates included.
        """

    @abc.abstractmethod
    def get_view_rows(self, view: str, as_of: int | None = None) -> dict[RowKey, Row]: ...

    @abc.abstractmethod
    def count_view_rows(self, view: str) -> tuple[int, int]:
        """The view's current rows: how many, and how many carry an ``_error`` (a failed call)."""

    @abc.abstractmethod
    def get_view_history(self, view: str, key: RowKey) -> list[HistoryEntry]: ...

    @abc.abstractmethod
    def get_view_changes(self, view: str, first: int, last: int) -> list[ChangeRow]:
        """Change rows with ``first <= version <= last``: per version, retractions before insertions; each
        ``key`` decoded (``decode_key``)."""

    @abc.abstractmethod
    def get_decisions(self, view: str, key: RowKey | None = None, strategy: str | None = None) -> list[Decision]:
        """The decision log of a view (of one output, of one strategy, if given), oldest first."""

    @abc.abstractmethod
    def get_baselines(self) -> dict[str, Baseline]:
        """Per view name: the refreshes a full recompute would have run and what they would have paid, with and
        without a memo, including what dropped views of that name had accrued."""

    @abc.abstractmethod
    def get_costs_by_version(self) -> list[tuple[int, CallCost, CallCost]]:
        """Per version, in order: (version, what deltamem paid at it, what a full recompute at it would have paid)."""

    # --- memo and ledger ----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def get_memo(self, call_hash: str) -> Completion | None: ...

    def record_call(self, entry: LedgerEntry, memo: Completion | None = None, in_flight: int | None = None) -> None:
        """``record_calls`` of one call."""
        self.record_calls([CallRecord(entry, memo, in_flight)])

    @abc.abstractmethod
    def record_calls(self, records: Sequence[CallRecord]) -> None:
        """Per record, append its entry to the ledger and, for a paid call, store its result in the memo, and end
        the call in flight ``in_flight`` (``begin_call``'s id) and, for a ``paid`` or ``failed`` call, this store
        handle's claim on it (``claim_calls``): all of them in one transaction (a group commit)."""

    @abc.abstractmethod
    def begin_call(self, call: CallInFlight) -> int:
        """Note, before the backend is asked, that this process is paying ``call``; return the id that
        ``record_call`` takes to end it. A call whose process dies before then is left for ``take_interrupted_calls``.
        """

    @abc.abstractmethod
    def take_interrupted_calls(self) -> list[LedgerEntry]:
        """Move the calls in flight of processes that are gone to the ledger, as ``interrupted`` entries, and return
        them, oldest first. One transaction, so each is taken once, by one process; a call of a live process (this
        one or another), or of one this process cannot check, stays where it is."""

    @abc.abstractmethod
    def get_ledger_totals(self) -> list[LedgerTotals]: ...

    @abc.abstractmethod
    def get_ledger(self, view: str | None = None) -> list[LedgerEntry]:
        """Every ledger entry (of one view, if given), oldest first."""

    @abc.abstractmethod
    def close(self) -> None: ...
