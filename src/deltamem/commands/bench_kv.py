"""``deltamem bench kv-reuse``: KV reused beyond the prefix against prefix-only reuse, on the local model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table as RichTable

import deltamem as dm
from deltamem.commands.common import console, fail, task_reporter


def bench_kv_reuse(
    data: Optional[Path] = typer.Option(None, help="2Wiki/HotpotQA file (default: ../shared/data/2wikimultihopqa/dev_000_099.json)."),
    questions: int = typer.Option(30, help="Questions, one early edit each."),
    seed: int = typer.Option(0, help="Seed of the edits."),
    disk_load: bool = typer.Option(True, help="Also time loading a 1,500-token prompt's KV from the disk tier."),
    out: Optional[Path] = typer.Option(None, help="Write the result as JSON here."),
) -> None:
    """Prefill after an edit in the first third of the prompt: blended KV beside prefix-only reuse, in one run.

    Example: deltamem bench kv-reuse --questions 30
    """
    from rich.progress import Progress

    from deltamem.bench.datasets import default_data_dir, load_questions
    from deltamem.bench.kv_reuse import run_kv_reuse_bench, time_disk_load
    from deltamem.llm import lazy_llm

    data_file = data or default_data_dir() / "2wikimultihopqa" / "dev_000_099.json"
    try:
        llm = lazy_llm("local").get()
        with Progress(console=console) as progress:
            result = run_kv_reuse_bench(data_file=data_file, num_questions=questions, seed=seed, llm=llm,
                                        progress=task_reporter(progress))
        if disk_load:
            loaded = load_questions(data_file)
            result["disk_load"] = time_disk_load(llm, loaded[0], loaded[1:], None)
    except dm.DeltamemError as exc:
        fail(exc)
    s = result["summary"]
    table = RichTable(title=f"bench kv-reuse · {result['config']['llm']} · {result['config']['questions']} early edits")
    for column in ("prefill", "seconds", "vs prefix-only", "answers changed vs exact"):
        table.add_column(column, justify="left" if column == "prefill" else "right")
    table.add_row("prefix-only (exact)", f"{s['prefix_only_seconds']:.1f}", "1.00x", "0%")
    table.add_row(f"blended ({result['config']['recompute_share']:.0%} recomputed)", f"{s['blend_seconds']:.1f}",
                  f"{s['blend_over_prefix_only']:.2f}x", f"{s['blend_changed_answers']:.0%}")
    console.print(table)
    console.print(f"the edit changed the exact answer in {s['exact_changed_answers']:.0%} of the prompts")
    margins = RichTable(title="verify on blended KV: old answers kept, and kept although the exact answer changed")
    for column in ("margin", "kept", "kept but changed"):
        margins.add_column(column, justify="right")
    for margin, m in s["verify_by_margin"].items():
        margins.add_row(margin, str(m["kept"]), str(m["kept_but_exact_changed"]))
    console.print(margins)
    if "disk_load" in result:
        d = result["disk_load"]
        console.print(f"{d['tokens']}-token prompt: KV loaded from disk in {d['load_seconds']:.3f} s, computed in "
                      f"{d['compute_seconds']:.3f} s ({d['load_over_compute']:.2f}x)")
    if out:
        out.write_text(json.dumps(result, indent=2))
