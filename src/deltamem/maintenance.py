"""View maintenance: build new views, apply every committed version to every view, in order, exactly once.

    db.maintainer.notify()   # after a commit; the background thread takes it from there

For one view and one version v the maintainer reads the source's deltas at v, runs them through the view's
operators (which call the model through the runner, memo first), and commits the operator state, the output rows and
``applied_version = v`` in one store transaction. So after a crash a view is exactly at some version: it resumes
from the next one, and the calls it had already paid come back from the memo.

::

    versions   ... a-1 | a | a+1 ... latest
    view            done ^  pending ---->     a = applied_version; each pending version with changes for the
                                              view is one transaction; the rest are skipped in one step
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import TYPE_CHECKING

from deltamem.changes import Delta, ExpireMode, RowKey, key_order
from deltamem.errors import FreshnessTimeout, MaintenanceError
from deltamem.operators.base import MultiInputOperator, Operator, OperatorContext
from deltamem.relation import Plan
from deltamem.store.base import ViewCommit
from deltamem.subscribe import Subscription

if TYPE_CHECKING:
    from deltamem.engine import Database


class Maintainer:
    """Keeps every view of one database up to date, on a background thread or, with ``background=False``, inline.

    Only one thread maintains at a time (``_work``). ``_changed`` wakes the background thread on commits and wakes
    readers and subscribers after each view commit. ``error`` holds what stopped background maintenance, if anything.
    """

    def __init__(self, db: "Database", *, background: bool, poll_interval: float):
        self.db = db
        self.background = background
        self.poll_interval = poll_interval
        self.error: BaseException | None = None
        self._work = threading.Lock()
        self._changed = threading.Condition()
        self._dirty = True
        self._stopping = False
        self._subscriptions: list[Subscription] = []
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

    def wait_for(self, view: str, version: int, timeout: float | None) -> None:
        """Return once ``view`` reflects ``version``; raise ``FreshnessTimeout`` or ``MaintenanceError``."""
        if not self.background:
            self.catch_up_all()
            return
        with self._changed:
            ok = self._changed.wait_for(
                lambda: self.error is not None or self._applied(view) >= version, timeout=timeout
            )
        if self.error is not None:
            raise MaintenanceError(f'View maintenance stopped: {self.error}') from self.error
        if not ok:
            raise FreshnessTimeout(
                f'View "{view}" reflects version {self._applied(view)}, not yet {version}, after {timeout} s'
            )

    def subscribe(self, view: str, callback, *, snapshot: bool) -> Subscription:
        if not self.background:
            self.catch_up_all()
        subscription = Subscription(self.db.store, view, callback, snapshot=snapshot, wakeup=self._changed)
        self._subscriptions.append(subscription)
        return subscription

    def catch_up_all(self) -> None:
        """Bring every view to the latest version, sources before the views that read them."""
        with self._work:
            for name in list(self.db._views):  # creation order is a topological order: a view reads older ones
                self._catch_up(name)

    # --- the background loop --------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._changed:
                if not self._dirty and not self._stopping:
                    self._changed.wait(self.poll_interval)
                if self._stopping:
                    return
                self._dirty = False
            try:
                self.db.expire()
                self.catch_up_all()
            except BaseException as exc:  # surfaced to readers by wait_for; a broken loop must not spin
                self.error = exc
                with self._changed:
                    self._changed.notify_all()
                return

    # --- one view ---------------------------------------------------------------------------------------------------
    def _applied(self, view: str) -> int:
        applied = self.db.store.get_applied_version(view)
        return -1 if applied is None else applied

    def _catch_up(self, name: str) -> None:
        store = self.db.store
        inputs, operators = self.db._view_plan(name)
        applied = store.get_applied_version(name)
        if applied is None:
            snapshot = self._snapshot(inputs)
            if snapshot is None:
                return  # a view it reads is behind the tables it reads: build on a later pass
            version, deltas = snapshot
            self._apply(name, operators, version, deltas, building=True)
            applied = version
        latest = store.get_latest_version()
        for source in inputs.values():
            if source["source"] == "view":
                latest = min(latest, self._applied(source["name"]))
        if latest <= applied:
            return
        by_version = self._source_deltas(inputs, applied + 1, latest)
        has_failures = any(store.get_failed_state(name, op.op_id) for op in operators)
        if has_failures and latest not in by_version:
            by_version[latest] = {}  # refresh at the latest version so that failed calls are retried
        for version in sorted(by_version):
            self._apply(name, operators, version, by_version[version], building=False)
        if store.get_applied_version(name) < latest:
            self._commit(ViewCommit(name, latest))

    def _apply(
        self, name: str, operators: list[Operator], version: int, inputs: dict[str, list[Delta]], *, building: bool
    ) -> None:
        commit = ViewCommit(name, version, count_baseline=any(inputs.values()))
        ctx = OperatorContext(name, version, self.db.store, self.db.runner, commit, building=building,
                              embedder=self.db._embedder)
        first, rest = operators[0], operators[1:]
        deltas = first.apply_inputs(inputs, ctx) if isinstance(first, MultiInputOperator) else \
            first.apply(inputs.get("input", []), ctx)
        for operator in rest:
            deltas = operator.apply(deltas, ctx)
        for delta in deltas:
            if not delta.forget:
                commit.outputs[delta.key] = delta.after
        self._commit(commit)

    def _commit(self, commit: ViewCommit) -> None:
        self.db.store.commit_view(commit)
        with self._changed:
            self._changed.notify_all()

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
            assert reflected is not None and reflected >= 0, "maintenance: a view was built before a view it reads"
            version, by_table = reflected, {}
        by_view = {view: store.get_view_rows(view, version) for view in views}  # views keep every version
        rows_by_role = {role: (by_table if source["source"] == "table" else by_view)[source["name"]]
                        for role, source in inputs.items()}
        return version, {
            role: [Delta(key, None, rows[key]) for key in sorted(rows, key=key_order)]
            for role, rows in rows_by_role.items()
        }

    def _source_deltas(self, inputs: dict[str, Plan], first: int, last: int) -> dict[int, dict[str, list[Delta]]]:
        store = self.db.store
        by_version: dict[int, dict[str, list[Delta]]] = defaultdict(lambda: defaultdict(list))
        tables: dict[str, list[str]] = defaultdict(list)  # a table read twice (a self-join) feeds both roles
        for role, source in inputs.items():
            if source["source"] == "table":
                tables[source["name"]].append(role)
        for change in store.get_changes(first, last, list(tables)):
            forget = change.expire_mode is ExpireMode.KEEP
            delta = Delta(change.key, change.before, change.after, forget=forget)
            for role in tables[change.table]:
                by_version[change.version][role].append(delta)
        for role, source in inputs.items():
            if source["source"] != "view":
                continue
            pairs: dict[tuple[int, RowKey], list] = defaultdict(lambda: [None, None])
            for change in store.get_view_changes(source["name"], first, last):
                pairs[(change.version, change.key)][0 if change.diff < 0 else 1] = change.row
            for (version, key), (before, after) in sorted(pairs.items()):
                by_version[version][role].append(Delta(key, before, after))
        return by_version
