"""`deltamem subscribe`: change rows printed as they happen, while another process writes to the same file."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading

import pytest
from typer.testing import CliRunner

from deltamem.cli import app
from deltamem.sql import execute
from tests.helpers import scripted_db

DELTAMEM = [sys.executable, "-m", "deltamem"]  # the command line, without depending on the installed script
STARTUP_SECONDS = 300  # a cold start on a loaded two-core machine takes a minute or more
runner = CliRunner()


def _lines(stream) -> queue.Queue:
    """The stream's lines on a queue, read on a thread, so that the test can wait with a deadline."""
    found: queue.Queue = queue.Queue()

    def read() -> None:
        for line in stream:
            found.put(line.rstrip("\n"))
        found.put(None)  # end of output

    threading.Thread(target=read, daemon=True).start()
    return found


def _next(lines: queue.Queue, proc: subprocess.Popen, timeout: float) -> str:
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        proc.kill()
        pytest.fail(f"no output from deltamem subscribe within {timeout} s")
    if line is None:
        pytest.fail(f"deltamem subscribe ended early (exit {proc.wait()}): {proc.stderr.read()}")
    return line


def test_subscribe_prints_inserts_updates_and_deletes_written_by_another_process(tmp_path):
    db_path = str(tmp_path / "app.db")
    db = scripted_db(db_path)  # background=False: only the subscriber maintains the view
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
    docs.upsert({"id": 1, "text": "alpha"})  # version 1
    db.view("summaries", docs.sem_map("Summarise {text}", out="summary"))
    db.maintain()  # built at version 1, so the snapshot holds the first row

    proc = subprocess.Popen(
        [*DELTAMEM, "subscribe", db_path, "summaries", "--limit", "5", "--llm", "test", "--embedder", "test"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = _lines(proc.stdout)
        assert _next(lines, proc, STARTUP_SECONDS) == "version\tdiff\tid\ttext\tsummary"  # subscribed from here
        docs.upsert({"id": 2, "text": "beta"})  # version 2, from this process's own connection
        docs.upsert({"id": 1, "text": "alpha v2"})  # version 3
        docs.delete(2)  # version 4
        printed = [_next(lines, proc, 120).split("\t") for _ in range(5)]
        assert proc.wait(timeout=120) == 0, proc.stderr.read()  # --limit 5: exits by itself
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [fields[:4] for fields in printed] == [
        ["1", "+1", "1", "alpha"],  # the snapshot
        ["2", "+1", "2", "beta"],  # insert
        ["3", "-1", "1", "alpha"],  # update: the old row out, then the new row in
        ["3", "+1", "1", "alpha v2"],
        ["4", "-1", "2", "beta"],  # delete
    ]
    assert all(fields[4] for fields in printed)  # the model's summary column
    db.close()

    # --as-of replays history: the rows at version 2, then every change after it.
    result = runner.invoke(app, ["subscribe", db_path, "summaries", "--as-of", "2", "--limit", "5", "--json",
                                 "--llm", "test", "--embedder", "test"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [(r["version"], r["diff"], r["key"], r["row"]["text"]) for r in rows] == [
        (2, 1, 1, "alpha"), (2, 1, 2, "beta"), (3, -1, 1, "alpha"), (3, 1, 1, "alpha v2"), (4, -1, 2, "beta")]

    result = runner.invoke(app, ["subscribe", db_path, "summaries", "--since", "3", "--no-snapshot", "--limit", "1",
                                 "--no-header", "--llm", "test", "--embedder", "test"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].split("\t")[:4] == ["4", "-1", "2", "beta"]


def test_subscribe_to_an_unknown_view_is_an_error(tmp_path):
    db_path = str(tmp_path / "app.db")
    db = scripted_db(db_path)
    db.view("summaries", db.table("docs", key="id", columns={"id": "int", "text": "text"})
            .sem_map("Summarise {text}", out="summary"))
    db.close()
    result = runner.invoke(app, ["subscribe", db_path, "sumaries", "--llm", "test", "--embedder", "test"])
    assert result.exit_code == 1
    assert 'Error: View "sumaries" does not exist. Did you mean \'summaries\'?' in result.output


def test_subscribe_prints_columns_in_the_order_sql_or_python_declared_them(tmp_path):
    db_path = str(tmp_path / "app.db")
    with scripted_db(db_path) as db:  # closed before the command opens the file: it learns the columns from the store
        execute(db, "CREATE TABLE docs (zid TEXT PRIMARY KEY, title TEXT, body TEXT);"
                    "INSERT INTO docs VALUES ('a', 'Title', 'Body');"
                    "CREATE CONTINUOUS VIEW everything AS SELECT * FROM docs WHERE zid <> ''")
        notes = db.table("notes", key="zid", columns={"zid": "text", "title": "text", "body": "text"})
        notes.upsert({"zid": "n", "title": "Note", "body": "text"})
        db.view("gists", notes.sem_map("Sum up {body}", out="gist"))
        db.maintain()
    args = ["--limit", "1", "--llm", "test", "--embedder", "test"]
    result = runner.invoke(app, ["subscribe", db_path, "everything", *args])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[:2] == ["version\tdiff\tzid\ttitle\tbody", "3\t+1\ta\tTitle\tBody"]
    result = runner.invoke(app, ["subscribe", db_path, "gists", *args])
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()[:2]
    assert header == "version\tdiff\tzid\ttitle\tbody\tgist" and row.split("\t")[2:5] == ["n", "Note", "text"]
