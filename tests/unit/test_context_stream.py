"""``deltamem bench context-stream`` on the test backend: every mode over one stream, with the figures it reports."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from deltamem.bench.context_stream import run_context_stream
from deltamem.bench.datasets import default_data_dir
from deltamem.cli import app

DATA = default_data_dir() / "2wikimultihopqa" / "dev_000_099.json"


def run(**options):
    settings = {"data_file": DATA, "llm": "test", "embedder": "test", "originals": 8, "edits": 6, "seed": 0,
                "retrieve": "all", "base_retrieve": 3, "max_error": 0.02, "reuse_check": 0.1,
                "modes": ["off", "static", "semantic", "compose"], **options}
    return run_context_stream(**settings)


def test_every_mode_answers_every_question_and_only_the_static_cache_serves_stale_answers_after_the_edits():
    result = run()
    modes = result["modes"]
    n = result["config"]["questions"]
    assert all(len(r["answers"]) == n and None not in r["answers"].values() for r in modes.values())
    assert modes["static"]["stale_after_edits"] > 0  # GPTCache keeps answers whose sentences were edited
    assert all(modes[m]["stale_after_edits"] == 0 for m in ("off", "semantic", "compose"))
    # the reference answers itself: a memo hit is the full answer, so off never reuses wrongly
    assert modes["off"]["wrong_reuses"] == 0 and modes["off"]["hits"] == result["config"]["kinds"]["repeat"]
    # on the test backend a different prompt gives a different answer: every static hit but an exact repeat is wrong
    static, reference = modes["static"], modes["off"]["answers"]
    cached = [k for k, how in static["served_by"].items() if how == "cache"]
    assert static["wrong_reuses"] == sum(static["answers"][k] != reference[k] for k in cached)
    assert modes["semantic"]["wrong_reuse_rate"] <= 0.05
    # composition: the composites paid no call over the documents; their bases did, and fewer than off's calls
    compose = modes["compose"]["stream_cost"]
    assert compose["prompt_tokens"] < modes["off"]["stream_cost"]["prompt_tokens"] / 2


def test_the_command_prints_both_tables_and_writes_the_json(tmp_path):
    out = tmp_path / "result.json"
    result = CliRunner().invoke(app, ["bench", "context-stream", "--originals", "4", "--edits", "2", "--llm", "test",
                                      "--modes", "off,static", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.count("bench context-stream") == 2 and "stale" in result.output
    assert set(json.loads(out.read_text())["modes"]) == {"off", "static"}


def test_a_run_without_the_reference_mode_is_refused():
    result = CliRunner().invoke(app, ["bench", "context-stream", "--originals", "2", "--llm", "test",
                                      "--modes", "static,semantic"])
    assert result.exit_code == 1 and "must include 'off'" in result.output
