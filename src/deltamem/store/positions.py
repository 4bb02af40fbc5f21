"""Where a followed source stands: the last position of an outside change stream that a store has applied.

    with store.transaction():
        store.commit(writes, committed_at=now)
        store.put_source_position("postgresql://db:5432/app?slot=deltamem_docs", "0/1925068")

Invariant: a position is written in the same store transaction as the writes it accounts for (``transaction()``),
so after a crash the stored position and the table agree: a change at or below it is in the table, and none above
it is. That is what lets a follower (``deltamem.cdc``) resume without losing or applying a change twice.
"""

from __future__ import annotations

import abc


class SourcePositions(abc.ABC):
    """The store methods that keep one position per followed source. A source is named by its follower (a DSN
    without password, with its replication slot); a position is that source's own text (a PostgreSQL LSN)."""

    @abc.abstractmethod
    def get_source_position(self, source: str) -> str | None:
        """The position last stored for ``source``, or ``None`` when none is (never followed, or forgotten)."""

    @abc.abstractmethod
    def put_source_position(self, source: str, position: str | None) -> None:
        """Store ``position`` for ``source`` (``None`` forgets it): one write, which inside ``transaction()``
        commits or rolls back with the block's other writes."""
