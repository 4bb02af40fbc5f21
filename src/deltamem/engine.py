"""The database: tables, views, the commit path and TTL. Maintenance lives in ``deltamem.maintenance``.

    db = deltamem.connect("app.db", llm="test"); papers = db.table("papers", key="id"); papers.upsert({"id": 1, ...})

A ``Database`` owns its store, its backends and its maintenance thread; two databases in one process share nothing.
Every write is validated whole before anything is stored: a bad row fails the batch and changes nothing.
Several processes may open one file: the store's catalog is the truth (``deltamem.catalog_cache``), each view is
maintained by one of them at a time (``deltamem.leases``), and each call is paid by one (``deltamem.llm.claims``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

from deltamem.catalog_cache import CatalogCache
from deltamem.changes import (
    Clock,
    ColumnType,
    Row,
    RowKey,
    RowWrite,
    SystemClock,
    Written,
    decode_key,
    encode_key,
    key_order,
)
from deltamem.cost_model import choose_retrieval
from deltamem.errors import (
    AlreadyExists,
    CatalogChanged,
    ConfigError,
    NoTable,
    NoView,
    PrimaryKeyError,
    SchemaError,
    did_you_mean,
)
from deltamem.frames import plain
from deltamem.group_commit import GroupCommit
from deltamem.leases import DEFAULT_LEASE_TIMEOUT
from deltamem.llm import LazyBackend
from deltamem.llm.base import EmbeddingBackend, LLMBackend
from deltamem.llm.claims import DEFAULT_CLAIM_TIMEOUT
from deltamem.llm.ledger import Usage
from deltamem.llm.runner import CallRunner, ProgressHook, RetryPolicy
from deltamem.maintenance import Maintainer
from deltamem.memory.vector_index import SearchIndexes
from deltamem.operators.base import Operator
from deltamem.operators.compose import ComposeOperator
from deltamem.operators.generate import GenerateOperator
from deltamem.operators.shard_union import ShardUnion, is_shard_union
from deltamem.relation import Plan, Relation, Table, View, ViewRows, build_operators, plan_inputs
from deltamem.shards import check_shards, is_shard_view, parent_view, shard_plans, shard_view_names
from deltamem.store.base import ChangeRow, Dropped, LedgerEntry, Store, TableDef, ViewDef
from deltamem.subscribe import Subscription
from deltamem.table_defs import check_row, expires_at, make_table_def


def _default_template(table: TableDef, preferred: tuple[str, ...]) -> str:
    """``"{title}: {text}"``-style from the preferred columns the table has, else every non-key column."""
    if table.columns is None:
        raise SchemaError(f'Table "{table.name}" has no columns yet; declare them with columns={{...}} or insert a row')
    present = [c for c in preferred if c in table.columns]
    columns = present or [c for c in table.columns if c != table.key]
    return ": ".join(f"{{{c}}}" for c in columns) if present else "\n".join(f"{c}: {{{c}}}" for c in columns)


def _report_interrupted(calls: Sequence[LedgerEntry]) -> None:
    """Warn about the calls an earlier process left in flight; each entry's error names that process."""
    logger = logging.getLogger("deltamem")
    many = len(calls) != 1
    logger.warning("%d model call%s %s in flight when an earlier process on this database died: each may have been "
                   "paid, its result is lost, and it is paid again where its view still needs it "
                   "(db.usage().interrupted counts them)", len(calls), "s" if many else "", "were" if many else "was")
    for call in calls:
        logger.warning("view %s, operator %s, version %s: %s", call.view, call.operator, call.version, call.error)


def check_max_concurrency(value: object) -> None:
    """Raise ``ConfigError`` unless ``value`` is a positive int: the bound on one database's concurrent model calls."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"max_concurrency must be a positive integer (the most model calls run at once on the "
                          f"backend), got {value!r}")


@dataclass
class Batch:
    """The writes of one ``db.batch()`` block, keyed by (table, key); ``version`` and ``written`` (the counts of
    changes) are set when it commits; ``version`` stays None when the block changed nothing.

    ``drops`` are the tables and views dropped in the block, as ``(kind, name)``, with one ``cascade`` for all; they
    are applied after the writes, in the same store transaction, and ``dropped`` says what they removed.
    """

    writes: dict[tuple[str, RowKey], RowWrite] = field(default_factory=dict)
    defs: dict[str, TableDef] = field(default_factory=dict)
    checked: dict[str, TableDef] = field(default_factory=dict)  # the definitions the writes were checked against
    version: int | None = None
    written: Written | None = None
    drops: list[tuple[str, str]] = field(default_factory=list)
    cascade: bool | None = None
    dropped: Dropped | None = None


class Database:
    """One deltamem database. Use ``deltamem.connect`` to open one.

    ``max_concurrency``: the most model calls this database runs at once on its backend (a positive int).
    ``lease_timeout``: seconds after which another process on the file takes over a view this one stopped
    maintaining (``deltamem.leases``); ``fair_share``: hold at most a fair share of the view leases, so that several
    workers spread the views out (``deltamem.leases``; ``deltamem worker`` sets it); ``maintain=False``: take no
    view's lease, leaving maintenance to other processes (workers) while this one writes, reads and follows their
    commits (``deltamem serve --no-maintain``); ``claim_timeout``: seconds without renewal after which a call
    another process claimed is presumed lost and paid here (``deltamem.llm.claims``).
    """

    def __init__(
        self,
        store: Store,
        *,
        llm: LazyBackend[LLMBackend],
        embedder: LazyBackend[EmbeddingBackend],
        clock: Clock | None = None,
        background: bool = True,
        retry: RetryPolicy = RetryPolicy(),
        max_concurrency: int = 4,
        progress: ProgressHook | None = None,
        poll_interval: float = 1.0,
        lease_timeout: float = DEFAULT_LEASE_TIMEOUT,
        fair_share: bool = False,
        maintain: bool = True,
        claim_timeout: float = DEFAULT_CLAIM_TIMEOUT,
    ):
        check_max_concurrency(max_concurrency)
        self.store = store
        self.clock = clock or SystemClock()
        self._embedder = embedder
        self.runner = CallRunner(store, llm, retry=retry, max_workers=max_concurrency, clock=self.clock.now,
                                 progress=progress, claim_timeout=claim_timeout)
        self._lock = threading.RLock()  # guards the catalog caches and batches
        self._group_commit = GroupCommit(store)  # plain writes of concurrent threads share transactions
        self._batches = threading.local()
        self._catalog = CatalogCache(store)
        self._search_indexes = SearchIndexes(store)  # the HNSW caches behind View.search, rebuilt from the store
        # Calls an earlier process on this store was paying when it died: on the ledger as ``interrupted`` from now
        # on, and reported here, by the one process that took them off the store.
        self.interrupted_calls = store.take_interrupted_calls()
        if self.interrupted_calls:
            _report_interrupted(self.interrupted_calls)
        self.maintainer = Maintainer(self, background=background, poll_interval=poll_interval,
                                     lease_timeout=lease_timeout, fair_share=fair_share, maintain=maintain)

    # --- backends -----------------------------------------------------------------------------------------------
    @property
    def llm(self) -> LLMBackend:
        """The chat backend (loaded on first use)."""
        return self.runner.backend

    @property
    def embedder(self) -> EmbeddingBackend:
        """The embedding backend (loaded on first use)."""
        return self._embedder.get()

    # --- catalog ------------------------------------------------------------------------------------------------
    @property
    def _tables(self) -> dict[str, TableDef]:
        return self._catalog.tables

    @property
    def _views(self) -> dict[str, ViewDef]:
        return self._catalog.views

    def _refresh_catalog(self) -> bool:
        """Reload the catalog when another process has changed the store's since it was read; return whether it had."""
        if self._catalog.is_current():
            return False
        self._reload_catalog()
        return True

    def _reload_catalog(self) -> None:
        with self._lock:
            for name in self._catalog.reload():
                self._search_indexes.discard(name)

    def table(
        self,
        name: str,
        *,
        key: str | None = None,
        columns: dict[str, str | ColumnType] | None = None,
        ttl: str | float | None = None,
        ttl_column: str | None = None,
        expire: str = "retract",
    ) -> Table:
        """Open table ``name``, or create it when ``key`` is given and it does not exist.

        ``columns`` maps names to ``text``, ``int``, ``float``, ``bool`` or ``json``; without it, the first row
        inserted fixes them. ``ttl`` (``'30 days'``) expires rows that long after their last write, or after the
        time in ``ttl_column``; ``expire='retract'`` retracts what was derived from them, ``'keep'`` keeps it.
        """
        with self._lock:
            if name not in self._tables and name not in self._views:
                self._refresh_catalog()
            if name in self._tables:
                found = self._tables[name]
                if key is not None and key != found.key:
                    raise AlreadyExists(f'Table "{name}" exists with key {found.key!r}, not {key!r}')
                wanted = None if key is None or columns is None else \
                    make_table_def(name, key, columns, ttl, ttl_column, expire)
                if wanted is not None and found.columns is not None and wanted.columns != found.columns:
                    raise AlreadyExists(f'Table "{name}" exists with columns {found.describe_columns()}, not '
                                        f"{wanted.describe_columns()}; drop it first, or pick another name")
                return Table(self, name)
            if key is None:
                raise NoTable(
                    f'Table "{name}" does not exist; create it with db.table({name!r}, key="id").'
                    + did_you_mean(name, self._tables)
                )
            if name in self._views:
                raise AlreadyExists(f'"{name}" is already a view')
            if not name.isidentifier():
                raise SchemaError(f"Table name {name!r} is not an identifier")
            definition = make_table_def(name, key, columns, ttl, ttl_column, expire)
            try:
                self.store.put_table_def(definition)
            except AlreadyExists:  # another process created the name since this one last read the catalog
                self._reload_catalog()
                raise
            self._tables[name] = definition
            return Table(self, name)

    def tables(self) -> list[str]:
        self._refresh_catalog()
        return sorted(self._tables)

    def view(self, name: str, relation: Relation | None = None) -> View:
        """Open view ``name``, or create it from ``relation``; it is built and then maintained in the background."""
        with self._lock:
            if relation is None:
                self._view_def(name)
                return View(self, name)
            if relation._db is not self:
                raise ConfigError(f"View {name!r}: the relation belongs to another database")
            if name not in self._views and name not in self._tables:
                self._refresh_catalog()
            if name in self._views:
                if self._views[name].plan != relation.plan:
                    raise AlreadyExists(f'View "{name}" exists with another definition; pick a new name')
                return View(self, name)
            if name in self._tables:
                raise AlreadyExists(f'"{name}" is already a table')
            if not name.isidentifier():
                raise SchemaError(f"View name {name!r} is not an identifier")
            if "op" not in relation.plan:
                raise SchemaError(f"View {name!r} needs at least one operator over {relation.describe()}")
            shards = shard_plans(relation.plan) if is_shard_union(relation.plan) else []
            try:
                with self.store.transaction():  # a sharded view is created with its shard views, or not at all
                    defined = [self.store.put_view_def(ViewDef(shard, plan)) for shard, plan in shards]
                    definition = self.store.put_view_def(ViewDef(name, relation.plan))
            except AlreadyExists:  # another process created the name since this one last read the catalog
                self._reload_catalog()
                raise
            self._views.update({d.name: d for d in defined})
            self._views[name] = definition
        self.maintainer.notify()
        return View(self, name)

    def views(self) -> list[str]:
        """The views' names, in creation order (a sharded view's shard views are not listed: they are its parts)."""
        self._refresh_catalog()
        return [name for name in self._views if not is_shard_view(name)]

    def drop_table(self, name: str, *, cascade: bool = False) -> Dropped | None:
        """Drop table ``name`` with its rows and change log, as one commit; the name is free again at once. Views
        that read it (directly or through views) make this fail with ``DependentViews``, which names them, unless
        ``cascade=True`` drops them too; a failed drop changes nothing. Returns what was dropped and the version;
        inside ``db.batch()``, None: the drop commits with the batch, after its writes (see ``batch.dropped``).
        """
        with self._lock:
            if name not in self._tables:
                self._refresh_catalog()
            if name not in self._tables:
                if name in self._views:
                    raise NoTable(f'"{name}" is a view, not a table; drop it with drop_view({name!r})')
                raise NoTable(f'Table "{name}" does not exist.' + did_you_mean(name, self._tables))
        return self._drop("table", name, cascade)

    def drop_view(self, name: str, *, cascade: bool = False) -> Dropped | None:
        """Drop view ``name`` with its rows and their history, operator state, decisions and search index, as one
        commit; its maintenance stops and its subscriptions end. Dependents and the result as for ``drop_table``.
        What its calls cost stays in ``usage()`` (the ledger and its full-recompute baseline, under its name), and
        the memo stays, so a view created again under the name answers identical calls from it.
        """
        with self._lock:
            if name not in self._views:
                self._refresh_catalog()
            if name not in self._views:
                if name in self._tables:
                    raise NoView(f'"{name}" is a table, not a view; drop it with drop_table({name!r})')
                raise NoView(f'View "{name}" does not exist.' + did_you_mean(name, self.views()))
            if is_shard_view(name):
                raise SchemaError(f'"{name}" is a shard of view "{parent_view(name)}": drop that view')
            plan = self._views[name].plan
        return self._drop("view", name, cascade, parts=plan["views"] if is_shard_union(plan) else ())

    def _drop(self, kind: str, name: str, cascade: bool, parts: Sequence[str] = ()) -> Dropped | None:
        """Drop ``name`` and ``parts`` (a sharded view's shard views) in one commit, or with the enclosing batch."""
        drops = [(kind, name), *(("view", part) for part in parts)]
        batch = getattr(self._batches, "current", None)
        if batch is None:
            return self._commit([], [], drops=drops, cascade=cascade)[1]
        if batch.cascade is not None and batch.cascade != cascade:
            raise ConfigError("The drops of one batch share one cascade setting; drop in two batches instead")
        batch.drops.extend(drops)
        batch.cascade = cascade
        return None

    def _forget(self, name: str) -> None:
        """Take a dropped table or view out of this process's caches. Call under ``_lock``."""
        self._tables.pop(name, None)
        self._views.pop(name, None)
        self._search_indexes.discard(name)

    def _reload_view(self, name: str) -> None:
        """Re-read view ``name``'s definition from the store, after another process dropped (or re-created) it."""
        with self._lock:
            found = next((v for v in self.store.get_view_defs() if v.name == name), None)
            self._forget(name)
            if found is not None:
                self._views[name] = found

    def generate(
        self,
        name: str,
        *,
        prompt: str,
        context: Table,
        data_source: Table,
        retrieve: int | str = "all",
        k: int | None = None,
        strategy: str = "auto",
        refresh: str = "on_change",
        question: str | None = None,
        document: str | None = None,
        out: str = "answer",
        max_tokens: int = 64,
        shadow: float = 0.0,
        append_budget: int = 256,
        partition: str | None = None,
        reuse: str = "off",
        max_error: float = 0.02,
        reuse_check: float = 0.1,
        decompose: Mapping[str, Sequence[str]] | str | None = None,
        shards: int = 1,
    ) -> View:
        """A continuous ``LLM_GENERATE`` view: one answer (column ``out``) per ``context`` row, from ``data_source``.

        ``question`` renders a CONTEXT row (default ``"{question}"`` when that column exists, else every non-key
        column); ``document`` renders a DATA_SOURCE row (default ``"{title}: {text}"``, ``"{text}"``, or every
        non-key column). ``shadow`` is the share of ``auto``'s approximate decisions checked against a full
        recompute; ``append_budget`` caps an output's delta log in tokens; with ``partition``, a column of both tables,
        an answer reads only the documents with its own value there (a conversation's history, a question's
        paragraphs), and a document change reaches only those answers. See ``deltamem.operators.generate`` for
        ``retrieve`` (``"all"``, a number of sentences, ``"graph"`` with ``k`` passages, or ``"auto"``: the cheapest
        of the three by ``deltamem.cost_model``, chosen now and kept), ``strategy`` and ``refresh``;
        ``deltamem.reuse`` for ``reuse="semantic"`` (a new question takes
        a close answered one's answer, with a measured rate of wrong reuses under ``max_error``; ``reuse_check`` of
        the reuses are checked with a real call); ``deltamem.operators.compose`` for ``decompose`` (composite
        questions answered from shared base questions). ``shards=n`` (with ``partition``) splits the view into ``n``
        shards by partition value, each maintained under its own lease, so that ``n`` workers share it
        (``deltamem.shards``).
        """
        check_shards(shards, partition, view=name)
        roles = {"context": context, "data_source": data_source}
        for role, table in roles.items():
            if not isinstance(table, Table) or table._db is not self:
                raise SchemaError(f"{role.upper()} of {name!r} must be a table of this database, got {table!r}")
        if context.name == data_source.name:
            raise SchemaError(f"CONTEXT and DATA_SOURCE of {name!r} must be two tables, not both {context.name!r}")
        question = question or _default_template(self._table_def(context.name), ("question",))
        document = document or _default_template(self._table_def(data_source.name), ("title", "text"))
        plan = {"op": GenerateOperator.kind, "context": context.plan, "data_source": data_source.plan,
                "prompt": prompt, "retrieve": retrieve, "strategy": strategy, "refresh": refresh,
                "question": question, "document": document, "out": out, "max_tokens": max_tokens,
                "shadow": shadow, "append_budget": append_budget, "partition": partition}
        if k is not None:  # stored only when set: the plans of views made before graph retrieval stay as they were
            plan["k"] = k
        if retrieve == "auto":
            plan = choose_retrieval(self, name, plan)
        if decompose is not None:
            if retrieve in ("graph", "auto") or k is not None:
                raise SchemaError(f"{name!r}: retrieve={retrieve!r} and decompose cannot be combined yet; "
                                  "decompose's base questions retrieve sentences (retrieve='all' or a number)")
            if reuse != "off":
                raise SchemaError(f"{name!r}: reuse={reuse!r} and decompose cannot be combined; composites already "
                                  "share their base answers")
            plan = {**plan, "op": ComposeOperator.kind, "decompose": decompose}
        elif (reuse, max_error, reuse_check) != ("off", 0.02, 0.1):  # stored only when set, checked when built
            plan = {**plan, "reuse": reuse, "max_error": max_error, "reuse_check": reuse_check}
        if partition is not None:
            for role, table in roles.items():
                if partition not in table.columns:
                    raise SchemaError(f"partition column {partition!r} is not a column of {role.upper()} table "
                                      f"{table.name!r}." + did_you_mean(partition, table.columns))
        operator = build_operators(plan)[0]  # validates the parameters
        operator.question.check(context.columns, where=f"CONTEXT table {context.name!r}")
        operator.document.check(data_source.columns, where=f"DATA_SOURCE table {data_source.name!r}")
        if shards > 1:
            plan = ShardUnion.plan(plan, shard_view_names(name, shards))
        return self.view(name, Relation(self, plan))

    def _table_def(self, name: str) -> TableDef:
        if name not in self._tables:
            self._refresh_catalog()  # another process may have created it
        try:
            return self._tables[name]
        except KeyError:
            raise NoTable(f'Table "{name}" does not exist.' + did_you_mean(name, self._tables)) from None

    def _view_def(self, name: str) -> ViewDef:
        if name not in self._views:
            self._refresh_catalog()  # another process may have created it
        try:
            return self._views[name]
        except KeyError:
            raise NoView(f'View "{name}" does not exist.' + did_you_mean(name, self._views)) from None

    def _source_columns(self, source: Plan) -> tuple[str, ...]:
        if source["source"] == "view":
            return Relation(self, self._view_def(source["name"]).plan).columns
        table = self._table_def(source["name"])
        if table.columns is None:
            raise SchemaError(
                f'Table "{table.name}" has no columns yet; declare them with columns={{...}} or insert a row first'
            )
        return tuple(table.columns)

    # --- writes -------------------------------------------------------------------------------------------------
    @contextmanager
    def batch(self, *, atomic: bool = False) -> Iterator["Batch"]:
        """Commit every write made in the block, on this thread, as one version, or none if the block raises.

        Within a batch the last write of a key wins; ``batch.version`` and ``batch.written`` are set when the block
        commits. A block that writes nothing, or whose writes change nothing, commits no version (``version`` stays
        None).

        ``atomic=True`` makes the block's reads part of it too: the block holds the store's write transaction, so its
        reads (``table.get``, ``table.rows``) see the latest commit and no other writer, in this process or another,
        commits until the block's writes have. A read-modify-write or a key check in the block is then atomic.
        Every other writer waits for the block: keep it short, and never wait in it for another thread (no fresh
        view reads, no model calls).
        """
        if getattr(self._batches, "current", None) is not None:
            raise ConfigError("Batches do not nest")
        with ExitStack() as held:
            if atomic:  # the engine's lock before the store's, the order _commit takes them in: no deadlock
                held.enter_context(self._lock)
                held.enter_context(self.store.transaction())
            batch = self._batches.current = Batch()
            try:
                yield batch
            finally:
                self._batches.current = None
            if batch.writes or batch.defs or batch.drops:
                batch.written, batch.dropped = self._commit(list(batch.writes.values()), list(batch.defs.values()),
                                                            drops=batch.drops, cascade=bool(batch.cascade),
                                                            checked=list(batch.checked.values()))
                batch.version = batch.written.version

    def _write_rows(self, table: str, rows: Sequence[Row]) -> Written | None:
        checked = self._table_def(table)  # the store refuses the commit if it no longer has this definition
        now = self.clock.now()
        batch = getattr(self._batches, "current", None)
        definition = batch.defs.get(table, checked) if batch else checked
        writes: dict[RowKey, RowWrite] = {}
        for position, row in enumerate(rows):
            if not isinstance(row, dict):
                raise SchemaError(f"Row {position} for table {table!r} is a {type(row).__name__}, not a dict")
            row = plain(row)  # NumPy scalars (np.int64 ...) as the Python values they hold
            if definition.columns is None:
                definition = TableDef(definition.name, definition.key, {c: ColumnType.of(v) for c, v in row.items()},
                                      definition.ttl, definition.ttl_column, definition.expire)
            clean = check_row(definition, row, position)
            key = encode_key(clean[definition.key])
            if key in writes:
                raise PrimaryKeyError(f"Key {clean[definition.key]!r} appears twice in one write to table {table!r}")
            writes[key] = RowWrite(table, key, clean, expires_at(definition, clean, now))
        new_defs = [definition] if definition is not checked else []
        return self._write(list(writes.values()), new_defs, checked)

    def _delete_rows(self, table: str, keys: Sequence[Any]) -> Written | None:
        definition = self._table_def(table)
        kind = (definition.columns or {}).get(definition.key)
        writes: dict[RowKey, RowWrite] = {}
        for key in map(plain, keys):
            encoded = encode_key(key)  # a str or an int, or PrimaryKeyError
            # A delete of an absent key does nothing, so a wrongly typed key would silently delete nothing.
            if kind is not None and not kind.accepts(key):
                raise PrimaryKeyError(f"key {definition.key!r} is {kind.value}, got {key!r}")
            writes[encoded] = RowWrite(table, encoded, None)
        return self._write(list(writes.values()), [], definition)

    def _write(self, writes: list[RowWrite], defs: list[TableDef], checked: TableDef) -> Written | None:
        """Commit now, or add to the thread's open batch (and return None); ``writes`` were checked against
        ``checked``."""
        batch = getattr(self._batches, "current", None)
        if batch is None:
            return self._commit(writes, defs, checked=[checked])[0]
        batch.checked.setdefault(checked.name, checked)
        for write in writes:
            batch.writes[(write.table, write.key)] = write
        for definition in defs:
            batch.defs[definition.name] = definition
        return None

    def _commit(self, writes: list[RowWrite], defs: list[TableDef], *, drops: Sequence[tuple[str, str]] = (),
                cascade: bool = False, checked: Sequence[TableDef] = ()) -> tuple[Written, Dropped | None]:
        """Commit writes, table definitions and drops (applied after the writes) as one version; without drops, a
        commit whose writes change nothing makes no version (see ``Written``). ``checked``: the definitions the
        writes were checked against (``Store.commit``)."""
        dropped = None
        # A plain write touches no catalog cache, so it needs no lock here: writes of several threads then share a
        # store transaction (``GroupCommit``).
        with self._lock if drops or defs else nullcontext():
            try:
                if drops:
                    note = "drop " + ", ".join(f"{kind} {name}" for kind, name in drops)
                    dropped = self.store.drop([n for k, n in drops if k == "table"],
                                              [n for k, n in drops if k == "view"], cascade=cascade,
                                              committed_at=self.clock.now(), note=note, writes=writes,
                                              table_defs=defs, checked=checked)
                    version = dropped.version
                    changes = self.store.get_changes(version, version,
                                                     {w.table for w in writes} - set(dropped.tables))
                else:
                    version, changes = self._group_commit.commit(writes, self.clock.now(), table_defs=defs,
                                                                 checked=checked)
            except (CatalogChanged, NoTable, NoView):  # another process changed the catalog: this one's was stale
                self._reload_catalog()
                raise
            for definition in defs:
                self._tables[definition.name] = definition
            for name in (*dropped.tables, *dropped.views) if dropped else ():
                self._forget(name)
            if dropped:  # a sharded view's shard views are its parts, not views of their own to report
                dropped = replace(dropped, views=tuple(name for name in dropped.views if not is_shard_view(name)))
        if version is not None:
            self.maintainer.notify()  # also wakes readers waiting on a dropped view, so that they fail at once
        return Written.of(version, changes, len(writes)), dropped

    def expire(self) -> int:
        """Expire every row whose TTL has ended, as one commit; return how many rows expired."""
        modes = {t.name: t.expire for t in list(self._tables.values()) if t.ttl is not None}
        if not modes:
            return 0
        result = self.store.expire(modes, self.clock.now())
        if result is None:
            return 0
        self.maintainer.notify()
        return len(result[1])

    def refresh(self) -> int:
        """Commit an empty version: every view refreshes at it, retrying the calls that failed before."""
        version, _ = self.store.commit([], self.clock.now(), note="refresh")
        assert version is not None, "engine: an empty commit always takes a version"
        self.maintainer.notify()
        return version

    # --- reads --------------------------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """The latest committed version."""
        return self.store.get_latest_version()

    def _read_view(self, name: str, *, fresh: bool, as_of: int | None, timeout: float | None) -> ViewRows:
        self._view_def(name)
        latest = self.version
        if fresh:
            self.maintainer.wait_for(name, latest if as_of is None else min(as_of, latest), timeout)
        applied = self.store.get_applied_version(name)
        if as_of is not None and (applied is None or as_of > applied):
            raise ConfigError(
                f'View "{name}" reflects version {applied}; as_of={as_of} is ahead of it. Pass fresh=True to wait'
            )
        # At `applied`, not "current": maintenance may commit a newer version between the two reads.
        rows = self.store.get_view_rows(name, as_of if as_of is not None or applied is None else applied)
        lag, lag_seconds = self._lag(applied or 0, latest)
        keys = sorted(rows, key=key_order)
        order = self._row_order(name)
        return ViewRows(rows=[order(rows[key]) for key in keys], version=(applied or 0) if as_of is None else as_of,
                        lag=lag, lag_seconds=lag_seconds, keys=[decode_key(key) for key in keys],
                        # A failure recorded before the view caught up is moot once it has: the clearing of the
                        # record follows the store's commit, so a read between the two must not report it.
                        error=self.maintainer.view_failure(name) if lag else None)

    def lag(self, name: str) -> tuple[int, float]:
        """How far view ``name`` is behind: committed versions it does not reflect yet, and seconds since the first
        of them was committed (both 0 when it is fresh)."""
        self._view_def(name)
        latest = self.version
        return self._lag(self.store.get_applied_version(name) or 0, latest)

    def _lag(self, applied: int, latest: int) -> tuple[int, float]:
        behind = self.store.get_commit_time(applied + 1) if latest > applied else None
        return latest - applied, 0.0 if behind is None else max(0.0, self.clock.now() - behind)

    def _row_order(self, name: str) -> Callable[[Row], Row]:
        """A function that gives a row of view ``name`` its declared column order (``view.columns``): the store
        keeps rows as JSON with sorted keys. A column the view does not declare (``_error``) follows them."""
        columns = View(self, name).columns

        def order(row: Row) -> Row:
            return {**{c: row[c] for c in columns if c in row}, **row}

        return order

    def _subscribe(self, name: str, callback: Callable[[ChangeRow], None], *, snapshot: bool) -> Subscription:
        self._view_def(name)
        order = self._row_order(name)
        return self.maintainer.subscribe(name, lambda change: callback(replace(change, row=order(change.row))),
                                         snapshot=snapshot)

    def maintain(self, timeout: float | None = None) -> None:
        """Bring every view up to the latest version now (what the background thread does on its own); ``timeout``
        bounds the whole call, not each view's wait."""
        self._refresh_catalog()
        latest = self.version
        deadline = None if timeout is None else time.monotonic() + timeout
        for name in list(self._views):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                self.maintainer.wait_for(name, latest, left)
            except NoView:
                if name in self._views:
                    raise  # not a drop that raced with this call

    def usage(self) -> Usage:
        """Calls, tokens and seconds paid, by view and operator, beside the full-recompute cost of each view. A dropped
        view's calls stay in the totals and under its name: money already spent is not given back."""
        once_now = {name: self.store.get_state_cost(name) for name in list(self._views)}
        return Usage.build(self.store.get_ledger_totals(), self.store.get_baselines(), once_now)

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop maintenance (finishing the version in progress) and close the store."""
        self.maintainer.stop()
        self.runner.close()
        self.store.close()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _view_plan(self, name: str) -> tuple[dict[str, Plan], list[Operator]]:
        plan = self._view_def(name).plan
        return plan_inputs(plan), build_operators(plan)
