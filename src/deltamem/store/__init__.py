"""The stores behind ``deltamem.store.base.Store``: ``sqlite`` (a file, the default) and ``postgres`` (a DSN)."""

from __future__ import annotations

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_dsn(path: str) -> bool:
    """Whether ``path`` names a PostgreSQL database (a ``postgresql://`` DSN) rather than a SQLite file.

    >>> is_postgres_dsn("postgresql://me@db/app"), is_postgres_dsn("app.db")
    (True, False)
    """
    return path.startswith(POSTGRES_SCHEMES)
