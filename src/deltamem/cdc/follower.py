"""Following a PostgreSQL table into a deltamem table: a copy, then every insert, update and delete, once.

    db = dm.connect("app.db", llm="test", background=False)
    with Follower(db, "postgresql://app@db/app", table="public.docs", into="docs") as follower:
        follower.poll()            # PollResult: the transactions and changes applied, the version made
    follow(db, "postgresql://app@db/app", table="public.docs", into="docs", once=True)   # drain, then return

Invariants:

1. The deltamem table ``into`` equals the source table as of the stored position (``Store.get_source_position``),
   a source commit position (LSN): the initial copy stores the slot's consistent point with the copied rows, and
   each poll stores the commit position of the last source transaction it applied with its writes, in one store
   transaction (``db.batch(atomic=True)``). A source transaction is never split over two deltamem versions.
2. The slot advances only after that commit, so it never passes what deltamem holds: a follower killed at any point
   resumes from the slot, which holds every change not yet committed in deltamem. Transactions at or below the
   stored position (committed in deltamem, but the slot not yet advanced when the follower died) are skipped: each
   change is applied exactly once.
3. Before it creates the slot, a follower stores the position ``copying``, which the copy replaces: a slot found with
   ``copying`` is left from a copy that did not commit, and is dropped and made again; a slot found with no stored
   position is another deltamem database's, and is an error. A stored position whose slot is gone means changes may
   have been missed: the copy is made again, which puts the table right (rows the source no longer has go).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from deltamem.cdc.decoding import UNCHANGED, DecodedChange, column_type, to_value
from deltamem.cdc.source import Source, SourceTable, lsn_number
from deltamem.changes import Row
from deltamem.engine import Database
from deltamem.errors import CDCError, ConfigError

# Seconds a starting follower waits for the slot's last holder to let go: the server session of a killed follower
# holds it until its statement ends.
_SLOT_WAIT = 15.0
COPYING = "copying"  # the stored position while the initial copy is in progress (invariant 3)


@dataclass(frozen=True)
class PollResult:
    """What one poll (or the initial copy, ``copied``) applied: the source ``transactions`` it read past (some may
    not touch the followed table) and their ``changes`` to it (the copy counts each row as a change), the deltamem
    ``version`` they made (``None`` when they changed nothing), and the stored ``position`` after it.
    ``skipped``: transactions read from the slot that were applied already (the follower died before advancing the
    slot past them). A poll that read nothing at all (``drained``) found the slot drained."""

    transactions: int
    changes: int
    version: int | None
    position: str | None
    copied: bool = False
    skipped: int = 0

    @property
    def drained(self) -> bool:
        return not (self.copied or self.transactions or self.skipped)


class Follower:
    """Follows ``table`` of the PostgreSQL database ``source`` (a DSN) into the deltamem table ``into`` of ``db``,
    through the replication slot ``slot`` (default ``deltamem_<into>``). ``key`` defaults to the source's primary
    key; the deltamem table is created with the source's columns when missing. ``batch`` bounds the changes read
    per poll (a source transaction is read whole, however large)."""

    def __init__(self, db: Database, source: str, *, table: str, into: str, key: str | None = None,
                 slot: str | None = None, batch: int = 5000):
        if batch < 1:
            raise ConfigError(f"batch must be at least 1, got {batch}")
        self.db = db
        self.into = into
        self.slot = slot or default_slot(into)
        self.batch = batch
        self._source = Source(source)
        try:
            self._source.check_server()
            self.table: SourceTable = self._source.describe_table(table, key)
            columns = {c: column_type(t).value for c, t in self.table.columns.items()}
            self._target = db.table(into, key=self.table.key, columns=columns)
        except BaseException:
            self._source.close()
            raise
        self.source_name = _position_name(self._source, self.slot)
        self.position: str | None = None
        self.applied = {"transactions": 0, "changes": 0, "versions": 0}  # by this follower's polls since it started

    # --- public API ---------------------------------------------------------------------------------------------
    def start(self) -> PollResult | None:
        """Resume from the stored position, or make the initial copy (see invariant 3); return the copy's result,
        or ``None`` when resuming. ``poll`` calls this first if it was not called."""
        self._source.wait_until_free(self.slot, _SLOT_WAIT)
        stored = self.db.store.get_source_position(self.source_name)
        exists = self._source.slot_exists(self.slot)
        if exists and stored is None:
            raise CDCError(f"Replication slot {self.slot!r} exists on the source, but this deltamem database has "
                           "never followed through it (another one does?): pass another --slot, or drop it with "
                           "--drop-slot if nothing uses it")
        if exists and stored != COPYING:
            self.position = stored
            return None
        if exists:  # an initial copy died before its commit
            self._source.drop_slot(self.slot)
        self.db.store.put_source_position(self.source_name, COPYING)
        return self._copy()

    def poll(self) -> PollResult:
        """Apply the slot's next whole transactions (about ``batch`` changes) as one deltamem version, with the
        position, then advance the slot."""
        if self.position is None:
            copied = self.start()
            if copied is not None:
                return copied
        assert self.position is not None, "cdc: start() sets the position"
        transactions = self._source.peek(self.slot, self.table, self.batch)
        if not transactions:
            return PollResult(0, 0, None, self.position)
        done = lsn_number(self.position)
        fresh = [t for t in transactions if lsn_number(t.commit_lsn) > done]  # invariant 2: the rest are applied
        changes = [change for transaction in fresh for change in transaction.changes]
        version = None
        if changes:
            with self.db.batch(atomic=True) as written:
                self._apply(changes)
                self.db.store.put_source_position(self.source_name, fresh[-1].commit_lsn)
            version = written.version
            self.position = fresh[-1].commit_lsn
        # Counted here, next to the commit, so that a stop (SIGTERM) between polls reports what was applied.
        self.applied["transactions"] += len(fresh)
        self.applied["changes"] += len(changes)
        self.applied["versions"] += version is not None
        # A poll of other tables' transactions stores nothing: the slot alone moves past them, and the stored
        # position, behind it, still skips only what is applied.
        self._source.advance(self.slot, transactions[-1].commit_lsn)
        return PollResult(len(fresh), len(changes), version, self.position,
                          skipped=len(transactions) - len(fresh))

    def run(self, interval: float = 1.0, *, once: bool = False,
            on_poll: Callable[[PollResult], None] | None = None) -> None:
        """Poll until stopped (Ctrl-C, SIGTERM made ``KeyboardInterrupt``), waiting ``interval`` seconds whenever
        the slot is drained; with ``once``, return as soon as it is drained."""
        while True:
            result = self.poll()
            if on_poll is not None:
                on_poll(result)
            if result.drained:
                if once:
                    return
                time.sleep(interval)

    def drop_slot(self) -> bool:
        """Drop the replication slot and forget the stored position (a later follow copies the table anew);
        whether the slot existed. Until dropped, a slot keeps the source's WAL from being recycled."""
        self.db.store.put_source_position(self.source_name, None)
        self.position = None
        return self._source.drop_slot(self.slot)

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> "Follower":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internal helpers ---------------------------------------------------------------------------------------
    def _copy(self) -> PollResult:
        """Create the slot and copy the table as of its consistent point, replacing the deltamem table's rows."""
        copied = 0
        with self._source.create_slot(self.slot, self.table) as (lsn, batches):
            with self.db.batch(atomic=True) as written:
                stale = {row[self.table.key] for row in self._target.rows()}
                for batch in batches:
                    rows = [self._row(values, None) for values in batch]
                    self._target.upsert(rows)
                    stale.difference_update(row[self.table.key] for row in rows)
                    copied += len(rows)
                if stale:
                    self._target.delete(sorted(stale, key=str))
                self.db.store.put_source_position(self.source_name, lsn)
        self.position = lsn
        return PollResult(0, copied, written.version, lsn, copied=True)

    def _apply(self, changes: Iterable[DecodedChange]) -> None:
        """Write ``changes`` in order into the open batch (the last write of a key wins in it)."""
        key = self.table.key
        pending: dict[Any, Row | None] = {}  # this poll's rows so far, for an UPDATE's unchanged TOAST values
        for change in changes:
            if change.op == "TRUNCATE":  # every row: those stored, and those written earlier in this poll
                for gone in [*(row[key] for row in self._target.rows()), *pending]:
                    pending[gone] = None
                continue
            old_key = self._value(change.old, key) if change.old and key in change.old else None
            if change.op == "DELETE":
                if old_key is None:
                    raise CDCError(f"A delete from {self.table.shown} carries no {key!r}: set ALTER TABLE "
                                   f"{self.table.shown} REPLICA IDENTITY FULL")
                pending[old_key] = None
                continue
            if change.op not in ("INSERT", "UPDATE") or change.new is None:
                raise CDCError(f"Unexpected {change.op} change to {self.table.shown} from slot {self.slot!r}")
            new_key = self._value(change.new, key)
            before = None
            if UNCHANGED in change.new.values():  # the row as it was: this poll's, else the stored one
                was = new_key if old_key is None else old_key
                before = pending[was] if was in pending else self._target.get(was)
            if old_key is not None and old_key != new_key:
                pending[old_key] = None
            pending[new_key] = self._row(change.new, before)
        deletes = [k for k, row in pending.items() if row is None]
        upserts = [row for row in pending.values() if row is not None]
        if upserts:
            self._target.upsert(upserts)
        if deletes:
            self._target.delete(deletes)

    def _row(self, values: dict[str, str | None], before: Row | None) -> Row:
        """The deltamem row of one source row's text values; an unchanged TOAST value is ``before``'s."""
        if set(values) != set(self.table.columns):
            changed = sorted(set(values) ^ set(self.table.columns))
            raise self._altered(f"its columns changed ({', '.join(changed)} added or dropped)")
        row: Row = {}
        for column, pg_type in self.table.columns.items():
            text = values[column]
            if text == UNCHANGED:
                if before is None:
                    raise CDCError(f"An update of {self.table.shown} left {column!r} unchanged in TOAST storage, "
                                   "but the deltamem table lacks the row: drop the slot (--drop-slot) and follow "
                                   "again, which copies the table anew")
                row[column] = before.get(column)
            else:
                try:
                    row[column] = to_value(text, pg_type)
                except ValueError:
                    raise self._altered(f"{column!r} holds {text!r}, not a {pg_type}") from None
        return row

    def _altered(self, what: str) -> CDCError:
        return CDCError(f"{self.table.shown} was altered at the source since the follow started: {what}; drop the "
                        "slot (--drop-slot) and the deltamem table, and follow again, which copies it anew")

    def _value(self, values: dict[str, str | None], column: str) -> Any:
        return to_value(values.get(column), self.table.columns[column])


def default_slot(into: str) -> str:
    """The slot name a follow into ``into`` uses by default: ``deltamem_`` and the name, lower-cased, with every
    other character an underscore (a slot name allows lower-case letters, digits and underscores, 63 at most).

    >>> default_slot("Docs-2")
    'deltamem_docs_2'
    """
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in into.lower())
    return f"deltamem_{cleaned}"[:63]


def _position_name(source: Source, slot: str) -> str:
    """What the store files a follow's position under: the source database (no password) and its slot."""
    return f"{source.name}?slot={slot}"


def drop_slot(db: Database, source: str, *, into: str, slot: str | None = None) -> bool:
    """Drop the slot of a follow into ``into`` and forget its stored position, without checking the source table
    (it may be gone); whether the slot existed."""
    name = slot or default_slot(into)
    found = Source(source)
    try:
        db.store.put_source_position(_position_name(found, name), None)
        return found.drop_slot(name)
    finally:
        found.close()


def follow(db: Database, source: str, *, table: str, into: str, key: str | None = None, slot: str | None = None,
           batch: int = 5000, interval: float = 1.0, once: bool = False,
           on_poll: Callable[[PollResult], None] | None = None) -> None:
    """Follow ``table`` of ``source`` into ``into`` (see ``Follower``) until stopped, or, with ``once``, until the
    slot is drained."""
    with Follower(db, source, table=table, into=into, key=key, slot=slot, batch=batch) as follower:
        follower.run(interval, once=once, on_poll=on_poll)


__all__ = ["Follower", "PollResult", "default_slot", "drop_slot", "follow"]
