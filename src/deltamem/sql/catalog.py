"""What the planner may know about a database: names, kinds and columns of its tables, streams and views.

    Catalog(db).resolve("papers")   # Source(kind='table', name='papers'), or NoTable naming the closest names

Invariant: the catalog only reads. SQL keeps what the engine does not in the hidden table ``_sql_catalog``, one row
per table created by SQL: its kind (``table`` or ``stream``), its columns in declared order (a store written before
``TableDef`` kept the order has a table's columns sorted by name) and, for a stream, its next sequence number. Tables whose names start with ``_sql_``
belong to the SQL layer: ``is_internal`` is the one rule, and no SQL statement or HTTP route lists, reads, writes,
creates or drops them (``refuse_internal`` raises ``InternalTable``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deltamem.errors import NoTable, NoView, did_you_mean
from deltamem.sql.errors import InternalTable
from deltamem.store.base import TableDef

if TYPE_CHECKING:
    from deltamem.engine import Database

HIDDEN_PREFIX = "_sql_"
CATALOG_TABLE = "_sql_catalog"
CATALOG_COLUMNS = {"name": "text", "kind": "text", "columns": "json", "next_seq": "int"}  # key: name
SEQUENCE_COLUMN = "seq"  # a stream's implicit key column


def is_internal(name: str) -> bool:
    """True for a name of deltamem's own tables (``_sql_catalog``), whether or not such a table exists yet."""
    return name.startswith(HIDDEN_PREFIX)


def refuse_internal(name: str) -> None:
    """Raise ``InternalTable`` when ``name`` is internal (see ``is_internal``)."""
    if is_internal(name):
        raise InternalTable(f'Table "{name}" is internal to deltamem: names starting with {HIDDEN_PREFIX!r} are kept '
                            "by the SQL layer and cannot be read or written; SHOW TABLES lists the tables you can")


@dataclass(frozen=True)
class Source:
    """A table (or stream) or a view, by name."""

    kind: str  # "table" | "view"
    name: str


class Catalog:
    """Read-only names and columns of one database, as SQL sees them."""

    def __init__(self, db: "Database"):
        self.db = db

    def tables(self) -> list[str]:
        return [t for t in self.db.tables() if not is_internal(t)]

    def views(self) -> list[str]:
        return list(self.db.views())

    def entry(self, name: str) -> dict[str, Any] | None:
        """The ``_sql_catalog`` row of table ``name``; None for a table made through the Python API.

        A row whose table is gone (dropped with ``db.drop_table``, which knows nothing of SQL) is ignored, and the
        next CREATE of the name replaces it; ``DROP TABLE`` removes the row with the table.
        """
        tables = self.db.tables()
        if CATALOG_TABLE not in tables or name not in tables:
            return None
        return self.db.table(CATALOG_TABLE).get(name)

    def streams(self) -> set[str]:
        tables = self.db.tables()
        if CATALOG_TABLE not in tables:
            return set()
        return {row["name"] for row in self.db.table(CATALOG_TABLE).rows()
                if row["kind"] == "stream" and row["name"] in tables}

    def exists(self, name: str) -> bool:
        return name in self.tables() or name in self.views()

    def resolve(self, name: str, *, kinds: tuple[str, ...] = ("table", "view")) -> Source:
        """The table or view called ``name``, or ``NoTable``/``NoView`` naming the closest names of those kinds
        (``InternalTable`` for an internal name)."""
        refuse_internal(name)
        if "table" in kinds and name in self.tables():
            return Source("table", name)
        if "view" in kinds and name in self.views():
            return Source("view", name)
        wrong = "view" if name in self.views() else "table" if name in self.tables() else None
        choices = (self.tables() if "table" in kinds else []) + (self.views() if "view" in kinds else [])
        what = " or ".join(f"{kind}" for kind in kinds).capitalize()
        if wrong is not None:
            raise (NoTable if "table" in kinds else NoView)(
                f'"{name}" is a {wrong}; {what.lower()} expected here')
        error = NoView if kinds == ("view",) else NoTable
        raise error(f'{what} "{name}" does not exist.' + did_you_mean(name, choices))

    def columns(self, source: Source) -> tuple[str, ...]:
        """A table's columns in declared order, or a view's in the order its operators produce them."""
        if source.kind == "table":
            entry = self.entry(source.name)
            columns = self.db.table(source.name).columns
            if entry is not None and sorted(entry["columns"]) == sorted(columns):
                return tuple(entry["columns"])
            return columns
        return self.db.view(source.name).columns

    def table_def(self, name: str) -> TableDef:
        self.resolve(name, kinds=("table",))
        return next(t for t in self.db.store.get_table_defs() if t.name == name)
