"""How a SQL store writes a view's commits: state, rows, decisions and the full-recompute baseline, in bulk.

    writer = ViewCommitWriter(dialect, row_column="row", row_id="rowid")
    writer.write(conn, commits, applied, view_id)    # in the store's write transaction, versions in order

The commits of several versions of one view (a backlog computed in one pass) are written as if each had been
committed alone, in order: each version's rows keep their own span in the history, and each counted version adds its
own refresh to the baselines. But the work is done once for them all: the stored rows and state they touch are read
in one query each, the transitions between the versions are worked out here, and what is left is written with one
statement per kind. So the cost grows with what the commits touch, never with the view's size or their number.

Invariant: after ``write`` (the transaction committed), ``op_state`` holds the operators' state at the last version
and the current rows of ``view_rows`` are the view at it. ``_state_costs`` holds, per view, the summed cost of its
stored values at the applied version it names, as this store handle last computed it; an entry whose version or
incarnation is not what the store holds now (another handle committed, or the transaction rolled back) is ignored
and the sum read again from ``op_state``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from deltamem.changes import Row, RowKey
from deltamem.store.base import CallCost, StateEntry, ViewCommit
from deltamem.store.sql_dialect import Connection, Dialect
from deltamem.store.state_vectors import pack_vectors

STATE_COLUMNS = "key, fingerprint, input_row, value, vectors, error, calls, prompt_tokens, output_tokens, seconds"
DECISION_COLUMNS = ("view, key, version, strategy, reason, calls, prompt_tokens, reused_tokens, output_tokens, "
                    "seconds, evidence")
_REFRESH_COST_COLUMNS = "view, version, calls, prompt_tokens, output_tokens, seconds"

StateKey = tuple[str, RowKey]  # (op_id, key)


@dataclass(frozen=True)
class _StateCost:
    view_id: int | None
    version: int
    total: CallCost


@dataclass
class _RowSpan:
    """A row of ``view_rows`` as this write leaves it: stored already (``row_id``), or new from ``valid_from``."""

    row: Row
    row_id: Any = None
    valid_from: int | None = None
    valid_to: int | None = None


class ViewCommitWriter:
    """Writes ``ViewCommit``s for one store handle; its only state is the cache of each view's state cost."""

    def __init__(self, dialect: Dialect, *, row_column: str, row_id: str):
        self.dialect = dialect
        self.row_column = row_column
        self.row_id = row_id
        self._state_costs: dict[str, _StateCost] = {}

    def write(self, conn: Connection, commits: Sequence[ViewCommit], applied: int | None,
              view_id: int | None) -> None:
        """Apply ``commits`` (one view's, versions ascending, all after ``applied``; incarnation ``view_id``), in the
        caller's transaction."""
        view = commits[0].view
        counted = [commit for commit in commits if commit.count_baseline]
        state: dict[StateKey, StateEntry | None] = {}  # per key the commits touch, its entry after the last
        for commit in commits:
            state.update(_final_writes(commit))
        total = self._state_cost_before(conn, view, applied, view_id)
        # Three reads, all sent before any result is read: one round trip where the store pipelines (PostgreSQL).
        keys = list(dict.fromkeys(key for commit in commits for key in commit.outputs))
        reads = [self._stored_costs_reads(view, state), self._known_calls_reads(commits),
                 self._current_rows_reads(view, keys)]
        cursors = [[conn.execute(self.dialect.sql(sql), params) for sql, params in group] for group in reads]
        stored_found, known_found, current_found = [[row for c in group for row in c.fetchall()] for group in cursors]
        stored = {(op, RowKey(key)): self.dialect.cost(*cost) for op, key, *cost in stored_found}
        known_calls: dict[str, bool] = {}
        for h, in_baseline in known_found:
            known_calls[h] = known_calls.get(h, False) or bool(in_baseline)
        current_rows = {RowKey(key): _RowSpan(self.dialect.decode(row), row_id=row_id)
                        for row_id, key, row in current_found}
        charged: set[str] = set()
        refreshes: list[tuple] = []
        full_sum = no_memo_sum = CallCost()
        current = dict(stored)  # (op, key) -> the cost of the value stored there as of the version being replayed
        for commit in commits:
            for op_key in _touched(commit):
                total = _minus(total, current.pop(op_key, CallCost()))
            for op_key, entry in _final_writes(commit).items():
                if entry is not None:
                    current[op_key] = entry.cost
                    total = total + entry.cost
            if commit.count_baseline:
                full = self._full_recompute_cost(commit, known_calls, charged)
                refreshes.append((view, commit.version, *cost_tuple(full)))
                full_sum, no_memo_sum = full_sum + full, no_memo_sum + total
        self._state_costs[view] = _StateCost(view_id, commits[-1].version, total)
        self._write_state(conn, view, state)
        self._write_rows(conn, view, commits, current_rows)
        self.dialect.executemany(
            conn, f"INSERT INTO decisions ({DECISION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(d.view, d.key, d.version, d.strategy, d.reason, d.calls, d.prompt_tokens, d.reused_tokens,
              d.output_tokens, d.seconds, d.evidence) for commit in commits for d in commit.decisions])
        self.dialect.insert_keys(conn, "baseline_memo", sorted(charged))
        self.dialect.executemany(conn, self.dialect.upsert("refresh_costs", _REFRESH_COST_COLUMNS, "view, version"),
                                 refreshes)
        conn.execute(self.dialect.sql(
            "UPDATE view_defs SET applied_version = ?, refreshes = refreshes + ?, base_calls = base_calls + ?, "
            "base_prompt_tokens = base_prompt_tokens + ?, base_output_tokens = base_output_tokens + ?, "
            "base_seconds = base_seconds + ?, nomemo_calls = nomemo_calls + ?, "
            "nomemo_prompt_tokens = nomemo_prompt_tokens + ?, nomemo_output_tokens = nomemo_output_tokens + ?, "
            "nomemo_seconds = nomemo_seconds + ? WHERE name = ?"),
            (commits[-1].version, len(counted), *cost_tuple(full_sum), *cost_tuple(no_memo_sum), view))

    def state_cost(self, conn: Connection | None, read: Callable[..., list[tuple]], view: str) -> CallCost:
        """The summed cost of ``view``'s stored values, from ``op_state`` (``read`` is the store's ``_read``)."""
        found = read("SELECT COALESCE(SUM(calls), 0), COALESCE(SUM(prompt_tokens), 0), "
                     "COALESCE(SUM(output_tokens), 0), COALESCE(SUM(seconds), 0) FROM op_state WHERE view = ?",
                     (view,), conn)
        return self.dialect.cost(*found[0])

    # --- state ------------------------------------------------------------------------------------------------------
    def _write_state(self, conn: Connection, view: str, state: dict[StateKey, StateEntry | None]) -> None:
        encode = self.dialect.encode
        self.dialect.executemany(conn, "DELETE FROM op_state WHERE view = ? AND op = ? AND key = ?",
                                 [(view, op, key) for (op, key), entry in state.items() if entry is None])
        records = []
        for (op, _key), e in state.items():
            if e is not None:
                value, vectors = pack_vectors(e.value)
                records.append((view, op, e.key, e.fingerprint, encode(e.input_row), encode(value), vectors, e.error,
                                e.cost.calls, e.cost.prompt_tokens, e.cost.output_tokens, e.cost.seconds))
        self.dialect.executemany(conn, self.dialect.upsert("op_state", f"view, op, {STATE_COLUMNS}", "view, op, key"),
                                 records)

    # --- rows -------------------------------------------------------------------------------------------------------
    def _write_rows(self, conn: Connection, view: str, commits: Sequence[ViewCommit],
                    current_rows: dict[RowKey, _RowSpan]) -> None:
        """Per version in order, close the current row of each output key whose row changed and open its new one
        (``current_rows``: the open rows of those keys before); a row opened and closed within these versions is
        inserted with both ends."""
        current: dict[RowKey, _RowSpan | None] = dict(current_rows)
        closed: list[tuple[int, Any]] = []
        opened: list[tuple[RowKey, _RowSpan]] = []
        for commit in commits:
            for key, row in commit.outputs.items():
                span = current.get(key)
                if span is not None and row is not None and span.row == row:
                    continue
                if span is not None:
                    if span.row_id is not None:
                        closed.append((commit.version, span.row_id))
                    else:
                        span.valid_to = commit.version
                current[key] = None if row is None else _RowSpan(row, valid_from=commit.version)
                if row is not None:
                    opened.append((key, current[key]))
        self.dialect.executemany(conn, f"UPDATE view_rows SET valid_to = ? WHERE {self.row_id} = ?", closed)
        self.dialect.executemany(
            conn, f"INSERT INTO view_rows (view, key, {self.row_column}, valid_from, valid_to) VALUES (?, ?, ?, ?, ?)",
            [(view, key, self.dialect.encode(span.row), span.valid_from, span.valid_to) for key, span in opened])

    def _current_rows_reads(self, view: str, keys: list[RowKey]) -> list[tuple[str, tuple]]:
        """The reads of the open rows of ``keys``: rows of ``(row id, key, row)``."""
        reads = []
        for start in range(0, len(keys), self.dialect.chunk):
            condition, params = self.dialect.in_list("key", keys[start:start + self.dialect.chunk])
            reads.append((f"SELECT {self.row_id}, key, {self.row_column} FROM view_rows WHERE view = ? "
                          f"AND {condition} AND valid_to IS NULL", (view, *params)))
        return reads

    # --- the baselines ----------------------------------------------------------------------------------------------
    def _state_cost_before(self, conn: Connection, view: str, applied: int | None, view_id: int | None) -> CallCost:
        cached = self._state_costs.get(view)
        if cached is not None and applied is not None and cached.version == applied and cached.view_id == view_id:
            return cached.total
        return self.state_cost(conn, lambda q, p, c: c.execute(self.dialect.sql(q), p).fetchall(), view)

    def _stored_costs_reads(self, view: str, touched: Iterable[StateKey]) -> list[tuple[str, tuple]]:
        """The reads of the cost of each stored value among ``touched``, before these commits: rows of ``(op, key,
        calls, prompt_tokens, output_tokens, seconds)``."""
        by_op: dict[str, list[RowKey]] = {}
        for op, key in touched:
            by_op.setdefault(op, []).append(key)
        reads = []
        for op, keys in by_op.items():
            for start in range(0, len(keys), self.dialect.chunk):
                condition, params = self.dialect.in_list("key", keys[start:start + self.dialect.chunk])
                reads.append((f"SELECT op, key, calls, prompt_tokens, output_tokens, seconds FROM op_state "
                              f"WHERE view = ? AND op = ? AND {condition}", (view, op, *params)))
        return reads

    def _known_calls_reads(self, commits: Sequence[ViewCommit]) -> list[tuple[str, tuple]]:
        """The reads of the hashes the counted commits' stored values were paid with: rows of ``(hash, 1)`` for
        those a full recompute already paid (the baseline memo), ``(hash, 0)`` for those the memo holds."""
        hashes = sorted({e.fingerprint for commit in commits if commit.count_baseline
                         for _op, e in commit.state_puts if e.cost.calls > 0 and e.error is None})
        reads = []
        for start in range(0, len(hashes), self.dialect.chunk):
            condition, params = self.dialect.in_list("call_hash", hashes[start:start + self.dialect.chunk])
            reads.append((f"SELECT call_hash, 1 FROM baseline_memo WHERE {condition} UNION ALL "
                          f"SELECT call_hash, 0 FROM memo WHERE {condition}", (*params, *params)))
        return reads

    @staticmethod
    def _full_recompute_cost(commit: ViewCommit, known: dict[str, bool], charged: set[str]) -> CallCost:
        """What a full recompute at ``commit.version`` pays beyond what the memo and the baseline memo hold then
        (``Store.commit_view``); what it pays joins ``charged`` (the baseline memo of the versions after it). Only
        the values a commit stores can be charged: a value stored earlier was, when stored, either charged or in the
        memo. The memo is read after the calls of every version were paid: a hash found there but not paid by this
        version was paid before it (a call not in the memo is paid by the version that needs it).

        NOTE: a value stored by a commit that counts no baseline (a retry at the latest version) and not memoised
        (a blended completion) is never charged."""
        costs: dict[str, CallCost] = {}
        for _op, e in commit.state_puts:
            if e.cost.calls > 0 and e.error is None:
                known_cost = costs.get(e.fingerprint)
                costs[e.fingerprint] = e.cost if known_cost is None else _max_cost(known_cost, e.cost)
        total = CallCost()
        for h, cost in costs.items():
            if h in charged or known.get(h) is True or (h in known and h not in commit.paid_calls):
                continue
            charged.add(h)
            total = total + CallCost(1, cost.prompt_tokens, cost.output_tokens, cost.seconds)
        return total


def cost_tuple(cost: CallCost) -> tuple[int, int, int, float]:
    return cost.calls, cost.prompt_tokens, cost.output_tokens, cost.seconds


def _final_writes(commit: ViewCommit) -> dict[StateKey, StateEntry | None]:
    """A commit's state writes as the store applies them: deletes first, then puts, a later put of a key winning."""
    out: dict[StateKey, StateEntry | None] = {(op, key): None for op, key in commit.state_deletes}
    for op, entry in commit.state_puts:
        out[(op, entry.key)] = entry
    return out


def _touched(commit: ViewCommit) -> set[StateKey]:
    return {(op, key) for op, key in commit.state_deletes} | {(op, e.key) for op, e in commit.state_puts}


def _minus(a: CallCost, b: CallCost) -> CallCost:
    return CallCost(a.calls - b.calls, a.prompt_tokens - b.prompt_tokens, a.output_tokens - b.output_tokens,
                    a.seconds - b.seconds)


def _max_cost(a: CallCost, b: CallCost) -> CallCost:
    return CallCost(max(a.calls, b.calls), max(a.prompt_tokens, b.prompt_tokens),
                    max(a.output_tokens, b.output_tokens), max(a.seconds, b.seconds))
