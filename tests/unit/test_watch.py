"""A folder as a table: file creates, edits and deletes become one commit per sync; unchanged files cost nothing."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from deltamem.cli import app
from deltamem.errors import AlreadyExists, ConfigError, SchemaError
from deltamem.watch import FolderTable
from tests.helpers import paid_hashes, scripted_db

runner = CliRunner()


def _bump_mtime(path, seconds=5):
    """Move a file's mtime on, as a later edit would (file systems with coarse mtimes would otherwise hide it)."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + seconds * 1_000_000_000))


def _texts(table):
    return {row["path"]: row["text"] for row in table.rows()}


@pytest.fixture
def db():
    database = scripted_db()
    yield database
    database.close()


def test_sync_turns_creates_edits_and_deletes_into_one_commit_each(db, tmp_path):
    docs = tmp_path / "docs"
    (docs / "guide").mkdir(parents=True)
    (docs / "a.md").write_text("alpha")
    (docs / "guide" / "b.md").write_text("beta")
    (docs / "notes.txt").write_text("not markdown")
    mirror = FolderTable(db, "docs", docs, glob="**/*.md")
    summaries = db.view("summaries", mirror.table.sem_map("Summarise {text}", out="summary"))

    result = mirror.sync()
    assert (result.inserted, result.updated, result.deleted, result.version) == (["a.md", "guide/b.md"], [], [], 1)
    assert _texts(mirror.table) == {"a.md": "alpha", "guide/b.md": "beta"}
    assert isinstance(mirror.table.get("a.md")["mtime"], float)
    assert [row["text"] for row in summaries.rows(fresh=True)] == ["alpha", "beta"]
    calls = len(paid_hashes(db))

    (docs / "a.md").write_text("alpha, edited")
    _bump_mtime(docs / "a.md")
    (docs / "guide" / "c.md").write_text("gamma")
    (docs / "guide" / "b.md").unlink()
    result = mirror.sync()
    assert (result.inserted, result.updated, result.deleted, result.unchanged) == (["guide/c.md"], ["a.md"],
                                                                                  ["guide/b.md"], 0)
    assert result.version == db.version == 2  # one version for the three changes
    assert _texts(mirror.table) == {"a.md": "alpha, edited", "guide/c.md": "gamma"}
    rows = summaries.rows(fresh=True)
    assert [row["path"] for row in rows] == ["a.md", "guide/c.md"] and rows.version == 2
    assert len(paid_hashes(db)) == calls + 2  # the edit and the new file; the delete replays the stored output

    # Unchanged, or touched without an edit: no write, no version, no call.
    _bump_mtime(docs / "guide" / "c.md")
    (docs / "a.md").write_text("alpha, edited")
    result = mirror.sync()
    assert not result.changed and result.unchanged == 2 and result.summary() == "no change (2 files)"
    assert db.version == 2 and len(paid_hashes(db)) == calls + 2


def test_a_new_mirror_over_an_unchanged_folder_commits_nothing(db, tmp_path):
    (tmp_path / "a.md").write_text("alpha")
    FolderTable(db, "docs", tmp_path).sync()
    version = db.version
    again = FolderTable(db, "docs", tmp_path).sync()  # e.g. after a restart: hashes come from the table
    assert not again.changed and again.unchanged == 1 and db.version == version


def test_hidden_binary_and_large_files_are_not_rows(db, tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("hidden")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\0\0binary")
    (tmp_path / "big.txt").write_text("x" * 200)
    (tmp_path / "ok.txt").write_text("fine")
    mirror = FolderTable(db, "files", tmp_path, max_bytes=100)
    result = mirror.sync()
    assert result.inserted == ["ok.txt"]
    assert sorted(result.skipped) == [("big.txt", "larger than 100 bytes"), ("image.png", "binary")]
    assert mirror.sync().skipped == []  # reported once, not read again while unchanged
    assert FolderTable(db, "files", tmp_path, hidden=True, max_bytes=100).sync().inserted == [".git/config"]


def test_a_table_that_is_not_a_folder_table_is_an_error(db, tmp_path):
    db.table("people", key="id", columns={"id": "int", "name": "text"})
    with pytest.raises(AlreadyExists, match="exists with key 'id', not 'path'"):
        FolderTable(db, "people", tmp_path)
    db.table("other", key="path", columns={"path": "text", "body": "text"})
    with pytest.raises(SchemaError, match='Table "other" .* is not a folder table'):
        FolderTable(db, "other", tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        FolderTable(db, "docs", tmp_path / "missing")


def test_watch_once_command_syncs_and_refreshes_views(tmp_path):
    db_path, docs = tmp_path / "app.db", tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("alpha")
    args = ["watch", str(db_path), "docs", str(docs), "--glob", "*.md", "--once", "--llm", "test", "--embedder", "test"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "version 1: 1 inserted, 0 updated, 0 deleted, 0 unchanged" in result.output

    database = scripted_db(str(db_path))
    database.view("summaries", database.table("docs").sem_map("Summarise {text}", out="summary"))
    database.close()
    (docs / "a.md").write_text("alpha, edited")
    _bump_mtime(docs / "a.md")
    (docs / "b.md").write_text("beta")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "version 2: 1 inserted, 1 updated, 0 deleted" in result.output
    database = scripted_db(str(db_path))
    read = database.view("summaries").rows()
    assert read.lag == 0 and [row["text"] for row in read] == ["alpha, edited", "beta"]  # maintained by --once
    database.close()

    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "no change (2 files)" in result.output
    result = runner.invoke(app, args[:3] + [str(tmp_path / "nope"), "--once", "--llm", "test"])
    assert result.exit_code == 1 and "Error: Folder" in result.output and "does not exist" in result.output
