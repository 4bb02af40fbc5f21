"""Group commit for writers: concurrent commits of one process share one store transaction.

    committer = GroupCommit(store)
    version, changes = committer.commit(writes, committed_at, checked=[docs])   # from any number of threads

A writer that finds no commit under way becomes the leader: it takes every write queued meanwhile (its own
first) and commits them in one store transaction, each as its own version, in queue order, each in its own savepoint,
then hands each writer its result. So N concurrent writers pay one lock acquisition and one durable commit (an fsync)
instead of N, and a write that fails (a catalog changed under it) fails alone.

Invariant: a writer returns only after the transaction holding its version has committed (or with the error that
kept it out); a version is visible to readers only once its whole group is.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from deltamem.changes import Change, RowWrite
from deltamem.store.base import Store, TableDef


@dataclass
class _Write:
    writes: Sequence[RowWrite]
    committed_at: float
    table_defs: Sequence[TableDef]
    checked: Sequence[TableDef]
    result: tuple[int | None, list[Change]] | None = None
    error: BaseException | None = None
    done: bool = False


class GroupCommit:
    """The commit queue of one ``Database``; thread-safe."""

    def __init__(self, store: Store):
        self.store = store
        self._changed = threading.Condition()
        self._queue: list[_Write] = []
        self._leading = False

    def commit(self, writes: Sequence[RowWrite], committed_at: float, *, table_defs: Sequence[TableDef] = (),
               checked: Sequence[TableDef] = ()) -> tuple[int | None, list[Change]]:
        """``Store.commit`` of ``writes``, sharing a transaction with the commits other threads ask for meanwhile."""
        mine = _Write(writes, committed_at, table_defs, checked)
        with self._changed:
            self._queue.append(mine)
            while self._leading and not mine.done:
                self._changed.wait()
            if not mine.done:
                self._leading = True
                group, self._queue = self._queue, []
        if not mine.done:
            try:
                self._commit_group(group)
            finally:
                with self._changed:
                    self._leading = False
                    for write in group:
                        write.done = True
                    self._changed.notify_all()
        if mine.error is not None:
            raise mine.error
        assert mine.result is not None, "group commit: a write done without an error has a result"
        return mine.result

    def _commit_group(self, group: list[_Write]) -> None:
        if len(group) == 1:  # alone: no savepoint to pay for
            self._commit_one(group[0])
            return
        try:
            with self.store.transaction():
                for write in group:
                    self._commit_one(write)  # a nested write is a savepoint: one that fails changes nothing
        except BaseException as exc:  # the group's transaction failed: none of it is committed
            for write in group:
                write.error, write.result = exc, None
            raise

    def _commit_one(self, write: _Write) -> None:
        try:
            write.result = self.store.commit(write.writes, write.committed_at, table_defs=write.table_defs,
                                             checked=write.checked)
        except Exception as exc:  # noqa: BLE001 - handed to the writer it belongs to
            write.error = exc
