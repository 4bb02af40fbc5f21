"""``POST /tables/{table}/changes``: a list of upserts, deletes and Debezium-style events, applied as one version.

    apply_changes(db, "docs", [Upsert(row={"id": "a", "text": "..."}), Delete(key="b")])   # -> Applied(version=9, ...)

Invariant: a request is one version or nothing (nothing, too, when none of its changes changes a row). Every change
is checked and staged in one ``db.batch()``; the first bad one raises ``ChangeError`` naming its position, and the
table is exactly as before. Within one request the last change of a key wins, as in a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from deltamem.errors import DeltamemError, LoadError, NoTable, did_you_mean
from deltamem.ingest import Record, event_records
from deltamem.sql.catalog import Catalog, refuse_internal

if TYPE_CHECKING:
    from deltamem.engine import Database


class Upsert(BaseModel):
    """Insert ``row``, or replace the row with its key."""

    model_config = ConfigDict(extra="forbid")
    op: Literal["upsert"] = "upsert"
    row: dict[str, Any]


class Delete(BaseModel):
    """Delete the row with this key (nothing happens when there is none)."""

    model_config = ConfigDict(extra="forbid")
    op: Literal["delete"]
    key: str | int


class DebeziumEvent(BaseModel):
    """A Debezium-style change event: ``c``/``r``/``u`` upsert ``after``; ``d`` deletes ``before``'s key; a ``u``
    whose key changed also deletes ``before``'s key."""

    model_config = ConfigDict(extra="ignore")  # Debezium events carry source, ts_ms, transaction ...
    op: Literal["c", "r", "u", "d"]
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


ChangeItem = Annotated[Upsert | Delete | DebeziumEvent, Field(discriminator="op")]


class Applied(BaseModel):
    """What a request committed: counts of real changes (rewriting an identical row, or deleting an absent key, is
    ``unchanged``) and the version that holds them; a request that changes nothing commits no version (null)."""

    version: int | None
    inserted: int
    updated: int
    deleted: int
    unchanged: int


class ChangeError(DeltamemError):
    """Raised when one change of a request is malformed or does not fit the table; nothing was applied."""

    def __init__(self, position: int, problem: str):
        end = " " if problem.endswith((".", "?")) else ". "
        super().__init__(f"change {position}: {problem}{end}Nothing was applied.")
        self.position = position


def apply_changes(db: "Database", table: str, changes: Sequence[Upsert | Delete | DebeziumEvent]) -> Applied:
    """Apply ``changes`` to ``table`` as one version (see the module docstring); positions count from 0."""
    refuse_internal(table)
    catalog = Catalog(db)
    public = catalog.tables()
    if table not in public:
        if table in catalog.views():
            raise NoTable(f'"{table}" is a view, not a table: a view is maintained from what it reads '
                          f"({db.view(table).definition.describe()}); post changes to a table it reads")
        raise NoTable(f'Table "{table}" does not exist.' + did_you_mean(table, public))
    target = db.table(table)
    with db.batch() as batch:
        for position, change in enumerate(changes):
            for record in _records(change, position, target.key):
                try:
                    if record.delete:
                        target.delete(record.row[target.key])
                    else:
                        target.upsert(record.row)
                except DeltamemError as exc:
                    raise ChangeError(position, str(exc).replace("Row 0 for table", "the row for table")) from exc
    written = batch.written
    assert written is not None, "writes: a batch that did not raise and wrote rows has committed"
    return Applied(version=written.version, inserted=written.inserted, updated=written.updated,
                   deleted=written.deleted, unchanged=written.unchanged)


def _records(change: Upsert | Delete | DebeziumEvent, position: int, key: str) -> list[Record]:
    if isinstance(change, Upsert):
        return [Record(position, change.row)]
    if isinstance(change, Delete):
        return [Record(position, {key: change.key}, delete=True)]
    try:
        return list(event_records(change.model_dump(), "request", position, key))
    except LoadError as exc:
        raise ChangeError(position, exc.problem) from None
