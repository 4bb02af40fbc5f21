"""Internal tables (the SQL layer's ``_sql_catalog``) are never listed, read or written through the HTTP API or SQL."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from deltamem.errors import NoTable
from deltamem.server import create_app
from deltamem.sql import execute
from deltamem.sql.catalog import CATALOG_TABLE

STATEMENTS = [
    "SELECT * FROM _sql_catalog",
    "SELECT n.id FROM notes n JOIN _sql_catalog c ON n.id = c.name",
    "INSERT INTO _sql_catalog (name, kind) VALUES ('x', 'table')",
    "UPDATE _sql_catalog SET kind = 'stream' WHERE name = 'notes'",
    "DELETE FROM _sql_catalog WHERE name = 'notes'",
    "DROP TABLE _sql_catalog",
    "DROP TABLE IF EXISTS _sql_catalog",
    "DROP TABLE notes, _sql_catalog",
    "CREATE TABLE _sql_extra (id TEXT PRIMARY KEY)",
    "CREATE CONTINUOUS VIEW leak AS SELECT name, SEM_MAP('Sum up {kind}') AS s FROM _sql_catalog",
]


@pytest.fixture
def client(seeded_db):
    http = TestClient(create_app(seeded_db), base_url="http://127.0.0.1")
    made = http.post("/sql", json={"sql": "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)"})
    assert made.status_code == 200, made.text
    assert CATALOG_TABLE in seeded_db.tables()  # the SQL layer keeps its catalog row there
    return http


def test_internal_tables_are_not_listed_or_logged(client):
    assert [t["name"] for t in client.get("/tables").json()] == ["docs", "notes", "questions"]
    assert all(CATALOG_TABLE not in commit["tables"] for commit in client.get("/log").json())
    assert CATALOG_TABLE not in client.post("/sql", json={"sql": "SHOW TABLES"}).text


def test_internal_tables_cannot_be_written_through_changes(client, seeded_db):
    before = (seeded_db.version, seeded_db.table(CATALOG_TABLE).rows())
    for body in ([{"op": "delete", "key": "notes"}], [{"op": "upsert", "row": {"name": "x", "kind": "table"}}]):
        answer = client.post(f"/tables/{CATALOG_TABLE}/changes", json=body)
        assert answer.status_code == 403, answer.text
        assert answer.json()["detail"].startswith(f'Table "{CATALOG_TABLE}" is internal to deltamem')
    typo = client.post("/tables/_sql_catalo/changes", json=[{"op": "delete", "key": "notes"}])
    assert typo.status_code == 403 and "internal" in typo.json()["detail"]  # any _sql_ name, existing or not
    missing = client.post("/tables/note/changes", json=[{"op": "delete", "key": "a"}])
    assert missing.status_code == 404 and CATALOG_TABLE not in missing.json()["detail"]
    assert (seeded_db.version, seeded_db.table(CATALOG_TABLE).rows()) == before


@pytest.mark.parametrize("sql", STATEMENTS)
def test_sql_over_http_refuses_internal_tables(client, seeded_db, sql):
    before = (seeded_db.version, seeded_db.tables(), seeded_db.views(), seeded_db.table(CATALOG_TABLE).rows())
    answer = client.post("/sql", json={"sql": sql})
    assert answer.status_code == 403, answer.text
    assert "is internal to deltamem" in answer.json()["detail"] and '"_sql_' in answer.json()["detail"]
    assert (seeded_db.version, seeded_db.tables(), seeded_db.views(), seeded_db.table(CATALOG_TABLE).rows()) == before


@pytest.mark.parametrize("sql", STATEMENTS)
def test_the_sql_layer_refuses_internal_tables(client, seeded_db, sql):
    with pytest.raises(NoTable, match=r'Table "_sql_\w+" is internal to deltamem'):
        execute(seeded_db, sql)
