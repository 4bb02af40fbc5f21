"""deltamem: keep LLM-generated results fresh as their data changes.

    >>> import deltamem as dm
    >>> db = dm.connect(":memory:", llm="test", background=False)
    >>> papers = db.table("papers", key="id")
    >>> papers.upsert({"id": 1, "abstract": "A new index for streaming joins."})
    Written(version=1, inserted=1, updated=0, deleted=0, unchanged=0)
    >>> view = db.view("insights", papers.sem_map("State the key insight of {abstract}", out="insight"))
    >>> [sorted(row) for row in view.rows(fresh=True)]
    [['abstract', 'id', 'insight']]
"""

from __future__ import annotations

from typing import Any

from deltamem.changes import Change, ExpireMode, ManualClock, SystemClock, Written
from deltamem.engine import Database, check_max_concurrency
from deltamem.errors import ConfigError, DeltamemError
from deltamem.llm import lazy_embedder, lazy_llm
from deltamem.llm.base import EmbeddingBackend, LLMBackend
from deltamem.llm.runner import RetryPolicy
from deltamem.relation import Relation, Table, View, ViewRows
from deltamem.store import is_postgres_dsn
from deltamem.store.base import ChangeRow, HistoryEntry, Store

__version__ = "0.1.0"


def connect(
    path: str = "deltamem.db",
    *,
    llm: str | LLMBackend = "local",
    embedder: str | EmbeddingBackend = "minilm",
    llm_options: dict[str, Any] | None = None,
    embedder_options: dict[str, Any] | None = None,
    **options: Any,
) -> Database:
    """Open (or create) a database.

    ``path`` is a SQLite file (``":memory:"`` for a throwaway one), or a PostgreSQL DSN
    (``"postgresql://user:password@host:5432/dbname"``) for a store that several processes or machines share.
    ``llm`` is ``"local"`` (SmolLM2-135M-Instruct on this machine; the default), ``"openai"`` (any OpenAI-compatible endpoint; settings from ``llm_options`` or
    ``DELTAMEM_OPENAI_*``) or ``"test"`` (deterministic); ``embedder`` is ``"minilm"``, ``"openai"`` or ``"test"``.
    Other keyword arguments go to ``Database``: ``clock``, ``background``, ``retry``, ``max_concurrency`` (the most
    model calls run at once on the backend), ``progress``, ``poll_interval``, and for several processes on one store
    ``lease_timeout``, ``fair_share`` and ``claim_timeout``.
    """
    if "max_concurrency" in options:  # before the store opens (and creates a SQLite file) for nothing
        check_max_concurrency(options["max_concurrency"])
    llm_backend = lazy_llm(llm, **(llm_options or {}))
    embed_backend = lazy_embedder(embedder, **(embedder_options or {}))
    return Database(open_store(path), llm=llm_backend, embedder=embed_backend, **options)


def open_store(path: str) -> Store:
    """The store ``path`` names: a PostgreSQL one for a ``postgresql://`` (or ``postgres://``) DSN, else a SQLite
    file. Raises ``ConfigError`` naming the DSN (password hidden) when PostgreSQL cannot be reached with it."""
    if is_postgres_dsn(path):
        from deltamem.store.postgres import PostgresStore

        return PostgresStore(path)
    from deltamem.store.sqlite import SQLiteStore

    return SQLiteStore(path)


__all__ = [
    "Change", "ChangeRow", "ConfigError", "Database", "DeltamemError", "ExpireMode", "HistoryEntry", "ManualClock",
    "Relation", "RetryPolicy", "SystemClock", "Table", "View", "ViewRows", "Written", "connect",
]
