"""Reads over HTTP are bounded: a view whose maintenance is stuck gets a 503 that says how far behind it is, within
the server's read timeout, and ``GET /views/{view}`` still answers its stale rows with their version and lag."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from typer.testing import CliRunner

import deltamem as dm
from deltamem.cli import app as cli
from deltamem.llm.scripted import ScriptedLLM
from deltamem.server.app import DEFAULT_READ_TIMEOUT
from tests.helpers import NO_WAIT


class GatedLLM(ScriptedLLM):
    """The test backend, but every call waits until ``gate`` is set: maintenance blocks while it is clear."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()

    def complete(self, request, **hints):
        self.gate.wait(60)
        return super().complete(request, **hints)


@pytest.fixture
def blocked_db(tmp_path):
    """View ``v`` built at one version, then a commit its maintenance cannot finish until ``llm.gate`` is set."""
    llm = GatedLLM()
    db = dm.connect(str(tmp_path / "blocked.db"), llm=llm, embedder="test", retry=NO_WAIT, poll_interval=0.05)
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
    docs.upsert([{"id": 1, "text": "one"}])
    db.view("v", docs.sem_map("Summarise {text}", out="s"))
    db.maintain(timeout=30)
    built = db.view("v").version
    llm.gate.clear()
    docs.upsert([{"id": 2, "text": "two"}])  # maintenance of this version now waits on the gate
    yield db, llm, built
    llm.gate.set()
    db.close()


def _timed_sql(http: httpx.Client, sql: str) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    answer = http.post("/sql", json={"sql": sql})
    return answer, time.monotonic() - start


def test_a_read_of_a_blocked_view_answers_503_within_the_bound(blocked_db, serve):
    db, llm, built = blocked_db
    server = serve(db, read_timeout=0.5)
    with httpx.Client(base_url=server.url, timeout=20) as http:
        for sql in ("SELECT * FROM v", "SUBSCRIBE TO v", "SHOW USAGE"):
            answer, seconds = _timed_sql(http, sql)
            assert answer.status_code == 503, (sql, answer.text)
            assert 0.4 < seconds < 3, (sql, seconds)
            detail = answer.json()["detail"]
            assert f'View "v" reflects version {built}, not yet {db.version}' in detail, detail
            assert "1 version behind" in detail and "0.5 s" in detail, detail
            assert "GET /views/v answers its rows at once" in detail, detail

        stale = http.get("/views/v")  # never waits: the rows it has, their version and lag
        assert stale.status_code == 200
        body = stale.json()
        assert (body["version"], body["lag_versions"]) == (built, 1) and body["lag_seconds"] > 0
        assert [row["id"] for row in body["rows"]] == [1]

        llm.gate.set()  # maintenance goes on: the same read is fresh again
        answer, _ = _timed_sql(http, "SELECT id FROM v")
        assert answer.status_code == 200 and answer.json()["rows"] == [[1], [2]]


def test_the_default_bound_is_a_few_seconds(blocked_db, serve):
    db, _llm, _built = blocked_db
    assert 1 <= DEFAULT_READ_TIMEOUT <= 10
    server = serve(db)
    with httpx.Client(base_url=server.url, timeout=DEFAULT_READ_TIMEOUT + 10) as http:
        answer, seconds = _timed_sql(http, "SELECT * FROM v")
    assert answer.status_code == 503 and seconds < DEFAULT_READ_TIMEOUT + 3, (answer.text, seconds)


def test_serve_takes_a_read_timeout(tmp_path, monkeypatch):
    import uvicorn

    import deltamem.server.app as server_app

    made: dict = {}
    real = server_app.create_app
    monkeypatch.setattr(server_app, "create_app", lambda db, **options: made.update(options) or real(db, **options))
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: None)
    ok = CliRunner().invoke(cli, ["serve", str(tmp_path / "a.db"), "--llm", "test", "--embedder", "test",
                                  "--read-timeout", "2.5"])
    assert ok.exit_code == 0, ok.output
    assert made["read_timeout"] == 2.5
    bad = CliRunner().invoke(cli, ["serve", str(tmp_path / "b.db"), "--llm", "test", "--read-timeout", "0"])
    assert bad.exit_code == 1 and "--read-timeout must be positive" in bad.output
