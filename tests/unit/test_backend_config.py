"""Backends are checked when a database is opened, before anything runs: a script whose backend is misconfigured
changes nothing. And a backend that loads a model says so, once, with how long it took."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

import deltamem as dm
from deltamem.cli import app
from deltamem.llm import LLM_BACKENDS
from deltamem.llm.scripted import ScriptedLLM

runner = CliRunner()
OPENAI_SETTINGS = ("DELTAMEM_OPENAI_MODEL", "DELTAMEM_OPENAI_BASE_URL", "DELTAMEM_OPENAI_API_KEY",
                   "DELTAMEM_OPENAI_EMBED_MODEL", "DELTAMEM_OPENAI_EMBED_BASE_URL", "DELTAMEM_OPENAI_EMBED_API_KEY",
                   "OPENAI_BASE_URL", "OPENAI_API_KEY")
SCRIPT = """CREATE TABLE notes (id TEXT PRIMARY KEY, text TEXT);
CREATE CONTINUOUS VIEW summaries AS SELECT id, SEM_MAP('Summarise {text}') AS summary FROM notes;
INSERT INTO notes (id, text) VALUES ('a', 'Refunds are issued within 14 days.');
SELECT * FROM summaries;
"""


@pytest.fixture(autouse=True)
def no_openai_settings(monkeypatch):
    for name in OPENAI_SETTINGS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "setup.sql"
    path.write_text(SCRIPT)
    return path


def _state(path) -> tuple[int, list[str]]:
    with dm.connect(str(path), llm="test", embedder="test") as db:
        return db.version, db.tables()


def test_a_script_on_openai_without_a_model_fails_before_its_first_statement(tmp_path, script):
    db = tmp_path / "app.db"
    with dm.connect(str(db), llm="test", embedder="test") as existing:
        existing.table("old", key="id", columns={"id": "int"}).upsert({"id": 1})
    before = _state(db)
    result = runner.invoke(app, ["run", str(db), str(script), "--llm", "openai", "--embedder", "test"])
    assert result.exit_code == 1
    assert result.output == "Error: OpenAILLM needs a model: pass model=... or set DELTAMEM_OPENAI_MODEL\n"
    assert _state(db) == before  # CREATE TABLE notes never ran


def test_a_misconfigured_backend_creates_no_database_file(tmp_path, script):
    db = tmp_path / "new.db"
    unknown = runner.invoke(app, ["run", str(db), str(script), "--llm", "opnai", "--embedder", "test"])
    assert unknown.exit_code == 1 and "Unknown LLM backend 'opnai'. Did you mean 'openai'?" in unknown.output
    no_url = runner.invoke(app, ["run", str(db), str(script), "--llm", "test", "--embedder", "openai"],
                           env={"DELTAMEM_OPENAI_EMBED_MODEL": "nomic-embed"})
    assert no_url.exit_code == 1 and "OpenAIEmbedder needs a base URL" in no_url.output
    no_model = runner.invoke(app, ["run", str(db), str(script), "--llm", "test", "--embedder", "openai"],
                             env={"DELTAMEM_OPENAI_MODEL": "qwen", "DELTAMEM_OPENAI_BASE_URL": "http://x/v1"})
    assert no_model.exit_code == 1 and "set DELTAMEM_OPENAI_EMBED_MODEL" in no_model.output
    assert not db.exists()


def test_connect_checks_backend_options_and_settings_before_opening_the_file(tmp_path):
    path = tmp_path / "app.db"
    with pytest.raises(dm.ConfigError, match="LLM backend 'test' has no option 'latancy'. Did you mean 'latency'"):
        dm.connect(str(path), llm="test", embedder="test", llm_options={"latancy": 1.0})
    with pytest.raises(dm.ConfigError, match="OpenAILLM needs a base URL"):
        dm.connect(str(path), llm="openai", embedder="test", llm_options={"model": "qwen"})
    with pytest.raises(dm.ConfigError, match="No GGUF model file at /nowhere/model.gguf"):
        dm.connect(str(path), llm="local", embedder="test", llm_options={"model_path": "/nowhere/model.gguf"})
    assert not path.exists()
    # Complete settings pass, and nothing is sent or loaded until a call needs the model.
    with dm.connect(str(path), llm="openai", embedder="test",
                    llm_options={"model": "qwen", "base_url": "http://127.0.0.1:9/v1"}) as db:
        assert db.version == 0


class SlowLLM(ScriptedLLM):
    """The test double, announced as a model that loads."""

    load_label = "Slow-1 (Q8)"


def test_the_cli_prints_one_line_when_a_model_loads(tmp_path, script, monkeypatch):
    monkeypatch.setitem(LLM_BACKENDS, "slow", f"{__name__}:SlowLLM")
    result = runner.invoke(app, ["run", str(tmp_path / "slow.db"), str(script), "--llm", "slow", "--embedder", "test"])
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"Loaded Slow-1 \(Q8\) in \d+\.\d s\n", result.stderr), result.stderr
    quiet = runner.invoke(app, ["run", str(tmp_path / "quiet.db"), str(script), "--llm", "test", "--embedder", "test"])
    assert quiet.exit_code == 0 and quiet.stderr == ""  # the test double loads nothing worth a line


def test_the_local_model_is_announced_by_its_name_and_quantisation():
    from pathlib import Path

    from deltamem.llm.local import _label_for

    assert _label_for(Path("SmolLM2-135M-Instruct.Q4_1.gguf")) == "SmolLM2-135M-Instruct (Q4_1)"
    assert _label_for(Path("model.gguf")) == "model.gguf"
