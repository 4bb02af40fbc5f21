"""The ``deltamem`` command line: each command is a thin wrapper over one Python API call.

    deltamem demo --llm local
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table as RichTable

import deltamem as dm
from deltamem.commands import bench, bench_context, bench_engine, bench_kv, sql, streams
from deltamem.commands.common import EMBEDDER, LLM, console, fail, open_db
from deltamem.commands.bench_graph import bench_graph
from deltamem.commands.bench_workers import bench_workers
from deltamem.commands.cdc import cdc
from deltamem.commands.worker import worker
from deltamem.display import literal, print_table
from deltamem.llm.ledger import Usage
from deltamem.server.command import bench_serve, serve

app = typer.Typer(help="deltamem: keep LLM-generated results fresh as their data changes.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: deltamem and the full-recompute baseline side by side, in one run.")
app.add_typer(bench_app, name="bench")


@app.command()
def demo(
    db: str = typer.Option("demo-out/demo.db", help="SQLite file to create (an existing one is replaced)."),
    llm: str = LLM,
    embedder: str = EMBEDDER,
    passages: int = typer.Option(40, help="Passages to load before the stream of changes."),
    questions: int = typer.Option(3, help="2Wiki questions for the LLM_GENERATE part (0 skips it)."),
    data: Optional[Path] = typer.Option(None, help="The shared data folder (default: ../shared/data)."),
) -> None:
    """Run the demo: a filtered, mapped view over 2Wiki passages kept fresh through ~30 changes, then standing
    LLM_GENERATE answers to 2Wiki questions under edits, with the strategy each edit got.

    Example: deltamem demo --llm local --passages 40 --questions 3
    """
    try:
        run_db = __import__("deltamem.demo", fromlist=["run_demo"]).run_demo(
            db_path=db, llm=llm, embedder=embedder, num_passages=passages, num_questions=questions, data=data,
            console=console,
        )
        run_db.close()
    except dm.DeltamemError as exc:
        fail(exc)


@app.command()
def usage(
    db: str = typer.Argument(..., help="SQLite file, or a postgresql:// DSN."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document: the totals (as with no --json), then "
                                 "by_view, by_operator and full_recompute per view."),
) -> None:
    """Show what each view paid, beside what a full recompute at every refresh would have paid (in this engine,
    the memo answering identical calls; and, labelled, without a memo).

    Example: deltamem usage demo-out/demo.db
    """
    try:
        with open_db(db) as database:
            report = database.usage()
            if as_json:
                totals = {k: getattr(report, k) for k in ("calls", "prompt_tokens", "reused_tokens", "output_tokens",
                                                          "seconds", "memo_hits", "failures")}
                totals["full_recompute_calls"] = report.full_recompute_calls
                totals["full_recompute_no_memo_calls"] = report.full_recompute_no_memo_calls
                _print_json({**totals, **_usage_details(report)})
            else:
                print_table(console, report.rich_table())
    except dm.DeltamemError as exc:
        fail(exc)


def _usage_details(report: Usage) -> dict:
    """What ``db.usage()`` holds beyond the totals, as JSON values: by view, by operator, and the full-recompute
    counterfactual per view."""
    return {
        "by_view": {view: asdict(totals) for view, totals in report.by_view.items()},
        "by_operator": [{"view": view, "operator": operator, **asdict(totals)}
                        for (view, operator), totals in report.by_operator.items()],
        "full_recompute": {view: asdict(full) for view, full in report.full_recompute.items()},
    }


def _print_json(document: object) -> None:
    """One JSON document on stdout, indented; never wrapped or cut, on a terminal or in a pipe."""
    console.print_json(json.dumps(document, default=str))


@app.command()
def rows(
    db: str = typer.Argument(..., help="SQLite file, or a postgresql:// DSN."),
    view: str = typer.Argument(..., help="View name."),
    as_of: Optional[int] = typer.Option(None, "--as-of", help="Read the view as of this version."),
    limit: Optional[int] = typer.Option(None, "--limit", min=0, help="Print at most this many rows (in key order)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON Lines: one object per row, its columns in the "
                                 "view's declared order (and _error when the row failed), nothing else."),
) -> None:
    """Print a view's rows (as of a version, if given) without maintaining it: a table whose cells print whole when
    stdout is not a terminal, or JSON Lines with --json.

    Example: deltamem rows demo-out/demo.db people --as-of 3 --limit 10
    """
    try:
        with open_db(db) as database:
            handle = database.view(view)
            read = handle.rows(as_of=as_of)
            columns = list(dict.fromkeys([*handle.columns, *(c for row in read for c in row)]))
    except dm.DeltamemError as exc:
        fail(exc)
    shown = read.rows if limit is None else read.rows[:limit]
    if as_json:
        for row in shown:
            typer.echo(json.dumps(row, ensure_ascii=False, default=str))
        return
    more = f", first {len(shown)} of {len(read)} rows" if len(shown) < len(read) else ""
    table = RichTable(title=literal(f"{view} at version {read.version} (lag {read.lag}{more})"))
    for column in columns:
        table.add_column(literal(column), overflow="fold")
    for row in shown:
        table.add_row(*[literal(row.get(c, "")) for c in columns])
    print_table(console, table)


def _draw_heatmap(report: dict, view: str, path: Path) -> None:
    import numpy as np

    from deltamem.memory.attribution import render_heatmap

    found = [d["attribution"] for d in report.get("dependencies", {}).values() if d.get("attribution")]
    if not found:
        fail(dm.ConfigError(f"{view} key {report['key']!r} has no attention attribution: it needs an LLM_GENERATE "
                             "answer made by a backend with attention (--llm local)"))
    attribution = found[0]
    render_heatmap(np.asarray(attribution["matrix"]), attribution["output_sentences"], attribution["context"],
                   str(path), title=f"{view} · {report['key']}")
    console.print(literal(f"heat map written to {path}"))


@app.command()
def explain(
    db: str = typer.Argument(..., help="SQLite file, or a postgresql:// DSN."),
    view: str = typer.Argument(..., help="View name."),
    key: str = typer.Argument(..., help="The output's key (read as JSON when it parses, e.g. 7 or \"q1\", else text)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document: key, row, operators, dependencies "
                                 "and decisions, as view.explain(key) returns them."),
    heatmap: Optional[Path] = typer.Option(None, help="Draw the output-sentence x context-sentence attribution here (PNG)."),
) -> None:
    """Show one output: its row, what each operator stored for it (provenance, value, cost) and its decision log.

    Example: deltamem explain demo-out/demo.db answers q1
    """
    try:
        parsed_key: object = json.loads(key)
    except json.JSONDecodeError:
        parsed_key = key
    if not isinstance(parsed_key, (str, int)) or isinstance(parsed_key, bool):
        parsed_key = key
    try:
        with open_db(db) as database:
            report = database.view(view).explain(parsed_key)
    except dm.DeltamemError as exc:
        fail(exc)
    if heatmap is not None:
        _draw_heatmap(report, view, heatmap)
    if as_json:
        _print_json(report)
        return
    console.print(literal(view, style="bold") + literal(f" key {parsed_key!r}: {report['row']}"))
    for op, state in report["operators"].items():
        value = state["value"] or {}
        chunks = value.get("chunks") if isinstance(value, dict) else None
        in_prompt = f", {len(chunks)} chunks in its prompt" if chunks else ""
        console.print(literal(f"  {op}: cost {state['cost']}{in_prompt}"))
    for op, found in report["dependencies"].items():
        if found.get("reuse"):
            r = found["reuse"]
            console.print(literal(f"  {op}: reused the answer of {r['reused_from']!r} (similarity {r['similarity']:.3f}"
                                  f", threshold {r['threshold']:.3f}, probability {r['probability']:.2f})"))
        if found.get("decomposition"):
            d = found["decomposition"]
            console.print(literal(f"  {op}: decomposed by {d['pattern']!r}" if d["pattern"] else
                                  f"  {op}: no pattern matched; answered as its own base question"))
            for base in d["bases"]:
                console.print(literal(f"    read {base['question']!r} -> {base['answer']!r}"))
        if found.get("graph"):
            g = found["graph"]
            console.print(literal(f"  {op}: seeds {', '.join(g['seeds']) or 'none'}; {len(g['subgraph'])} subgraph "
                                  f"nodes (every other node at most {g['cut']:.3g}), slack {g['slack']:.2g}"))
            for passage, path in g["paths"].items():
                console.print(literal(f"    passage {passage}: " + " -> ".join(path)))
    table = RichTable(title="decisions")
    for column in ("version", "strategy", "reason", "calls", "prompt tok", "reused tok", "output tok", "seconds"):
        table.add_column(column, overflow="fold")
    for d in report["decisions"]:
        table.add_row(*(literal(v) for v in (d["version"], d["strategy"], d["reason"], d["calls"], d["prompt_tokens"],
                                              d["reused_tokens"], d["output_tokens"], f"{d['seconds']:.2f}")))
    print_table(console, table)


@app.command("serve-llm")
def serve_llm(
    llm: str = LLM,
    embedder: str = EMBEDDER,
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8001, help="Port to bind."),
) -> None:
    """Serve a backend as an OpenAI-compatible endpoint (/v1/chat/completions, /v1/embeddings).

    Example: deltamem serve-llm --llm local --port 8001
    """
    import uvicorn

    from deltamem.llm import lazy_embedder, lazy_llm
    from deltamem.llm.openai_server import make_app

    try:
        application = make_app(lazy_llm(llm).get(), lazy_embedder(embedder).get())
    except dm.DeltamemError as exc:
        fail(exc)
    uvicorn.run(application, host=host, port=port)


# The other command groups, each in its own module of deltamem.commands (and deltamem.server.command).
app.command("load")(streams.load)
app.command("watch")(streams.watch)
app.command("subscribe")(streams.subscribe)
app.command("sql")(sql.sql_shell)
app.command("run")(sql.run_sql)
app.command("serve")(serve)
app.command("worker")(worker)
app.command("cdc")(cdc)
bench_app.command("rowwise")(bench.bench_rowwise)
bench_app.command("operators")(bench.bench_operators)
bench_app.command("edit-stream")(bench.bench_edit_stream)
bench_app.command("kv-reuse")(bench_kv.bench_kv_reuse)
bench_app.command("context-stream")(bench_context.bench_context_stream)
bench_app.command("engine")(bench_engine.bench_engine)
bench_app.command("serve")(bench_serve)
bench_app.command("workers")(bench_workers)
bench_app.command("graph")(bench_graph)
