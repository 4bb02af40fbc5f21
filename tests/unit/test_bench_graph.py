"""``deltamem bench graph`` (``deltamem.bench.graph_stream``) on a small slice of HotpotQA and the test backend:
the stream's figures, LightRAG's cost rules, and the check against a graph built from scratch."""

from __future__ import annotations

from collections import Counter

from typer.testing import CliRunner

from deltamem.bench.datasets import default_data_dir
from deltamem.bench.graph_corpus import edited, hotpot, two_wiki
from deltamem.bench.graph_stream import FORCE_SUMMARY, _items, lightrag_calls, run_graph_bench
from deltamem.cli import app


def test_a_delete_costs_no_extraction_an_edit_or_insert_one_and_the_graph_equals_a_rebuild():
    corpus = hotpot(default_data_dir(), passages=60, questions=6)
    result = run_graph_bench([corpus], llm="test", embedder="test", changes=9, k=3, seed=1)
    r = result["corpora"]["hotpotqa"]
    assert r["equals_recompute"] is True
    assert r["stream"]["delete"]["extraction_calls"] == [0, 0, 0]
    assert r["stream"]["insert"]["extraction_calls"] == [1, 1, 1] and r["stream"]["edit"]["extraction_calls"] == [1] * 3
    assert all(n == r["passages"] + 1 for n in r["stream"]["insert"]["scratch"][:1])  # a rebuild extracts them all
    assert r["build"]["extraction_calls"] == r["passages"] and r["build"]["answer_calls"] == 6
    assert len(r["recall"]["graph"]) == len(r["recall"]["dense"]) > 0 and r["passages"] == 60


def test_lightrag_rules_extract_with_gleaning_and_summarise_items_with_enough_fragments():
    old = {"entities": ["ada", "london"], "triples": [["ada", "lived in", "london"]]}
    support = Counter({("entity", "ada"): FORCE_SUMMARY, ("entity", "london"): 1, ("relation", "ada", "london"): 0})
    # A delete: "ada" (still in 8 passages) is rebuilt with a summary, "london" (1 left) without; per item: both.
    assert lightrag_calls("delete", old, None, support) == (1, 2)
    support = Counter({item: 1 for item in _items(old)})  # an insert of a passage whose items are all new
    assert lightrag_calls("insert", None, old, support) == (2, 2)


def test_the_corpora_keep_every_supporting_passage_and_edits_change_the_text():
    wiki = two_wiki(default_data_dir(), passages=50)
    pids = {p["pid"] for p in wiki.passages}
    assert wiki.questions and all(s <= pids for s in wiki.supporting.values())
    assert not pids & {p["pid"] for p in wiki.spare}
    import random
    assert edited("Born in 1815 in London.", random.Random(0)) != "Born in 1815 in London."


def test_the_command_prints_the_comparison(tmp_path):
    out = tmp_path / "graph.json"
    result = CliRunner().invoke(app, ["bench", "graph", "--dataset", "hotpotqa", "--passages", "40", "--questions",
                                      "4", "--changes", "3", "--llm", "test", "--embedder", "test", "--out",
                                      str(out)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "over the stream: ours" in result.output and "graph view equals a graph view built from scratch: yes" \
        in result.output
    assert out.exists()
    bad = CliRunner().invoke(app, ["bench", "graph", "--dataset", "wiki", "--llm", "test"])
    assert bad.exit_code != 0 and "--dataset 'wiki'" in bad.output
