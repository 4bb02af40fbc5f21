"""Change feeds: a view's change rows as server-sent events that resume by event id.

    async for batch in ChangeFeed(db, signal).batches("answers", after=Cursor.parse("12:3")): ...

Invariant: an event id is a position in the view's history. ``v:i`` names the i-th change row (from 0) of version
``v``, in the order the store returns a version's rows (retractions first, then by key). That order never changes
once ``v`` is committed, so a client that reconnects with ``Last-Event-ID: v:i`` gets exactly the rows after that
one: none lost, none repeated. The history is the queue: a slow client only falls behind in it, and no writer or
other client ever waits for it.

A feed follows one incarnation of the view (``ViewDef.id``), as ``deltamem.subscribe.Subscription`` does: once that
view is dropped, here or by another process, the feed ends, even if a view of the same name exists again, and it
delivers nothing of the new one (whose rows would land on the client's copy of the old one, never retracted).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import anyio
from fastapi.sse import format_sse_event

from deltamem.errors import ConfigError, NoView
from deltamem.store.base import ChangeRow

if TYPE_CHECKING:
    from deltamem.engine import Database

# Versions read per store query: a client resuming far back is served in pieces, never in one huge read.
_VERSIONS_PER_READ = 256


@dataclass(frozen=True)
class Cursor:
    """The last change row a client has: row ``index`` of ``version``, or all of ``version`` when ``index`` is None.

    ``view_id`` is the incarnation whose history the position is in (``ViewDef.id``); None (as parsed from an event
    id) means the view there when the feed starts.
    """

    version: int
    index: int | None = None
    view_id: int | None = None

    @classmethod
    def parse(cls, event_id: str) -> "Cursor":
        """``"12:3"`` (an event id) or ``"12"`` (everything through version 12)."""
        version, _, index = event_id.strip().partition(":")
        try:
            cursor = cls(int(version), int(index) if index else None)
        except ValueError:
            raise ConfigError(f"Bad event id {event_id!r}: expected 'version:index' such as '12:3', "
                              "or a version such as '12'") from None
        if cursor.version < -1 or (cursor.index is not None and cursor.index < 0):
            raise ConfigError(f"Bad event id {event_id!r}: version and index cannot be negative")
        return cursor


@dataclass(frozen=True)
class ChangeEvent:
    """One change row with its event id."""

    id: str
    change: ChangeRow

    def wire(self) -> bytes:
        """The event in the SSE wire format: ``event: change``, its ``id`` and ``data`` as one JSON line."""
        data = {"version": self.change.version, "diff": self.change.diff, "key": self.change.key,
                "row": self.change.row}
        return format_sse_event(event="change", id=self.id, data_str=json.dumps(data, default=str))


class CommitSignal:
    """Wakes every waiting feed when a view commits, from one thread, so a waiting client holds no thread."""

    def __init__(self, db: "Database"):
        self._db = db
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deltamem-commit-signal", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def arm(self) -> asyncio.Event:
        """An event set at the next view commit. Arm before reading, so a commit between the read and the wait
        still wakes the reader."""
        event = asyncio.Event()
        with self._lock:
            self._waiters.add((asyncio.get_running_loop(), event))
        return event

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        """Wait for an armed event; False when ``timeout`` passed first."""
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters.discard((asyncio.get_running_loop(), event))

    def _run(self) -> None:
        seen = -1
        while not self._stopped.is_set():
            count = self._db.maintainer.wait_for_view_commit(seen, timeout=0.5)
            if count == seen:
                continue
            seen = count
            with self._lock:
                waiters, self._waiters = self._waiters, set()
            for loop, event in waiters:
                if not loop.is_closed():
                    loop.call_soon_threadsafe(event.set)


class ChangeFeed:
    """Reads a view's change rows after a cursor, in batches, waiting on the ``CommitSignal`` when caught up."""

    def __init__(self, db: "Database", signal: CommitSignal, *, keepalive: float = 15.0):
        self._db = db
        self._signal = signal
        self._keepalive = keepalive

    def start(self, view: str, last_event_id: str | None, after: int | None) -> Cursor:
        """Where a subscription starts: after ``Last-Event-ID`` if given, else after version ``after``, else after
        the version the view reflects now (only new changes). The cursor names the view there now."""
        self._db.view(view)  # NoView for an unknown name
        view_id = self._incarnation(view)  # before the applied version: a drop after this ends the feed unread
        if last_event_id:
            return replace(Cursor.parse(last_event_id), view_id=view_id)
        if after is not None:
            return Cursor(after, view_id=view_id)
        applied = self._db.store.get_applied_version(view)
        return Cursor(-1 if applied is None else applied, view_id=view_id)

    def _incarnation(self, view: str) -> int:
        view_id = self._db.store.get_view_id(view)
        if view_id is None:  # in this process's catalog, but dropped by another process
            raise NoView(f'View "{view}" was dropped')
        return view_id

    async def batches(self, view: str, after: Cursor) -> AsyncIterator[list[ChangeEvent]]:
        """Every change row of ``view`` after ``after``, a batch per store read, until the view ``after`` names is
        dropped; an empty batch after ``keepalive`` seconds without changes, so the caller can keep the connection
        alive."""
        cursor = after
        if cursor.view_id is None:
            try:
                cursor = replace(cursor, view_id=await anyio.to_thread.run_sync(self._incarnation, view))
            except NoView:
                return
        while True:
            woken = self._signal.arm()  # before the read: see CommitSignal.arm
            found, cursor, exists = await anyio.to_thread.run_sync(self._read, view, cursor)
            if found:
                yield found
            if not exists:
                return
            if not found and not await self._signal.wait(woken, self._keepalive):
                yield []

    def _row_order(self, view: str):
        try:
            return self._db._row_order(view)
        except NoView:  # dropped in this process meanwhile: the id check in _read sends none of these rows
            return None

    def _read(self, view: str, cursor: Cursor) -> tuple[list[ChangeEvent], Cursor, bool]:
        store = self._db.store
        applied = store.get_applied_version(view)
        first = cursor.version if cursor.index is not None else cursor.version + 1
        events: list[ChangeEvent] = []
        after = cursor
        if applied is not None and applied >= first:
            last = min(applied, first + _VERSIONS_PER_READ - 1)
            index, version = 0, first
            changes = store.get_view_changes(view, first, last)
            order = self._row_order(view) if changes else None
            for change in changes:
                if change.version != version:
                    version, index = change.version, 0
                if not (change.version == cursor.version and cursor.index is not None and index <= cursor.index):
                    row = change.row if order is None else order(change.row)  # the view's declared column order
                    events.append(ChangeEvent(f"{change.version}:{index}", replace(change, row=row)))
                index += 1
            after = Cursor(last, view_id=cursor.view_id)
        # Checked after the reads, by id and not by name: ids are never reused, so if the view is still the cursor's
        # one, everything read was its own; if not, what was read may be a new view's, and none of it goes out.
        if store.get_view_id(view) != cursor.view_id:
            return [], cursor, False
        return events, after, True


def parse_events(lines: Iterable[str]) -> Iterator[tuple[str, str | None, str]]:
    """The reading side of the wire format, for Python clients (the load benchmark, the tests): each event of an
    SSE stream's lines as ``(event, id, data)``; comment lines (keep-alives) are skipped."""
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in fields:
                yield fields.get("event", "message"), fields.get("id"), fields["data"]
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
