"""The command line: thin wrappers over the API, with exact errors and exit codes."""

from __future__ import annotations

import json

from typer.testing import CliRunner

import deltamem as dm
from deltamem.cli import app

runner = CliRunner()


def test_demo_on_the_test_backend_ends_with_the_cost_table(tmp_path):
    db = tmp_path / "demo.db"
    result = runner.invoke(app, ["demo", "--llm", "test", "--embedder", "test", "--db", str(db), "--passages", "24"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps at the terminal's width
    assert "full recompute at every refresh would have paid" in text
    assert "clock +6 days: TTL expiry" in text
    assert "LLM_GENERATE: standing answers to 2Wiki questions" in text
    assert "substitution" in text and "(relevant)" in text and "(irrelevant)" in text  # the edit table (folded)
    assert "no heat map: this backend has no attention" in text  # the test backend; the local one draws it
    assert "answers: deltamem paid" in text

    usage = runner.invoke(app, ["usage", str(db), "--json"])
    assert usage.exit_code == 0, usage.output
    totals = json.loads(usage.output)
    assert 0 < totals["calls"] < totals["full_recompute_calls"] and totals["memo_hits"] >= 1  # the restore
    assert totals["full_recompute_calls"] < totals["full_recompute_no_memo_calls"]

    rows = runner.invoke(app, ["rows", str(db), "people", "--as-of", "2"])
    assert rows.exit_code == 0 and "people at version 2" in " ".join(rows.output.split())


def test_demo_with_a_misconfigured_backend_keeps_the_last_demo_database(tmp_path, monkeypatch):
    monkeypatch.delenv("DELTAMEM_OPENAI_MODEL", raising=False)
    db = tmp_path / "demo.db"
    db.write_bytes(b"the last run")
    result = runner.invoke(app, ["demo", "--llm", "openai", "--embedder", "test", "--db", str(db)])
    assert result.exit_code == 1 and "model" in result.output
    assert db.read_bytes() == b"the last run"


def test_unknown_view_is_an_error_with_the_nearest_name(tmp_path):
    db = tmp_path / "demo.db"
    runner.invoke(app, ["demo", "--llm", "test", "--embedder", "test", "--db", str(db), "--passages", "20"])
    result = runner.invoke(app, ["rows", str(db), "peple"])
    assert result.exit_code == 1
    assert 'Error: View "peple" does not exist. Did you mean \'people\'?' in result.output


def test_missing_database_file_is_an_error(tmp_path):
    result = runner.invoke(app, ["usage", str(tmp_path / "nope.db")])
    assert result.exit_code == 1 and "does not exist" in result.output


def test_bench_rowwise_reports_ratios_and_agreement(tmp_path):
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "rowwise", "--llm", "test", "--passages", "30", "--changes", "20",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["views_agree"] is True
    # the baseline recomputes every output in the same engine: its memo answers all but the changed prompts, which
    # is what deltamem pays for a row-wise view, and what the ledger's counterfactual says
    assert data["full_recompute"]["calls"] == data["incremental"]["calls"] > 0 and data["ledger_agrees"] is True
    assert data["full_recompute_no_memo"]["calls"] > data["full_recompute"]["calls"]
    assert data["ratios"]["calls"] == 1.0 and data["ratios"]["calls_no_memo"] > 1
    text = " ".join(result.output.split())  # rich wraps at the terminal's width
    assert "matches the calls the full recompute paid: True" in text


def test_bench_edit_stream_reports_every_strategy_against_full(tmp_path):
    out = tmp_path / "edit.json"
    result = runner.invoke(app, ["bench", "edit-stream", "--llm", "test", "--questions", "4", "--edits-per-question",
                                 "4", "--strategies", "auto,skip,regenerate", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["config"]["edits"] >= 12 and set(data["strategies"]) == {"full", "auto", "skip", "regenerate"}
    full, regenerate = data["strategies"]["full"], data["strategies"]["regenerate"]
    assert full["agreement"] == 1.0 and regenerate["agreement"] == 1.0  # exact strategies agree with full
    assert full["calls"] == data["config"]["edits"]  # the baseline answers again after every edit
    for name in ("calls", "prompt_tokens", "reused_tokens", "output_tokens", "seconds", "agreement", "takeup",
                 "contains", "f1", "contains_vs_full_ci", "f1_vs_full_ci", "skip_precision", "verify_precision"):
        assert name in data["strategies"]["auto"]
    assert len(data["edits"]) == data["config"]["edits"]
    assert set(data["edits"][0]["strategies"]) == set(data["strategies"])  # every answer of every strategy
    text = " ".join(result.output.split())  # rich wraps at the terminal's width
    assert "answers after each edit" in text and "paired bootstrap 95% interval" in text


def test_bench_edit_stream_rejects_an_unknown_strategy():
    result = runner.invoke(app, ["bench", "edit-stream", "--llm", "test", "--strategies", "fastest"])
    assert result.exit_code == 1 and "Unknown strategies ['fastest']" in result.output


def test_explain_prints_an_outputs_decisions(tmp_path):
    db = tmp_path / "demo.db"
    runner.invoke(app, ["demo", "--llm", "test", "--embedder", "test", "--db", str(db), "--passages", "20"])
    result = runner.invoke(app, ["explain", str(db), "people", "Polish-Russian War (film)", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["key"] == "Polish-Russian War (film)" and "1:sem_filter" in report["operators"]
    missing = runner.invoke(app, ["explain", str(db), "people", "No Such Passage"])
    assert missing.exit_code == 1 and "has no output, state or decision for key 'No Such Passage'" in missing.output


def test_bench_operators_reports_each_change_beside_scratch_and_lotus(tmp_path):
    out = tmp_path / "ops.json"
    result = runner.invoke(app, ["bench", "operators", "--llm", "test", "--sizes", "24", "--changes", "6",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert "index" not in data and "standing_search" not in data  # the slow index timings only with --index-sizes
    assert sorted(data["operators"]) == ["sem_agg", "sem_join", "sem_search", "sem_topk"]
    for operator, by_size in data["operators"].items():
        r = by_size["24"]
        assert {"insert", "update", "delete", "from_scratch", "lotus"} <= set(r), operator
        assert r["from_scratch" if operator != "sem_search" else "from_scratch_embeddings"] > 0 and r["lotus"] > 0
    assert data["operators"]["sem_join"]["24"]["lotus"] == 24 * 24
    assert data["operators"]["sem_agg"]["24"]["delete"] <= data["operators"]["sem_agg"]["24"]["from_scratch"]
    assert data["operators"]["sem_search"]["24"]["insert_embeddings"] == 1.0


def test_bench_operators_labels_lotus_as_analytic_beside_our_measured_figures(tmp_path):
    out = tmp_path / "ops.json"
    result = runner.invoke(app, ["bench", "operators", "--llm", "test", "--sizes", "8", "--changes", "3",
                                 "--operators", "sem_agg", "--index-sizes", "", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps at the terminal's width
    assert "LOTUS per change: analytic (from LOTUS's published algorithms): computed, not run" in text
    assert "from scratch, insert, update, delete, max: measured" in text
    labels = json.loads(out.read_text())["labels"]
    assert labels["lotus"].startswith("analytic (from LOTUS's published algorithms)")
    assert labels["from_scratch"].startswith("measured")


def test_bench_operators_rejects_bad_sizes():
    result = runner.invoke(app, ["bench", "operators", "--llm", "test", "--sizes", "ten"])
    assert result.exit_code == 1 and "--sizes takes comma-separated integers" in result.output


MARKUP = "See [the docs](http://x) [red]alert[/red] :thumbs_up: [/]"  # rich markup, an emoji code, a stray [/]


def test_data_prints_as_typed_never_as_rich_markup_or_emoji(tmp_path):
    db = tmp_path / "markup.db"
    options, wide = ["--llm", "test", "--embedder", "test"], {"COLUMNS": "250"}  # no folding inside a cell
    script = tmp_path / "notes.sql"
    script.write_text(f"CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT, n INT);\n"
                      f"INSERT INTO notes (id, body) VALUES ('k1', '{MARKUP}');\nSELECT * FROM notes;\n")
    run = runner.invoke(app, ["run", str(db), str(script), *options], env=wide)
    assert run.exit_code == 0, run.output
    assert f"VALUES ('k1', '{MARKUP}');" in run.output  # the echoed statement
    assert f"│ k1 │ {MARKUP} │" in run.output  # the result table

    typed = (f"SELECT body AS \"{MARKUP}\" FROM notes;\n"  # a column name is data too
             "INSERT INTO notes (id, n) VALUES ('k2', ':thumbs_up:');\n"  # an error quotes the value
             "INSERT INTO notes (id, body) VALUES ('k3', 'a stray [/] closes nothing');\n"
             "SELECT body FROM notes WHERE id = 'k3';\n"
             "SELECT count(*) FROM notes;\n")
    shell = runner.invoke(app, ["sql", str(db), *options], input=typed, env=wide)
    assert shell.exit_code == 0, shell.output
    assert shell.output.count(MARKUP) == 2
    assert "column 'n' is int, got ':thumbs_up:'" in shell.output
    assert "│ a stray [/] closes nothing │" in shell.output
    assert "SELECT 1 (version 3)" in shell.output.splitlines()[-1]  # the session went on to its last statement

    database = dm.connect(str(db), llm="test", embedder="test", background=False)
    database.view("gists", database.table("notes").sem_map("Summarise {body}", out="gist"))
    database.maintain()
    database.close()
    rows = runner.invoke(app, ["rows", str(db), "gists"], env=wide)
    assert rows.exit_code == 0, rows.output
    assert f"│ {MARKUP} │" in rows.output
    explain = runner.invoke(app, ["explain", str(db), "gists", "k1"], env=wide)
    assert explain.exit_code == 0, explain.output
    assert f"'body': '{MARKUP}'" in explain.output
    usage = runner.invoke(app, ["usage", str(db)], env=wide)
    assert usage.exit_code == 0 and "│ gists " in usage.output
