"""The QA data loaders: the standard 2Wiki/HotpotQA layout, and clear errors for anything else."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from deltamem.bench.datasets import load_corpus, load_questions
from deltamem.cli import app
from deltamem.errors import ConfigError

RECORD = {"_id": "q1", "question": "Who?", "answer": "Ada", "context": [["Ada", ["Ada was born in 1815."]]],
          "supporting_facts": [["Ada", 0]]}


def test_a_json_list_and_json_lines_load_the_same(tmp_path):
    listed, lines = tmp_path / "a.json", tmp_path / "a.jsonl"
    listed.write_text(json.dumps([RECORD]))
    lines.write_text(json.dumps(RECORD) + "\n")
    assert load_questions(listed) == load_questions(lines)
    assert load_questions(listed)[0].supporting_facts == (("Ada", 0),)


@pytest.mark.parametrize("content, message", [
    (json.dumps([{**RECORD, "context": "not pairs"}]), "record 0 is not in the 2Wiki/HotpotQA layout"),
    (json.dumps([{"question": "no id"}]), "record 0 is not in the 2Wiki/HotpotQA layout"),
    ("[{broken", "neither a JSON list nor JSON Lines"),
])
def test_an_edit_file_in_the_wrong_layout_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_questions(path)
    result = CliRunner().invoke(app, ["bench", "edit-stream", "--llm", "test", "--data", str(path)])
    assert result.exit_code == 1 and message in result.output


def test_a_corpus_must_be_a_list_of_titled_passages(tmp_path):
    path = tmp_path / "corpus.json"
    path.write_text(json.dumps([{"title": "A", "text": "x"}, {"title": "A", "text": "y"}]))
    assert [r["id"] for r in load_corpus(path)] == ["A", "A (2)"]
    path.write_text(json.dumps({"title": "A"}))
    with pytest.raises(ConfigError, match="not a passage corpus"):
        load_corpus(path)
