"""Fixtures every test directory may use: the stores a store-level test runs on.

``store_kind`` parametrises a test over both stores (``sqlite``, ``postgres``); ``new_store_path`` gives, per call, the
path or DSN of a new, empty store of that kind for ``dm.connect``. The PostgreSQL server is started once per session,
in a temporary directory, and only when a test asks for it (``tests/pg.py``); so is ``logical_postgres_server``, one
with ``wal_level=logical`` for change data capture.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.pg import PostgresServer, throwaway_server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with throwaway_server("deltamem-pg-") as server:
        yield server


@pytest.fixture(scope="session")
def logical_postgres_server() -> Iterator[PostgresServer]:
    """A second throwaway server, with ``wal_level=logical``, for change data capture (``tests/unit/test_cdc.py``);
    a few replication slots, so that a test can use them all up."""
    settings = {"wal_level": "logical", "max_replication_slots": "4", "max_wal_senders": "4"}
    with throwaway_server("deltamem-pg-logical-", settings) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def new_store_path(store_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """A factory of new, empty stores of ``store_kind``: SQLite files under ``tmp_path``, or PostgreSQL databases."""
    if store_kind == "postgres":
        return request.getfixturevalue("postgres_server").new_database
    numbers = itertools.count(1)
    return lambda: str(tmp_path / f"store{next(numbers)}.db")


@pytest.fixture
def store_path(store_kind: str, new_store_path: Callable[[], str]) -> str:
    """A new, empty store of ``store_kind`` for one test: an in-memory SQLite one, or a PostgreSQL database."""
    return ":memory:" if store_kind == "sqlite" else new_store_path()
