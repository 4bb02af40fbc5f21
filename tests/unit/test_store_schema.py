"""Opening a store file: a schema-2 file (before refresh_costs) is upgraded in place; an unknown schema is refused."""

from __future__ import annotations

import sqlite3

import pytest

from deltamem.store.sqlite import SQLiteStore
from deltamem.store.sqlite_schema import SCHEMA_VERSION


def _set_schema(path: str, version: int, *, drop_refresh_costs: bool) -> None:
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(version),))
    if drop_refresh_costs:
        conn.execute("DROP TABLE refresh_costs")
    conn.commit()
    conn.close()


def test_a_schema_2_file_is_upgraded_and_keeps_its_data(tmp_path):
    path = str(tmp_path / "old.db")
    store = SQLiteStore(path)
    version, _ = store.commit([], committed_at=1.0)
    store.close()
    _set_schema(path, 2, drop_refresh_costs=True)

    reopened = SQLiteStore(path)
    assert reopened.get_latest_version() == version
    assert reopened.get_costs_by_version() == []  # the cost history starts at the upgrade
    reopened.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    conn.close()


def test_a_file_of_an_unknown_schema_is_refused(tmp_path):
    path = str(tmp_path / "future.db")
    SQLiteStore(path).close()
    _set_schema(path, SCHEMA_VERSION + 1, drop_refresh_costs=False)
    with pytest.raises(RuntimeError, match=f"has store schema {SCHEMA_VERSION + 1}; this deltamem reads"):
        SQLiteStore(path)
