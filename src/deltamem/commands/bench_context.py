"""``deltamem bench context-stream``: answer reuse across changing questions, four modes side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table as RichTable

import deltamem as dm
from deltamem.commands.common import LLM, console, fail, task_reporter


def bench_context_stream(
    data: Optional[Path] = typer.Option(None, help="2Wiki/HotpotQA file (default: ../shared/data/2wikimultihopqa/dev_000_099.json)."),
    originals: int = typer.Option(20, help="Original questions the stream is derived from."),
    edits: int = typer.Option(10, help="Document edits after the stream (about half relevant)."),
    seed: int = typer.Option(0, help="Seed of the stream."),
    retrieve: str = typer.Option("all", help="Sentences per prompt of off, static and semantic ('all': the question's ten paragraphs)."),
    base_retrieve: str = typer.Option("3", help="Sentences per prompt of compose's base questions."),
    max_error: float = typer.Option(0.02, help="The bound on wrong reuses of the semantic mode."),
    reuse_check: float = typer.Option(0.1, help="Share of the semantic mode's reuses checked with a real call."),
    modes: str = typer.Option("off,static,semantic,compose", help="Comma-separated; must include off."),
    llm: str = LLM,
    embedder: str = typer.Option("test", help="Embedding backend: test (hashing) or local (all-MiniLM-L6-v2)."),
    out: Optional[Path] = typer.Option(None, help="Write the result as JSON here."),
) -> None:
    """Changing questions over fixed documents, then edits: memo only, a static 0.8 threshold, bounded reuse and
    base-question composition, in one run.

    Example: deltamem bench context-stream --originals 20 --llm test
    """
    from rich.progress import Progress

    from deltamem.bench.context_stream import accuracy_interval, run_context_stream
    from deltamem.bench.datasets import default_data_dir

    data_file = data or default_data_dir() / "2wikimultihopqa" / "dev_000_099.json"
    k, base_k = _sentences(retrieve, "--retrieve"), _sentences(base_retrieve, "--base-retrieve")
    try:
        with Progress(console=console, transient=True) as progress:
            result = run_context_stream(data_file=data_file, llm=llm, embedder=embedder, originals=originals,
                                        edits=edits, seed=seed, retrieve=k, base_retrieve=base_k,
                                        max_error=max_error,
                                        reuse_check=reuse_check,
                                        modes=[m.strip() for m in modes.split(",") if m.strip()],
                                        progress=task_reporter(progress))
    except dm.DeltamemError as exc:
        fail(exc)
    config, by_mode = result["config"], result["modes"]
    title = (f"bench context-stream · {config['llm']} · embedder {config['embedder']} · {config['questions']} "
             f"questions · {config['edits']} edits")
    off = by_mode["off"]
    stream = RichTable(title=title + " · the stream")
    for column in ("mode", "calls", "prompt tok", "model s", "hit rate", "wrong reuses", "accuracy",
                   "Δ vs off, 95% CI"):
        stream.add_column(column, justify="left" if column == "mode" else "right")
    edits = RichTable(title=title + " · after the edits")
    for column in ("mode", "calls", "prompt tok", "model s", "stale answers served", "accuracy"):
        edits.add_column(column, justify="left" if column == "mode" else "right")
    for mode, r in by_mode.items():
        s, e = r["stream_cost"], r["edit_cost"]
        ci = accuracy_interval(r, off)
        stream.add_row(mode, str(s["calls"]), f"{s['prompt_tokens']:,}", f"{s['model_seconds']:.1f}",
                       f"{r['hit_rate']:.1%}", f"{r['wrong_reuses']} ({r['wrong_reuse_rate']:.1%})",
                       f"{r['accuracy']:.1%}", "—" if ci is None else f"[{ci[0]:+.1f}, {ci[1]:+.1f}] pt")
        edits.add_row(mode, str(e["calls"]), f"{e['prompt_tokens']:,}", f"{e['model_seconds']:.1f}",
                      str(r["stale_after_edits"]), f"{r['accuracy_after_edits']:.1%}")
    console.print(stream)
    console.print(edits)
    console.print("stream: " + ", ".join(f"{kind} {n}" for kind, n in config["kinds"].items()))
    console.print("off's full answer agrees with its origin's (the most a reuse could get right): " + ", ".join(
        f"{kind} {agree}/{total}" for kind, (agree, total) in config["full_answer_agrees_with_origin"].items()))
    for mode in ("semantic", "compose"):
        if mode in by_mode:
            r = by_mode[mode]
            fewer = off["stream_cost"]["prompt_tokens"] / max(1, r["stream_cost"]["prompt_tokens"])
            hits = f"hit rate {r['hit_rate'] / off['hit_rate']:.1f}x off's" if off["hit_rate"] else "off had no hits"
            console.print(f"{mode}: {hits} · prompt tokens {fewer:.2f}x fewer than off")
    if out:
        out.write_text(json.dumps(result, indent=2))


def _sentences(value: str, option: str) -> int | str:
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        fail(dm.ConfigError(f"{option} {value!r} is neither 'all' nor a number of sentences"))
