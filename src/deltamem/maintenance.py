"""View maintenance: build new views, apply every committed version to every view, in order, exactly once.

    db.maintainer.notify()   # after a commit; the background thread takes it from there

For one view and one version v the maintainer reads the source's deltas at v, runs them through the view's
operators (which call the model through the runner, memo first), and commits the operator state, the output rows and
``applied_version = v`` in one store transaction. So after a crash a view is exactly at some version: it resumes
from the next one, and the calls it had already paid come back from the memo.

::

    versions   ... a-1 | a | a+1 ... latest
    view            done ^  pending ---->     a = applied_version; each pending version with changes for the
                                              view is one view commit; the rest are skipped in one step

A backlog is brought up in passes where the view's operators allow it (``Operator.reads_state_through_context``):
a pass computes several versions in order, each on the state the earlier ones left, then commits them in one store
transaction, each still with its own rows in the history (``_apply_pass``). On a remote store the pass's calls are
planned by a dry run and paid in one round before it is computed (``deltamem.pass_plan``).

Several processes on one file share the views out: this maintainer works only on the views whose lease it holds
(``deltamem.leases``), and a reader of a view another process maintains waits for that process's commits (the
background thread looks every ``poll_interval``; inline, ``wait_for`` polls).

A view whose maintenance raises (any exception: a model call that failed where no row can hold the error, a bug)
stays at the last version it committed and is tried again later, after a backoff that doubles with each failure in
a row; the other views go on, except those that read it, which wait for it. Readers see the failure: a fresh read
raises ``MaintenanceError`` naming it, and ``rows().error`` holds it until the view catches up.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from deltamem.changes import Delta, ExpireMode, RowKey, encode_key, key_order
from deltamem.errors import FreshnessTimeout, MaintenanceError, NoView
from deltamem.leases import DEFAULT_LEASE_TIMEOUT, ViewLeases
from deltamem.operators.base import MultiInputOperator, Operator, OperatorContext
from deltamem.operators.shard_union import is_shard_union
from deltamem.pass_plan import prepay_pass, worth_planning
from deltamem.relation import Plan, build_operators, plan_inputs
from deltamem.shards import ShardFilter
from deltamem.store.base import StateEntry, ViewCommit, ViewDef, get_plan_sources
from deltamem.subscribe import Subscription

if TYPE_CHECKING:
    from deltamem.engine import Database


MAX_RETRY_DELAY = 60.0  # seconds: the longest a failing view waits for its next try
# One pass over a backlog (``Maintainer._apply_pass``) computes versions for at most this long, or this many input
# changes, before it commits them: long enough to share a commit among many small versions, short enough that a
# process killed in a pass loses little paid work (its calls are paid again) and readers see progress.
PASS_SECONDS = 0.05
PASS_MAX_CHANGES = 5000
LEASED_ELSEWHERE_POLL = 0.05  # seconds between looks, inline, at a view another process maintains


@dataclass
class _PassState:
    """The view's state as the store held it when a pass began, read once a pass (``OperatorContext``'s
    ``stored_failures`` and ``stored_state``)."""

    failures: dict[str, list[StateEntry]] = field(default_factory=dict)
    entries: dict[str, dict[RowKey, StateEntry | None]] = field(default_factory=dict)


class _ViewGone(Exception):
    """The view being maintained was dropped meanwhile: stop working on it (never leaves this module)."""


@dataclass(frozen=True)
class ViewFailure:
    """Why maintaining one incarnation of a view failed, how many times in a row, and when the background thread
    tries it again (``time.monotonic()``)."""

    view_id: int | None
    error: Exception
    attempts: int
    retry_at: float

    def describe(self, view: str) -> str:
        return f'Maintenance of view "{view}" failed ({self.attempts}x in a row, retried in the background): ' \
               f"{type(self.error).__name__}: {self.error}"


class Maintainer:
    """Keeps every view of one database up to date, on a background thread or, with ``background=False``, inline.

    Only one thread maintains at a time (``_work``). ``_changed`` wakes the background thread on commits and wakes
    readers and subscribers after each view commit, and guards ``_failures``: per view whose last try raised, its
    ``ViewFailure`` (cleared when it catches up). ``error`` holds what failed outside any one view on the last
    background pass (``db.expire()``, say), retried the same way, or what stopped the thread (a ``BaseException``).
    """

    def __init__(self, db: "Database", *, background: bool, poll_interval: float,
                 lease_timeout: float = DEFAULT_LEASE_TIMEOUT, fair_share: bool = False, maintain: bool = True):
        self.db = db
        self.background = background
        self.poll_interval = poll_interval
        # Held by the background thread for as long as it runs (renewed at each pass); inline, for one catch-up.
        self.leases = ViewLeases(db.store, timeout=lease_timeout, fair_share=fair_share)
        self.maintains = maintain  # False: takes no lease; other processes maintain every view
        self.error: BaseException | None = None
        self._work = threading.Lock()
        self._changed = threading.Condition()
        self._view_commits = 0  # view commits made by this process, or seen made by others: what change feeds wait on
        self._applied_elsewhere: dict[str, int] = {}  # per view another process maintains: the applied version seen
        self._dirty = True
        self._stopping = False
        self._subscriptions: list[Subscription] = []
        self._failures: dict[str, ViewFailure] = {}
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name="deltamem-maintenance", daemon=True)
            self._thread.start()

    # --- public ---------------------------------------------------------------------------------------------------
    def notify(self) -> None:
        with self._changed:
            self._dirty = True
            self._changed.notify_all()

    def stop(self) -> None:
        for subscription in self._subscriptions:
            subscription.close()
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join()
        self.leases.release()  # another process takes the views over at once

    def wait_for(self, view: str, version: int, timeout: float | None) -> None:
        """Return once ``view`` reflects ``version``; raise ``FreshnessTimeout``, ``MaintenanceError``, or ``NoView``
        when the view is dropped while this waits."""
        if not self.background:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                self.catch_up_all()
                blocking = self._blocking_failure(view)
                if blocking is not None and self._applied(view) < version:
                    raise blocking[1].error  # inline, the caller gets the error itself
                if self._applied(view) >= version or view not in self.db._views or \
                        (self.maintains and not self._leased_elsewhere(view)):
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    behind, seconds = self.db._lag(max(self._applied(view), 0), self.db.version)
                    raise FreshnessTimeout(
                        f'View "{view}" reflects version {self._applied(view)}, not yet {version}, after waiting '
                        f"{timeout:.3g} s for the process that maintains it: it is {behind} "
                        f'version{"s" if behind != 1 else ""} behind ({seconds:.1f} s)', view)
                time.sleep(LEASED_ELSEWHERE_POLL)  # another process maintains it (or a view it reads): wait for it
        with self._changed:
            ok = self._changed.wait_for(
                lambda: self.error is not None or view not in self.db._views or self._applied(view) >= version
                or self._blocking_failure(view) is not None,
                timeout=timeout,
            )
        if self.error is not None:
            raise MaintenanceError(f"View maintenance failed: {self.error}") from self.error
        if view not in self.db._views:
            raise NoView(f'View "{view}" was dropped')
        blocking = self._blocking_failure(view)
        if blocking is not None and self._applied(view) < version:
            raise MaintenanceError(blocking[1].describe(blocking[0])) from blocking[1].error
        if not ok:
            applied = self._applied(view)
            behind, seconds = self.db._lag(max(applied, 0), self.db.version)
            raise FreshnessTimeout(
                f'View "{view}" reflects version {applied}, not yet {version}, after waiting {timeout:.3g} s: it is '
                f'{behind} version{"s" if behind != 1 else ""} behind ({seconds:.1f} s)', view)

    def wait_for_view_commit(self, seen: int, timeout: float) -> int:
        """Block until the count of view commits differs from ``seen``, or for ``timeout`` seconds; return the count.

        A count, not a bare wait, so a commit made while the caller was busy is never missed: change feeds sleep here.
        """
        with self._changed:
            self._changed.wait_for(lambda: self._view_commits != seen, timeout)
            return self._view_commits

    def subscribe(self, view: str, callback, *, snapshot: bool) -> Subscription:
        if not self.background:
            self.catch_up_all()
        subscription = Subscription(self.db.store, view, callback, snapshot=snapshot, wakeup=self._changed)
        self._subscriptions.append(subscription)
        return subscription

    def view_failure(self, view: str) -> str | None:
        """Why ``view`` cannot catch up now (its own failure, or that of a view it reads), or None."""
        blocking = self._blocking_failure(view)
        return None if blocking is None else blocking[1].describe(blocking[0])

    def catch_up_all(self) -> None:
        """Bring every view to the latest version, sources before the views that read them.

        A view that raises is recorded in ``_failures`` and left behind; the others go on. In the background, a
        failed view is tried again once its backoff has passed; inline, every call tries it again.

        A view dropped meanwhile (here or by another process) is left at once: what was computed for it is discarded
        by the store (its commit names the incarnation, ``ViewDef.id``), and an error it raised is moot.
        """
        with self._work:
            self.db._refresh_catalog()  # views another process created are this one's to maintain too
            try:
                self._catch_up_held()
            finally:
                if not self.background:
                    self.leases.release()  # inline maintenance holds its views for one catch-up only

    def _catch_up_held(self) -> None:
        """``catch_up_all``'s work, on the views whose lease this maintainer takes or renews now."""
        wanted = list(self.db._views)
        if not self.background:  # only the views behind: a fresh read of fresh views writes nothing
            latest = self.db.store.get_latest_version()
            wanted = [name for name in wanted if self._applied(name) < latest]
        # A sharded view's union of its shards pays no calls: shared out apart from the views that do.
        light = {name for name in wanted if (found := self.db._views.get(name)) and is_shard_union(found.plan)}
        held = self.leases.hold(wanted, light=light) if self.maintains else set()
        for name in list(self.db._views):  # creation order is a topological order: a view reads older ones
            definition = self.db._views.get(name)
            if definition is None or name not in held:
                continue  # dropped since the list was taken, or maintained by another process
            failure = self._failures.get(name)
            if failure is not None and failure.view_id != definition.id:
                failure = None  # an older incarnation's
            if failure is not None and self.background and time.monotonic() < failure.retry_at:
                continue
            try:
                self._catch_up(definition)
            except _ViewGone:
                self._set_failure(name, None)
                continue
            except Exception as exc:  # noqa: BLE001 - one view's failure, whatever it is, must not stop the rest
                if self.db.store.get_view_id(name) != definition.id:
                    self.db._reload_view(name)  # NOTE(maintenance): it failed because it was dropped under it
                    self._set_failure(name, None)
                    continue
                attempts = 1 if failure is None else failure.attempts + 1
                retry_at = time.monotonic() + self._retry_delay(attempts)
                self._set_failure(name, ViewFailure(definition.id, exc, attempts, retry_at))
                continue
            if name in self._failures:
                self._set_failure(name, None)

    # --- the background loop --------------------------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0  # passes in a row that failed outside any one view
        while True:
            with self._changed:
                if not self._dirty and not self._stopping:
                    # Never longer than a third of the lease timeout: each pass is the heartbeat of the leases.
                    self._changed.wait(min(self.poll_interval, self.leases.timeout / 3))
                if self._stopping:
                    return
                self._dirty = False
            try:
                self.db.expire()
                self.catch_up_all()
            except Exception as exc:  # noqa: BLE001 - surfaced to readers by wait_for, and tried again after a backoff
                failures += 1
                with self._changed:
                    self.error = exc
                    self._changed.notify_all()
                    self._changed.wait_for(lambda: self._stopping, self._retry_delay(failures))
                continue
            except BaseException as exc:  # an interpreter exit: stop, and tell the readers
                with self._changed:
                    self.error = exc
                    self._changed.notify_all()
                return
            self._notice_commits_elsewhere()
            with self._changed:
                if failures:
                    failures = 0
                    self.error = None
                self._changed.notify_all()  # also: readers of a view another process maintains look again

    def _notice_commits_elsewhere(self) -> None:
        """Count the commits other processes made to the views they maintain since the last pass, so that this
        process's change feeds (``wait_for_view_commit``) wake for them as for its own."""
        seen = {name: self._applied(name) for name in list(self.db._views) if name not in self.leases.held}
        moved = any(self._applied_elsewhere.get(name, applied) != applied for name, applied in seen.items())
        self._applied_elsewhere = seen
        if moved:
            with self._changed:
                self._view_commits += 1
                self._changed.notify_all()

    def _leased_elsewhere(self, view: str) -> bool:
        """Whether another owner holds the lease of ``view`` or of a view it reads, directly or through others."""
        others = {lease.view for lease in self.db.store.get_leases() if lease.owner != self.leases.owner}
        return any(name in others for name, _definition in self._upstream(view))

    def _retry_delay(self, attempts: int) -> float:
        """Seconds before the next try after ``attempts`` failures in a row: the poll interval, doubled each time."""
        return min(MAX_RETRY_DELAY, self.poll_interval * 2 ** min(attempts - 1, 32))

    def _set_failure(self, view: str, failure: ViewFailure | None) -> None:
        with self._changed:
            if failure is None:
                self._failures.pop(view, None)
            else:
                self._failures[view] = failure
            self._changed.notify_all()  # a reader waiting for the view learns why it is not coming

    def _blocking_failure(self, view: str) -> tuple[str, ViewFailure] | None:
        """The failure that keeps ``view`` behind, with the view that has it: its own, else that of a view it reads,
        directly or through others."""
        for name, definition in self._upstream(view):
            failure = self._failures.get(name)
            if failure is not None and failure.view_id == definition.id:
                return name, failure
        return None

    def _upstream(self, view: str) -> Iterator[tuple[str, ViewDef]]:
        """``view`` and every view it reads, directly or through others, each once, with its definition."""
        seen: set[str] = set()
        pending = [view]
        while pending:
            name = pending.pop()
            definition = self.db._views.get(name)
            if name in seen or definition is None:
                continue
            seen.add(name)
            yield name, definition
            pending.extend(source for kind, source in sorted(get_plan_sources(definition.plan)) if kind == "view")

    # --- one view ---------------------------------------------------------------------------------------------------
    def _applied(self, view: str) -> int:
        applied = self.db.store.get_applied_version(view)
        return -1 if applied is None else applied

    def _catch_up(self, definition: ViewDef) -> None:
        store = self.db.store
        name = definition.name
        applied = store.get_applied_version(name)
        # Checked after that read: ids are never reused, so a match now means ``applied`` is this incarnation's, not
        # the None of a view dropped (and maybe re-created) meanwhile, which would rebuild the old one for nothing.
        if store.get_view_id(name) != definition.id:  # dropped, here or by another process
            self.db._reload_view(name)
            raise _ViewGone(name)
        inputs, operators = plan_inputs(definition.plan), build_operators(definition.plan)
        if applied is None:
            snapshot = self._snapshot(inputs)
            if snapshot is None:
                return  # a view it reads is behind the tables it reads: build on a later pass
            version, deltas = snapshot
            self._apply(definition, operators, version, deltas, building=True)
            applied = version
        latest = store.get_latest_version()
        for source in inputs.values():
            if source["source"] == "view":
                latest = min(latest, self._applied(source["name"]))
        if latest <= applied:
            return
        by_version = self._source_deltas(inputs, applied + 1, latest)
        failed = {op.op_id: store.get_failed_state(name, op.op_id) for op in operators}
        if any(failed.values()) and latest not in by_version:
            by_version[latest] = {}  # refresh at the latest version so that failed calls are retried
        versions = sorted(by_version)
        passes = all(op.reads_state_through_context for op in operators)
        stored = _PassState(failures=failed)  # the first pass reads them no more; later ones read the store anew
        done = 0
        while done < len(versions):
            if not self.leases.still_held(name):
                return  # taken over by another process (this one stalled past the lease): it goes on from here
            if passes:
                done = self._apply_pass(definition, operators, versions, done, by_version, stored)
                stored = _PassState()
            else:
                self._apply(definition, operators, versions[done], by_version[versions[done]], building=False)
                done += 1
        if (store.get_applied_version(name) or -1) < latest:
            self._commit(ViewCommit(name, latest, view_id=definition.id))

    def _apply(
        self, definition: ViewDef, operators: list[Operator], version: int, inputs: dict[str, list[Delta]], *,
        building: bool,
    ) -> None:
        self._commit(self._compute(definition, operators, version, inputs, building=building))

    def _compute(
        self, definition: ViewDef, operators: list[Operator], version: int, inputs: dict[str, list[Delta]], *,
        building: bool, pending: list[ViewCommit] | None = None, stored: _PassState | None = None,
    ) -> ViewCommit:
        """What the view writes for ``version``, computed on the store's state plus ``pending`` (the earlier
        versions of this pass, not committed yet)."""
        name = definition.name
        commit = ViewCommit(name, version, view_id=definition.id, count_baseline=any(inputs.values()))
        ctx = OperatorContext(name, version, self.db.store, self.db.runner, commit, building=building,
                              embedder=self.db._embedder, pending=pending or (),
                              stored_failures=None if stored is None else stored.failures,
                              stored_state=None if stored is None else stored.entries)
        first, rest = operators[0], operators[1:]
        deltas = first.apply_inputs(inputs, ctx) if isinstance(first, MultiInputOperator) else \
            first.apply(inputs.get("input", []), ctx)
        for operator in rest:
            deltas = operator.apply(deltas, ctx)
        for delta in deltas:
            if not delta.forget:
                commit.outputs[delta.key] = delta.after
        return commit

    def _apply_pass(self, definition: ViewDef, operators: list[Operator], versions: list[int], first: int,
                    by_version: dict[int, dict[str, list[Delta]]], stored: _PassState) -> int:
        """Compute ``versions[first]`` and as many after it as fit in one pass (``PASS_SECONDS``,
        ``PASS_MAX_CHANGES``), then write them in one store transaction (``_commit_pass``): the pass's calls (ledger,
        memo), then every version's view commit, each version with its own outputs in the history. Return the index
        of the first version left. What a pass computed before an exception is still written, then the exception
        raised. On a remote store the pass's calls are planned and paid in one round first (``prepay_pass``).
        ``stored`` is the pass's cache of the store's state (empty, or with the failures the caller just read)."""
        pending: list[ViewCommit] = []
        started, changes, index = time.monotonic(), 0, first
        with self.db.runner.deferring_records():  # the pass's calls are written when it ends, first
            try:
                planned_end = first + prepay_pass(
                    operators, versions[first:], by_version, view=definition.name, store=self.db.store,
                    runner=self.db.runner, embedder=self.db._embedder, stored_failures=stored.failures,
                    stored_state=stored.entries, max_seconds=PASS_SECONDS, max_changes=PASS_MAX_CHANGES,
                ) if worth_planning(self.db.store, versions[first:], by_version) else 0
                while index < len(versions):
                    if planned_end > first:
                        if index == planned_end:
                            break  # the versions planned, every one: a prepaid call is taken where it is asked
                    elif pending and (time.monotonic() - started >= PASS_SECONDS or changes >= PASS_MAX_CHANGES):
                        break
                    inputs = by_version[versions[index]]
                    pending.append(self._compute(definition, operators, versions[index], inputs, building=False,
                                                 pending=pending, stored=stored))
                    index += 1
                    changes += sum(len(deltas) for deltas in inputs.values())
            finally:
                self._commit_pass(pending)
        return index

    def _commit_pass(self, pending: list[ViewCommit]) -> None:
        """Write a pass: its calls kept back so far, then its view commits, in one store transaction (one durable
        commit, not two). The view commits run in a nested one (a savepoint), so a view commit that raises still
        leaves the calls written: paid calls are never lost with a view commit."""
        if not pending:  # nothing computed (the first version raised): only calls to write, if any
            self.db.runner.write_deferred()
            return
        failure: Exception | None = None
        applied: list[bool] = []
        with self.db.store.transaction():
            self.db.runner.write_deferred()
            try:
                applied = self.db.store.commit_views(pending)
            except Exception as exc:  # noqa: BLE001 - raised once the calls are committed
                failure = exc
        if failure is not None:
            raise failure
        for commit, done in zip(pending, applied, strict=True):  # outside the transaction: readers wait on
            self._committed(commit, done)  # ``_changed`` while they read the store

    def _commit(self, commit: ViewCommit) -> None:
        self._committed(commit, self.db.store.commit_view(commit))

    def _committed(self, commit: ViewCommit, applied: bool) -> None:
        """Wake the readers of a view commit the store has just made (``applied``) or found moot."""
        with self._changed:
            self._view_commits += 1
            self._changed.notify_all()
        if not applied and self.db.store.get_view_id(commit.view) != commit.view_id:
            raise _ViewGone(commit.view)  # not "already applied": the view was dropped while this was computed

    def _snapshot(self, inputs: dict[str, Plan]) -> tuple[int, dict[str, list[Delta]]] | None:
        """Every input's rows at one version, as inserts; None when no such version is readable yet (the tables'
        latest version is past what a view input reflects)."""
        store = self.db.store
        tables = [source["name"] for source in inputs.values() if source["source"] == "table"]
        views = {source["name"] for source in inputs.values() if source["source"] == "view"}
        reflected = min((self._applied(view) for view in views), default=None)
        if tables:
            version, by_table = store.get_snapshot(tables)
            if reflected is not None and reflected < version:
                return None
        else:
            if reflected is None or reflected < 0:
                return None  # a view it reads is unbuilt: it was just dropped (creation order builds inputs first)
            version, by_table = reflected, {}
        by_view = {view: store.get_view_rows(view, version) for view in views}  # views keep every version
        rows_by_role = {role: (by_table if source["source"] == "table" else by_view)[source["name"]]
                        for role, source in inputs.items()}
        shards = {role: ShardFilter.of(source) for role, source in inputs.items()}
        return version, {
            role: [Delta(key, None, rows[key]) for key in sorted(rows, key=key_order)
                   if shards[role] is None or shards[role].holds(rows[key])]
            for role, rows in rows_by_role.items()
        }

    def _source_deltas(self, inputs: dict[str, Plan], first: int, last: int) -> dict[int, dict[str, list[Delta]]]:
        store = self.db.store
        by_version: dict[int, dict[str, list[Delta]]] = defaultdict(lambda: defaultdict(list))
        tables: dict[str, list[str]] = defaultdict(list)  # a table read twice (a self-join) feeds both roles
        shards = {role: ShardFilter.of(source) for role, source in inputs.items()}
        for role, source in inputs.items():
            if source["source"] == "table":
                tables[source["name"]].append(role)
        for change in store.get_changes(first, last, list(tables)):
            forget = change.expire_mode is ExpireMode.KEEP
            delta = Delta(change.key, change.before, change.after, forget=forget)
            for role in tables[change.table]:
                seen = delta if shards[role] is None else shards[role].delta(delta)
                if seen is not None:
                    by_version[change.version][role].append(seen)
        for role, source in inputs.items():
            if source["source"] != "view":
                continue
            pairs: dict[tuple[int, RowKey], list] = defaultdict(lambda: [None, None])
            for change in store.get_view_changes(source["name"], first, last):
                pairs[(change.version, encode_key(change.key))][0 if change.diff < 0 else 1] = change.row
            for (version, key), (before, after) in sorted(pairs.items()):
                by_version[version][role].append(Delta(key, before, after))
        return by_version
