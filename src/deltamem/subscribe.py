"""Subscriptions: a view's change rows delivered to a callback, as Materialize's ``SUBSCRIBE`` prints them.

    sub = view.subscribe(print)   # ChangeRow(version=7, diff=1, key=1, row={...}) ...; sub.close()

Each subscription reads the view's history from the store on its own thread, in version order, each change row
exactly once, retractions before insertions within a version. A slow callback delays only itself: maintenance and
writers never wait for it, and nothing is lost while it lags, because the history is the queue.

A subscription follows one incarnation of the view (``ViewDef.id``): when the view is dropped, here or by another
process, it stops before delivering anything of a view created again under the name.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from deltamem.changes import decode_key
from deltamem.errors import NoView
from deltamem.store.base import ChangeRow, Store

log = logging.getLogger(__name__)


class Subscription:
    """Delivers the change rows of ``view`` after version ``delivered`` to ``callback`` until ``close()``.

    ``delivered`` only grows; it is the last version whose change rows were all handed to the callback.
    If the callback raises, the subscription stops and keeps the exception in ``error``; if the view is dropped, it
    stops and ``error`` is a ``NoView`` that says so.
    """

    def __init__(
        self, store: Store, view: str, callback: Callable[[ChangeRow], None], *, snapshot: bool,
        wakeup: threading.Condition,
    ):
        self.view = view
        self.error: BaseException | None = None
        self._store = store
        self._callback = callback
        self._wakeup = wakeup
        self._closed = threading.Event()
        self._view_id = store.get_view_id(view)  # read first: a drop after it shows in _gone() before any delivery
        applied = store.get_applied_version(view)
        self._snapshot: list[ChangeRow] = []
        if applied is None:
            # Not built yet: with a snapshot, the build's rows arrive as +1 changes; without, they are skipped.
            self.delivered: int | None = -1 if snapshot else None
        else:
            self.delivered = applied
            if snapshot:
                self._snapshot = [ChangeRow(applied, 1, decode_key(k), r)
                                  for k, r in store.get_view_rows(view, applied).items()]
                if store.get_view_id(view) != self._view_id:
                    self._snapshot = []  # dropped while it was read: the rows may be another incarnation's
        self._thread = threading.Thread(target=self._run, name=f"deltamem-subscribe-{view}", daemon=True)
        self._thread.start()

    def close(self, timeout: float | None = 5.0) -> None:
        self._closed.set()
        with self._wakeup:
            self._wakeup.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _gone(self) -> bool:
        """True (and ``error`` set) once the view this subscription follows has been dropped."""
        if self._store.get_view_id(self.view) == self._view_id:
            return False
        self.error = NoView(f'View "{self.view}" was dropped; the subscription ended')
        log.info("subscription to %s ended: the view was dropped", self.view)
        return True

    def _run(self) -> None:
        try:
            # The snapshot first, even when the view has been dropped since: it was read while the view was there.
            for change in self._snapshot:
                self._callback(change)
            self._snapshot = []
            if self._gone():
                return
            while not self._closed.is_set():
                applied = self._store.get_applied_version(self.view)
                if applied is not None and self.delivered is None:
                    self.delivered = applied  # created before the first build without a snapshot: skip it
                if applied is not None and applied > self.delivered:
                    changes = self._store.get_view_changes(self.view, self.delivered + 1, applied)
                    if self._gone():  # checked after the reads: ids are never reused, so what was read is ours
                        return
                    for change in changes:
                        if self._closed.is_set():
                            return
                        self._callback(change)
                    self.delivered = applied
                    continue
                if self._gone():
                    return
                with self._wakeup:
                    self._wakeup.wait(0.5)
        except BaseException as exc:  # the callback's error, kept for the owner; the thread must not die silently
            log.exception("subscription to %s stopped", self.view)
            self.error = exc
