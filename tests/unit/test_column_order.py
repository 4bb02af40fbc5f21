"""Rows come back with their columns in the declared order (``view.columns``), wherever they are read: the Python API,
the HTTP API and the command line. The store keeps rows as JSON with sorted keys; nothing may leak that order."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from deltamem.cli import app
from deltamem.server import create_app
from tests.helpers import scripted_db

# Declared in an order that is not alphabetical: zeta < alpha < middle, then what the operator adds.
COLUMNS = {"zeta": "int", "alpha": "text", "middle": "text"}
DECLARED = ["zeta", "alpha", "middle", "summary"]


def _db(path: str = ":memory:"):
    db = scripted_db(path)
    notes = db.table("notes", key="zeta", columns=COLUMNS)
    notes.upsert([{"middle": "m1", "alpha": "a1", "zeta": 1}, {"alpha": "a2", "zeta": 2, "middle": "m2"}])
    view = db.view("summaries", notes.sem_map("Summarise {alpha} {middle}", out="summary"))
    view.rows(fresh=True)
    return db, notes, view


def test_view_rows_history_changes_and_subscriptions_keep_the_declared_column_order():
    db, notes, view = _db()
    assert list(view.columns) == DECLARED
    assert [list(row) for row in view.rows(fresh=True)] == [DECLARED, DECLARED]
    assert [list(row) for row in view.rows(as_of=db.version)] == [DECLARED, DECLARED]
    notes.upsert({"zeta": 1, "alpha": "a1 (v2)", "middle": "m1"})
    view.rows(fresh=True)
    assert [list(entry.row) for entry in view.history(1)] == [DECLARED, DECLARED]
    assert [list(change.row) for change in view.changes(1, db.version)] == [DECLARED] * 4
    seen = []
    view.subscribe(seen.append).close()
    assert seen and all(list(change.row) == DECLARED for change in seen)
    assert [list(row) for row in notes.rows()] == [list(COLUMNS)] * 2 and list(notes.get(2)) == list(COLUMNS)
    db.close()


def test_http_view_reads_keep_the_declared_column_order():
    db, _notes, _view = _db()
    client = TestClient(create_app(db), base_url="http://127.0.0.1")
    body = client.get("/views/summaries").text
    first = json.loads(body)["rows"][0]
    assert list(first) == DECLARED
    assert body.index('"zeta"') < body.index('"alpha"') < body.index('"middle"') < body.index('"summary"')
    db.close()


def test_cli_rows_keep_the_declared_column_order(tmp_path):
    path = str(tmp_path / "order.db")
    db, _notes, _view = _db(path)
    db.close()
    result = CliRunner().invoke(app, ["rows", path, "summaries", "--json"])
    assert result.exit_code == 0, result.output
    assert [list(json.loads(line)) for line in result.output.splitlines()] == [DECLARED, DECLARED]
    table = CliRunner().invoke(app, ["rows", path, "summaries"])
    header = next(line for line in table.output.splitlines() if "zeta" in line)
    assert header.index("zeta") < header.index("alpha") < header.index("middle") < header.index("summary")
