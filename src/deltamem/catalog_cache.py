"""One database's copy of the store's catalog: the tables and views it knows, and the catalog version they are.

    cache = CatalogCache(store); cache.tables["docs"]; cache.refresh()   # reloads if another process changed it

The store's catalog is the truth (several processes may share one store); this is a cache of it, and:

1. ``tables`` and ``views`` (in creation order) are the store's catalog as of ``version`` or later: ``reload`` reads
   the version first, then the definitions, so a change landing in between makes one more reload, never one less.
2. A name missing here is looked up in the store (``refresh``) before anyone is told it does not exist.
3. What a stale entry could do wrong, the store refuses: a CREATE of a name the store has with another definition
   (``AlreadyExists``), and a write checked against a definition the store no longer has (``CatalogChanged``, from
   ``Store.commit``'s ``checked``). The engine reloads after either.

Only ``reload`` replaces the dicts, with new ones, so that a reader iterating the old ones is never disturbed; the
engine adds (and removes) only what it created (and dropped) itself, under its lock.
"""

from __future__ import annotations

from deltamem.store.base import Store, TableDef, ViewDef


class CatalogCache:
    """The tables and views of one store, as of catalog version ``version``."""

    def __init__(self, store: Store):
        self.store = store
        self.version = -1
        self.tables: dict[str, TableDef] = {}
        self.views: dict[str, ViewDef] = {}
        self.reload()

    def reload(self) -> set[str]:
        """Read the catalog from the store; return the views gone or replaced since the last read (by id)."""
        version = self.store.get_catalog_version()
        tables = {t.name: t for t in self.store.get_table_defs()}
        views = {v.name: v for v in self.store.get_view_defs()}
        replaced = {name for name, old in self.views.items() if name not in views or views[name].id != old.id}
        self.tables, self.views, self.version = tables, views, version
        return replaced

    def is_current(self) -> bool:
        """Whether the store's catalog is still the one cached (one read)."""
        return self.store.get_catalog_version() == self.version
