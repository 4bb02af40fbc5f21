"""Output for people and for programs: tables print whole cells when stdout is not a terminal (CliRunner's is not),
and rows, usage and explain have a --json that a program can parse."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from deltamem.cli import app
from tests.helpers import scripted_db

runner = CliRunner()
LONG = "Refunds are issued within 14 days of a return, " * 4  # 192 characters: wider than any default terminal
VIEW = "answers_for_the_support_team_and_the_billing_team"  # a long view name: the usage table once printed `answ…`


@pytest.fixture
def db_path(tmp_path) -> str:
    path = str(tmp_path / "out.db")
    db = scripted_db(path)
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
    docs.upsert([{"id": i, "text": f"{i}: {LONG}"} for i in range(1, 6)])
    db.view(VIEW, docs.sem_map("Summarise {text}", out="summary")).rows(fresh=True)
    db.close()
    return path


def test_tables_print_every_cell_whole_when_stdout_is_not_a_terminal(db_path):
    rows = runner.invoke(app, ["rows", db_path, VIEW], env={"COLUMNS": "80"})
    assert rows.exit_code == 0, rows.output
    assert "…" not in rows.output and f"1: {LONG.strip()}" in rows.output  # one line, not folded
    usage = runner.invoke(app, ["usage", db_path], env={"COLUMNS": "80"})
    assert usage.exit_code == 0 and "…" not in usage.output and VIEW in usage.output
    explain = runner.invoke(app, ["explain", db_path, VIEW, "1"], env={"COLUMNS": "80"})
    assert explain.exit_code == 0 and "…" not in explain.output


def test_rows_json_prints_one_object_per_row_and_limit_keeps_the_first(db_path):
    result = runner.invoke(app, ["rows", db_path, VIEW, "--json", "--limit", "2"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [row["id"] for row in lines] == [1, 2]
    assert list(lines[0]) == ["id", "text", "summary"] and lines[0]["text"] == f"1: {LONG}"
    table = runner.invoke(app, ["rows", db_path, VIEW, "--limit", "3"])
    text = " ".join(table.output.split())
    assert table.exit_code == 0 and "first 3 of 5 rows" in text and "4: Refunds" not in text
    bad = runner.invoke(app, ["rows", db_path, VIEW, "--limit", "-1"])
    assert bad.exit_code == 2


def test_usage_json_is_one_document_with_the_totals_and_each_view(db_path):
    result = runner.invoke(app, ["usage", db_path, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["calls"] == 5 and report["by_view"][VIEW]["calls"] == 5
    assert [(o["view"], o["calls"]) for o in report["by_operator"]] == [(VIEW, 5)]
    assert VIEW in report["full_recompute"] and "refreshes" in report["full_recompute"][VIEW]


def test_explain_json_is_one_document(db_path):
    result = runner.invoke(app, ["explain", db_path, VIEW, "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["key"] == 1 and list(report["row"]) == ["id", "text", "summary"]


@pytest.mark.parametrize("command", ["rows", "usage", "explain"])
def test_json_output_is_documented_in_help(command):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--json" in result.output and "JSON" in result.output.replace("--json", "")
