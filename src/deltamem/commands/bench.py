"""``deltamem bench rowwise | operators | edit-stream``: deltamem and the full-recompute baseline side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table as RichTable

import deltamem as dm
from deltamem.commands.common import LLM, comma_ints, console, fail, task_reporter


def bench_rowwise(
    llm: str = LLM,
    passages: int = typer.Option(200, help="Passages in the table before the stream."),
    changes: int = typer.Option(100, help="Changes in the seeded stream."),
    seed: int = typer.Option(0, help="Seed of the change stream."),
    data: Optional[Path] = typer.Option(None, help="A file of {title, text} passages or 2Wiki records."),
    out: Optional[Path] = typer.Option(None, help="Write the result as JSON here."),
) -> None:
    """A filter-then-map view kept fresh by deltamem against a full recompute after every change (the same engine,
    its memo answering identical calls), in one run; beside them, the ledger's count without a memo.

    Example: deltamem bench rowwise --llm test --passages 200 --changes 100
    """
    from rich.progress import Progress

    from deltamem.bench.datasets import default_data_dir
    from deltamem.bench.rowwise import run_rowwise_bench

    data_file = data or default_data_dir() / "2wikimultihopqa" / "dev_000_099.json"
    try:
        with Progress(console=console) as progress:
            report = task_reporter(progress)
            result = run_rowwise_bench(data_file=data_file, llm=llm, num_passages=passages, num_changes=changes,
                                       seed=seed, progress=report)
    except dm.DeltamemError as exc:
        fail(exc)
    table = RichTable(title=f"bench rowwise · {result.llm} · {result.passages} passages · {result.changes} changes")
    for column in ("side", "calls", "tokens (prompt + output)", "wall s"):
        table.add_column(column, justify="left" if column == "side" else "right")
    ratios = result.ratios()

    def add_side(side: str, numbers) -> None:
        table.add_row(side, str(numbers.calls), str(numbers.prompt_tokens + numbers.output_tokens),
                      "" if numbers.seconds is None else f"{numbers.seconds:.2f}")

    add_side("deltamem", result.incremental)
    add_side("full recompute (same engine, memo)", result.full_recompute)
    table.add_row("full recompute / deltamem", f"{ratios['calls']:.1f}x", f"{ratios['tokens']:.1f}x",
                  f"{ratios['seconds']:.1f}x", style="bold")
    add_side("full recompute without a memo (ledger count, not run)", result.full_recompute_no_memo)
    table.add_row("without a memo / deltamem", f"{ratios['calls_no_memo']:.1f}x", f"{ratios['tokens_no_memo']:.1f}x",
                  "")
    console.print(table)
    console.print(f"final views agree row for row: {result.views_agree}; usage().full_recompute of deltamem's side "
                  f"matches the calls the full recompute paid: {result.ledger_agrees}")
    if out:
        out.write_text(json.dumps(result.to_json(), indent=2))


def bench_operators(
    sizes: str = typer.Option("64,256,1024", help="Comma-separated numbers of rows."),
    operators: str = typer.Option("sem_agg,sem_topk,sem_join,sem_search", help="Comma-separated operators."),
    changes: int = typer.Option(30, help="Changes measured per operator and size (inserts, updates, deletes in turn)."),
    index_sizes: str = typer.Option("", help="Also time the HNSW index at these vector counts, e.g. 10000,100000, "
                                             "and the standing searches (a minute or more); by default, not."),
    seed: int = typer.Option(0, help="Seed of the changes."),
    data: Optional[Path] = typer.Option(None, help="Corpus (default: ../shared/data/2wikimultihopqa/hipporag_corpus_6119.json)."),
    llm: str = LLM,
    out: Optional[Path] = typer.Option(None, help="Write the result as JSON here."),
) -> None:
    """LLM calls of one insert, update and delete per incremental operator, beside a build from scratch and LOTUS's
    algorithms, at each size; with --index-sizes, then the vector index's insert rate, query latency and recall@10.

    Example: deltamem bench operators --sizes 64,256,1024 --llm test --index-sizes 10000
    """
    from rich.progress import Progress

    from deltamem.bench.datasets import default_data_dir
    from deltamem.bench.index import run_index_bench, run_standing_search_bench
    from deltamem.bench.operators import run_operators_bench

    data_file = data or default_data_dir() / "2wikimultihopqa" / "hipporag_corpus_6119.json"
    try:
        with Progress(console=console) as progress:
            result = run_operators_bench(
                data_file=data_file, sizes=comma_ints(sizes, "sizes"), llm=llm, num_changes=changes, seed=seed,
                operators=[o.strip() for o in operators.split(",") if o.strip()], progress=task_reporter(progress))
        if index_sizes.strip():
            result["index"] = run_index_bench(sizes=tuple(comma_ints(index_sizes, "index-sizes")))
            result["standing_search"] = run_standing_search_bench()
    except dm.DeltamemError as exc:
        fail(exc)
    from deltamem.bench.operators import ANALYTIC, MEASURED

    table = RichTable(title=f"bench operators · {result['config']['llm']} · mean LLM calls per change",
                      caption=f"from scratch, insert, update, delete, max: {MEASURED}. LOTUS per change: {ANALYTIC}.")
    for column in ("operator", "N", "from scratch (measured)", "insert", "update", "delete", "max",
                   "LOTUS per change (analytic)"):
        table.add_column(column, justify="left" if column == "operator" else "right")
    for operator, by_size in result["operators"].items():
        for size, r in by_size.items():
            if operator == "sem_search":  # no LLM call: its cost is embeddings
                table.add_row(f"{operator} (embeddings)", size, str(r["from_scratch_embeddings"]),
                              f"{r['insert_embeddings']:.1f}", f"{r['update_embeddings']:.1f}",
                              f"{r['delete_embeddings']:.1f}", "", str(r["lotus"]))
                continue
            worst = max(r["insert_max"], r["update_max"], r["delete_max"])
            table.add_row(operator, size, str(r["from_scratch"]), f"{r['insert']:.1f}", f"{r['update']:.1f}",
                          f"{r['delete']:.1f}", str(worst), str(r["lotus"]))
    console.print(table)
    for r in result.get("index", {}).get("sizes", []):
        console.print(f"HNSW index, {r['n']:,} {result['index']['data']} vectors: {r['inserts_per_second']:,} "
                      f"inserts/s, query {r['query_ms_mean']:.2f} ms mean / {r['query_ms_p99']:.2f} ms p99 (exact "
                      f"{r['exact_query_ms_mean']:.2f} ms), recall@10 {r['recall_at_10']:.4f}")
    if "standing_search" in result:
        r = result["standing_search"]
        console.print(f"{r['num_queries']:,} standing searches in {r['num_clusters']} clusters, {r['num_new_rows']:,} "
                      f"new rows: {r['similarities']:,} similarities instead of {r['similarities_every_query']:,} "
                      f"({r['saved']:.1%} saved)")
    if out:
        out.write_text(json.dumps(result, indent=2))


def bench_edit_stream(
    data: Optional[Path] = typer.Option(None, help="2Wiki/HotpotQA file (default: ../shared/data/2wikimultihopqa/dev_000_099.json)."),
    questions: int = typer.Option(30, help="Questions to answer."),
    edits_per_question: int = typer.Option(4, help="Edits per question (2 irrelevant, 1 answer substitution, 1 deletion, ...)."),
    seed: int = typer.Option(0, help="Seed of the edits."),
    strategies: str = typer.Option("full,full+prefix,auto,skip,patch,regenerate,append", help="Comma-separated."),
    shadow: float = typer.Option(0.1, help="Share of auto's approximate decisions checked against full recompute."),
    llm: str = LLM,
    out: Optional[Path] = typer.Option(None, help="Write the result as JSON here."),
) -> None:
    """Standing answers under seeded edits of known relevance: every strategy beside full recompute, in one run.

    Example: deltamem bench edit-stream --questions 30 --edits-per-question 4 --llm test
    """
    from rich.progress import Progress

    from deltamem.bench.datasets import default_data_dir
    from deltamem.bench.edit_stream import run_edit_stream

    data_file = data or default_data_dir() / "2wikimultihopqa" / "dev_000_099.json"
    try:
        with Progress(console=console) as progress:
            report = task_reporter(progress)
            result = run_edit_stream(data_file=data_file, llm=llm, num_questions=questions,
                                     edits_per_question=edits_per_question, seed=seed,
                                     strategies=[s.strip() for s in strategies.split(",") if s.strip()],
                                     shadow=shadow, progress=report)
    except dm.DeltamemError as exc:
        fail(exc)
    config, by_strategy = result["config"], result["strategies"]
    title = f"bench edit-stream · {config['llm']} · {config['questions']} questions · {config['edits']} edits"
    console.print(_edit_stream_costs(title, by_strategy))
    console.print(_edit_stream_answers(by_strategy, config["full_changed_on_irrelevant"]))
    console.print("wall s on the relevant / irrelevant edits: " + ", ".join(
        f"{name} {r['wall_seconds_relevant']:.1f} / {r['wall_seconds_irrelevant']:.1f}"
        for name, r in by_strategy.items()))
    if config["attribution_overhead"] is not None:
        console.print(f"initial build: {config['initial_build_seconds']:.1f} model s with attribution, "
                      f"{config['initial_build_seconds_without_attribution']:.1f} s without "
                      f"({config['attribution_overhead']:+.1%})")
    if out:
        out.write_text(json.dumps(result, indent=2))


def _edit_stream_costs(title: str, by_strategy: dict) -> RichTable:
    """What each strategy paid for the edits, and its wall-clock speed-up over full (and full+prefix, if run)."""
    baselines = [b for b in ("full", "full+prefix") if b in by_strategy]
    table = RichTable(title=f"{title} · cost")
    for column in ("strategy", "calls", "prompt tok", "reused tok", "output tok", "model s", "wall s",
                   *(f"vs {b}" for b in baselines)):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for name, r in by_strategy.items():
        speedups = (f"{by_strategy[b]['wall_seconds'] / max(r['wall_seconds'], 1e-9):.1f}x" for b in baselines)
        table.add_row(name, str(r["calls"]), str(r["prompt_tokens"]), str(r["reused_tokens"]), str(r["output_tokens"]),
                      f"{r['seconds']:.1f}", f"{r['wall_seconds']:.1f}", *speedups)
    return table


def _edit_stream_answers(by_strategy: dict, noise_floor: float | None) -> RichTable:
    """Each strategy's answers after the edits: agreement with full, accuracy against the gold and its difference from
    full's, and how often its skips and verifications fell on irrelevant edits."""
    floor = "" if noise_floor is None else f"; full itself changed after {noise_floor:.0%} of the irrelevant edits"
    table = RichTable(title="answers after each edit", caption=(
        f"agree: same answer as full{floor}. contains / F1: against the gold answer (the substituted one from its "
        "substitution on); Δ: paired bootstrap 95% interval of strategy − full. skip P / verify P: share of the "
        "edits skipped / verified that were irrelevant (n: how many); kept = full: share of the answers an edit "
        "left unchanged (skipped, or verified and kept) that equal full's."))
    for column in ("strategy", "agree", "contains", "Δ contains", "F1", "Δ F1", "take-up", "skip P (n)", "skip R",
                   "verify P (n)", "kept = full (n)"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for name, r in by_strategy.items():
        table.add_row(name, _pct(r["agreement"]), _pct(r["contains"]), _interval(r["contains_vs_full_ci"], "{:+.0%}"),
                      f"{r['f1']:.2f}", _interval(r["f1_vs_full_ci"], "{:+.2f}"), _pct(r["takeup"]),
                      _counted(r["skip_precision"], r["skip_count"]), _pct(r["skip_recall"]),
                      _counted(r["verify_precision"], r["verify_count"]),
                      _counted(r["kept_agreement"], r["kept_count"]))
    return table


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


def _counted(share: float | None, count: int) -> str:
    return "" if share is None else f"{share:.0%} ({count})"


def _interval(bounds: list[float] | None, form: str) -> str:
    return "" if bounds is None else f"[{form.format(bounds[0])}, {form.format(bounds[1])}]"
