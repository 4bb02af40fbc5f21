"""``deltamem bench graph``: a knowledge graph and the answers over it through passage changes, beside LightRAG-style
maintenance and a rebuild, with retrieval recall and answer accuracy against dense and full-context retrieval."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean
from typing import Optional

import typer
from rich.table import Table as RichTable

import deltamem as dm
from deltamem.commands.common import LLM, console, fail, task_reporter


def bench_graph(
    dataset: str = typer.Option("both", help="2wiki (the HippoRAG corpus), hotpotqa (its dev paragraphs) or both."),
    passages: Optional[int] = typer.Option(None, help="Cut each corpus to this many passages (the supporting ones "
                                                      "always kept); default: all."),
    questions: Optional[int] = typer.Option(None, help="Ask only the first N questions (and keep only their supporting "
                                                       "passages); default: all."),
    changes: int = typer.Option(100, help="Passage changes in the stream: a third each of inserts, edits, deletes."),
    k: int = typer.Option(5, help="Passages per prompt (graph), and recall@k."),
    seed: int = typer.Option(0, help="Seed of the stream."),
    llm: str = LLM,
    embedder: str = typer.Option("minilm", help="Embedding backend: minilm (all-MiniLM-L6-v2) or test (hashing)."),
    out: Optional[Path] = typer.Option(None, help="Write the result as JSON here."),
) -> None:
    """Build the graph, stream passage changes, and compare: extraction calls against LightRAG-style maintenance and
    a rebuild; answers refreshed against dense retrieval; recall@k and accuracy against dense and full context.

    Example: deltamem bench graph --dataset hotpotqa --passages 300 --changes 30 --llm test
    """
    from rich.progress import Progress

    from deltamem.bench.datasets import default_data_dir
    from deltamem.bench.graph_corpus import hotpot, two_wiki
    from deltamem.bench.graph_stream import run_graph_bench

    loaders = {"2wiki": two_wiki, "hotpotqa": hotpot}
    names = list(loaders) if dataset == "both" else [dataset]
    if any(name not in loaders for name in names):
        raise typer.BadParameter(f"--dataset {dataset!r}: use 2wiki, hotpotqa or both")
    if changes < 0 or k < 1:
        raise typer.BadParameter("--changes must be at least 0 and --k at least 1")
    try:
        corpora = [loaders[name](default_data_dir(), passages=passages, questions=questions, seed=seed)
                   for name in names]
        with Progress(console=console, transient=True) as progress:
            result = run_graph_bench(corpora, llm=llm, embedder=embedder, changes=changes, k=k, seed=seed,
                                     progress=task_reporter(progress))
    except dm.DeltamemError as exc:
        fail(exc)
    _print(result)
    if out is not None:
        out.write_text(json.dumps(result, indent=2))


def _print(result: dict) -> None:
    from deltamem.bench.answer_quality import paired_bootstrap_ci

    config = result["config"]
    for name, r in result["corpora"].items():
        title = (f"bench graph · {name} · {r['passages']:,} passages · {r['questions']} questions · "
                 f"{config['llm']} · embedder {config['embedder']} · k={config['k']}")
        b = r["build"]
        console.print(f"[bold]{title}[/bold]")
        console.print(f"build: {b['extraction_calls']:,} extraction calls, {b['answer_calls']} answer calls, "
                      f"{b['seconds']:.1f} s; dense reads {r['dense_sentences']} sentences per prompt")
        table = RichTable(title="mean calls per passage change: graph maintenance (ours, LightRAG-style, per item, "
                                "rebuild), then answers asked again")
        # Graph calls: ours, LightRAG-style (its rules; per item: a summary per rebuilt item) and a rebuild; then the
        # answers each retrieval asks again (full context: every one).
        for column in ("change", "n", "ours", "LightRAG", "LR/item", "rebuild", "ans graph", "ans dense",
                       "ans full"):
            table.add_column(column, justify="left" if column == "change" else "right")
        totals = {"extraction_calls": 0, "retries": 0, "lightrag": 0, "lightrag_per_item": 0, "scratch": 0,
                  "graph_answers": 0, "dense_answers": 0}
        for kind, figures in r["stream"].items():
            if not figures:
                continue
            for name_, values in figures.items():
                if name_ in totals:
                    totals[name_] += sum(values)
            n = len(figures["extraction_calls"])
            table.add_row(kind, str(n), *(f"{mean(figures[f]):.2f}" for f in
                                          ("extraction_calls", "lightrag", "lightrag_per_item", "scratch",
                                           "graph_answers", "dense_answers")), str(r["questions"]))
        console.print(table)
        graph_calls = totals["extraction_calls"] + totals["retries"]
        ours = graph_calls + totals["graph_answers"]
        console.print(
            f"over the stream: ours {totals['extraction_calls']} extraction + {totals['retries']} retried (malformed "
            f"before) + {totals['graph_answers']} answer calls (dense: {totals['dense_answers']}, full context: "
            f"{r['questions'] * sum(len(f.get('scratch', ())) for f in r['stream'].values())})")
        for label, theirs in (("LightRAG-style", totals["lightrag"]),
                              ("LightRAG per item", totals["lightrag_per_item"]), ("rebuild", totals["scratch"])):
            console.print(f"  {label}: {theirs:,} graph calls = {_ratio(theirs, graph_calls)} our graph calls, "
                          f"{_ratio(theirs, ours)} ours with the answers")
        recall, accuracy = r["recall"], r["accuracy"]
        if recall["graph"]:
            ci = paired_bootstrap_ci(recall["graph"], recall["dense"])
            console.print(f"recall@{config['k']} of supporting passages over {len(recall['graph'])} questions: graph "
                          f"{mean(recall['graph']):.3f}, dense {mean(recall['dense']):.3f} (graph - dense 95% CI "
                          f"[{ci[0]:+.3f}, {ci[1]:+.3f}])")
        console.print("accuracy (gold answer in the answer): " + ", ".join(
            f"{view} {mean(scores):.1%}" for view, scores in accuracy.items() if scores) + f" over {r['questions']}")
        console.print(f"graph view equals a graph view built from scratch: {'yes' if r['equals_recompute'] else 'NO'}")
        console.print("the cost model on the graph view after the stream (EXPLAIN VIEW):")
        for part, detail in r["estimate"]:
            console.print(f"  {part}: {detail}", markup=False)


def _ratio(theirs: float, ours: float) -> str:
    return f"{theirs / ours:.1f}x" if ours else "— (ours 0)"
