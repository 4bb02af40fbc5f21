"""Golden SQL scripts: each tests/sql/golden/NAME.sql runs through `deltamem run` on the test backend, and its output
(with the exit status) must equal NAME.expected. Set UPDATE_GOLDEN=1 to rewrite the expected files, then read the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deltamem.cli import app

GOLDEN = Path(__file__).parent / "golden"
SCRIPTS = sorted(p.stem for p in GOLDEN.glob("*.sql"))


def run_script(script: Path, db: Path | str) -> str:
    # A fixed width: rich would otherwise fold tables to the width of whatever terminal runs pytest.
    result = CliRunner().invoke(app, ["run", str(db), str(script), "--llm", "test", "--embedder", "test"],
                                env={"COLUMNS": "120"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return f"{result.output}[exit status {result.exit_code}]\n"


@pytest.mark.parametrize("name", SCRIPTS)
def test_golden_script_prints_its_expected_output(name, new_store_path):
    output = run_script(GOLDEN / f"{name}.sql", new_store_path())  # on both stores (``store_kind``)
    expected = GOLDEN / f"{name}.expected"
    if os.environ.get("UPDATE_GOLDEN"):
        expected.write_text(output)
    assert output == expected.read_text()


def test_golden_scripts_cover_every_statement_form():
    text = "\n".join((GOLDEN / f"{name}.sql").read_text() for name in SCRIPTS).upper()
    for form in ("CREATE TABLE", "CREATE STREAM", "CREATE CONTINUOUS VIEW", "LLM_GENERATE", "WITH (TTL", "INSERT INTO",
                 "ON CONFLICT DO NOTHING", "UPDATE ", "DELETE FROM", "AS OF VERSION", "SUBSCRIBE TO", "EXPLAIN VIEW",
                 " KEY ", "SHOW TABLES", "SHOW VIEWS", "SHOW USAGE", "SEM_FILTER(", "SEM_MAP(", "SEM_EXTRACT(",
                 "SEM_AGG(", "GROUP BY", "SEM_RANK(", "SEM_MATCH(", "SEM_SEARCH(", "PROMPT=\"GIVEN CONVERSATION",
                 "DROP TABLE", "DROP VIEW", "DROP CONTINUOUS VIEW", "DROP STREAM", "DROP VIEW IF EXISTS", " CASCADE;",
                 " RESTRICT;", "COPY ", "FORMAT = 'JSON'", "LIMIT = "):
        assert form in text, form


def test_the_seed_statement_is_in_the_golden_script_verbatim():
    seed = '''CREATE CONTINUOUS VIEW response_stream AS
LLM_GENERATE(
PROMPT="Given conversation context and support docs, generate a helpful response.",
CONTEXT=STREAM(conversation_events), -- user interactions, updates incrementally
DATA_SOURCE=STREAM(support_docs_or_events) -- knowledge updates streamed incrementally
);'''
    assert seed in (GOLDEN / "seed.sql").read_text()
