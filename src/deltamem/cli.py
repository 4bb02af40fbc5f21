"""The ``deltamem`` command line: each command is a thin wrapper over one Python API call.

    deltamem demo --llm local
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table as RichTable

import deltamem as dm
from deltamem.server.command import bench_serve, serve

if TYPE_CHECKING:
    from rich.progress import Progress

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download weights at run time
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF loader draws a raw tqdm bar; ours are rich's

app = typer.Typer(help="deltamem: keep LLM-generated results fresh as their data changes.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: deltamem and the full-recompute baseline side by side, in one run.")
app.add_typer(bench_app, name="bench")
console = Console()

LLM = typer.Option("local", "--llm", help="Chat backend: local (SmolLM2-135M), openai, or test.")
EMBEDDER = typer.Option("minilm", "--embedder", help="Embedding backend: minilm, openai, or test.")


def _fail(exc: dm.DeltamemError) -> NoReturn:
    typer.echo(f"Error: {exc}", err=True)  # one unwrapped line on stderr, exit status 1
    raise typer.Exit(1)


def _task_reporter(progress: "Progress") -> Callable[[str, int, int], None]:
    """A ``(name, done, total)`` callback that draws one bar per name."""
    tasks: dict[str, int] = {}

    def report(name: str, done: int, total: int) -> None:
        if name not in tasks:
            tasks[name] = progress.add_task(name, total=total)
        progress.update(tasks[name], completed=done)

    return report


def _open(db: str, llm: str = "test", embedder: str = "test") -> dm.Database:
    if not Path(db).exists():
        raise dm.ConfigError(f"Database file {db!r} does not exist")
    return dm.connect(db, llm=llm, embedder=embedder)


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
        _fail(exc)


@app.command()
def usage(db: str = typer.Argument(..., help="SQLite file."), as_json: bool = typer.Option(False, "--json")) -> None:
    """Show what each view paid, beside what a full recompute at every refresh would have paid.

    Example: deltamem usage demo-out/demo.db
    """
    try:
        with _open(db) as database:
            report = database.usage()
            if as_json:
                totals = {k: getattr(report, k) for k in ("calls", "prompt_tokens", "reused_tokens", "output_tokens",
                                                          "seconds", "memo_hits", "failures")}
                totals["full_recompute_calls"] = report.full_recompute_calls
                console.print_json(json.dumps(totals))
            else:
                console.print(report.rich_table())
    except dm.DeltamemError as exc:
        _fail(exc)


@app.command()
def rows(
    db: str = typer.Argument(..., help="SQLite file."),
    view: str = typer.Argument(..., help="View name."),
    as_of: Optional[int] = typer.Option(None, "--as-of", help="Read the view as of this version."),
) -> None:
    """Print a view's rows (as of a version, if given) without maintaining it.

    Example: deltamem rows demo-out/demo.db people --as-of 3
    """
    try:
        with _open(db) as database:
            read = database.view(view).rows(as_of=as_of)
            table = RichTable(title=f"{view} at version {read.version} (lag {read.lag})")
            columns = list(dict.fromkeys(c for row in read for c in row))
            for column in columns:
                table.add_column(column, overflow="fold")
            for row in read:
                table.add_row(*[str(row.get(c, "")) for c in columns])
            console.print(table)
    except dm.DeltamemError as exc:
        _fail(exc)


def _draw_heatmap(report: dict, view: str, path: Path) -> None:
    import numpy as np

    from deltamem.memory.attribution import render_heatmap

    found = [d["attribution"] for d in report.get("dependencies", {}).values() if d.get("attribution")]
    if not found:
        _fail(dm.ConfigError(f"{view} key {report['key']!r} has no attention attribution: it needs an LLM_GENERATE "
                             "answer made by a backend with attention (--llm local)"))
    attribution = found[0]
    render_heatmap(np.asarray(attribution["matrix"]), attribution["output_sentences"], attribution["context"],
                   str(path), title=f"{view} · {report['key']}")
    console.print(f"heat map written to {path}")


@app.command()
def explain(
    db: str = typer.Argument(..., help="SQLite file."),
    view: str = typer.Argument(..., help="View name."),
    key: str = typer.Argument(..., help="The output's key (read as JSON when it parses, e.g. 7 or \"q1\", else text)."),
    as_json: bool = typer.Option(False, "--json", help="Print everything as JSON."),
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
        with _open(db) as database:
            report = database.view(view).explain(parsed_key)
    except dm.DeltamemError as exc:
        _fail(exc)
    if heatmap is not None:
        _draw_heatmap(report, view, heatmap)
    if as_json:
        console.print_json(json.dumps(report, default=str))
        return
    console.print(f"[bold]{view}[/] key {parsed_key!r}: {report['row']}")
    for op, state in report["operators"].items():
        value = state["value"] or {}
        chunks = value.get("chunks") if isinstance(value, dict) else None
        console.print(f"  {op}: cost {state['cost']}" + (f", {len(chunks)} chunks in its prompt" if chunks else ""))
    table = RichTable(title="decisions")
    for column in ("version", "strategy", "reason", "calls", "prompt tok", "reused tok", "output tok", "seconds"):
        table.add_column(column, overflow="fold")
    for d in report["decisions"]:
        table.add_row(str(d["version"]), d["strategy"], d["reason"], str(d["calls"]), str(d["prompt_tokens"]),
                      str(d["reused_tokens"]), str(d["output_tokens"]), f"{d['seconds']:.2f}")
    console.print(table)


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
        _fail(exc)
    uvicorn.run(application, host=host, port=port)


app.command("serve")(serve)  # the HTTP API and the web page: deltamem.server.command
bench_app.command("serve")(bench_serve)


@bench_app.command("rowwise")
def bench_rowwise(
    llm: str = LLM,
    passages: int = typer.Option(200, help="Passages in the table before the stream."),
    changes: int = typer.Option(100, help="Changes in the seeded stream."),
    seed: int = typer.Option(0, help="Seed of the change stream."),
    data: Optional[Path] = typer.Option(None, help="A file of {title, text} passages or 2Wiki records."),
    out: Optional[Path] = typer.Option(None, help="Write the result as JSON here."),
) -> None:
    """A filter-then-map view kept fresh by deltamem against a full recompute after every change, in one run.

    Example: deltamem bench rowwise --llm test --passages 200 --changes 100
    """
    from rich.progress import Progress

    from deltamem.bench.datasets import default_data_dir
    from deltamem.bench.rowwise import run_rowwise_bench

    data_file = data or default_data_dir() / "2wikimultihopqa" / "dev_000_099.json"
    try:
        with Progress(console=console) as progress:
            report = _task_reporter(progress)
            result = run_rowwise_bench(data_file=data_file, llm=llm, num_passages=passages, num_changes=changes,
                                       seed=seed, progress=report)
    except dm.DeltamemError as exc:
        _fail(exc)
    table = RichTable(title=f"bench rowwise · {result.llm} · {result.passages} passages · {result.changes} changes")
    for column in ("side", "calls", "tokens (prompt + output)", "wall s"):
        table.add_column(column, justify="left" if column == "side" else "right")
    for side, numbers in (("deltamem", result.incremental), ("full recompute", result.full_recompute)):
        table.add_row(side, str(numbers.calls), str(numbers.prompt_tokens + numbers.output_tokens),
                      f"{numbers.seconds:.2f}")
    ratios = result.ratios()
    table.add_row("full recompute / deltamem", f"{ratios['calls']:.1f}x", f"{ratios['tokens']:.1f}x",
                  f"{ratios['seconds']:.1f}x", style="bold")
    console.print(table)
    console.print(f"final views agree row for row: {result.views_agree}")
    if out:
        out.write_text(json.dumps(result.to_json(), indent=2))


@bench_app.command("operators")
def bench_operators(
    sizes: str = typer.Option("64,256,1024", help="Comma-separated numbers of rows."),
    operators: str = typer.Option("sem_agg,sem_topk,sem_join,sem_search", help="Comma-separated operators."),
    changes: int = typer.Option(30, help="Changes measured per operator and size (inserts, updates, deletes in turn)."),
    index_sizes: str = typer.Option("10000,100000", help="Vector counts for the HNSW index timings ('' skips them)."),
    seed: int = typer.Option(0, help="Seed of the changes."),
    data: Optional[Path] = typer.Option(None, help="Corpus (default: ../shared/data/2wikimultihopqa/hipporag_corpus_6119.json)."),
    llm: str = LLM,
    out: Optional[Path] = typer.Option(None, help="Write the result as JSON here."),
) -> None:
    """LLM calls of one insert, update and delete per incremental operator, beside a build from scratch and LOTUS's
    algorithms, at each size; then the vector index's insert rate, query latency and recall@10.

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
                data_file=data_file, sizes=_ints(sizes, "sizes"), llm=llm, num_changes=changes, seed=seed,
                operators=[o.strip() for o in operators.split(",") if o.strip()], progress=_task_reporter(progress))
        if index_sizes.strip():
            result["index"] = run_index_bench(sizes=tuple(_ints(index_sizes, "index-sizes")))
            result["standing_search"] = run_standing_search_bench()
    except dm.DeltamemError as exc:
        _fail(exc)
    table = RichTable(title=f"bench operators · {result['config']['llm']} · mean LLM calls per change")
    for column in ("operator", "N", "from scratch", "insert", "update", "delete", "max", "LOTUS per change"):
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


def _ints(text: str, name: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        _fail(dm.ConfigError(f"--{name} takes comma-separated integers, got {text!r}"))


@bench_app.command("edit-stream")
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
            report = _task_reporter(progress)
            result = run_edit_stream(data_file=data_file, llm=llm, num_questions=questions,
                                     edits_per_question=edits_per_question, seed=seed,
                                     strategies=[s.strip() for s in strategies.split(",") if s.strip()],
                                     shadow=shadow, progress=report)
    except dm.DeltamemError as exc:
        _fail(exc)
    config = result["config"]
    table = RichTable(title=f"bench edit-stream · {config['llm']} · {config['questions']} questions · "
                            f"{config['edits']} edits")
    columns = ("strategy", "calls", "prompt tok", "reused tok", "output tok", "model s", "wall s", "vs full",
               "agreement", "take-up", "skip P", "skip R")
    for column in columns:
        table.add_column(column, justify="left" if column == "strategy" else "right")
    full_wall = result["strategies"]["full"]["wall_seconds"]
    for name, r in result["strategies"].items():
        def pct(value):
            return "" if value is None else f"{value:.0%}"
        table.add_row(name, str(r["calls"]), str(r["prompt_tokens"]), str(r["reused_tokens"]), str(r["output_tokens"]),
                      f"{r['seconds']:.1f}", f"{r['wall_seconds']:.1f}", f"{full_wall / max(r['wall_seconds'], 1e-9):.1f}x",
                      pct(r["agreement"]), pct(r["takeup"]), pct(r.get("skip_precision")), pct(r.get("skip_recall")))
    console.print(table)
    console.print("wall s on the relevant / irrelevant edits: " + ", ".join(
        f"{name} {r['wall_seconds_relevant']:.1f} / {r['wall_seconds_irrelevant']:.1f}"
        for name, r in result["strategies"].items()))
    if config["full_changed_on_irrelevant"] is not None:
        console.print(f"full changed its answer after {config['full_changed_on_irrelevant']:.0%} of the irrelevant "
                      "edits: a strategy that skips them disagrees with full that often")
    if config["attribution_overhead"] is not None:
        console.print(f"initial build: {config['initial_build_seconds']:.1f} model s with attribution, "
                      f"{config['initial_build_seconds_without_attribution']:.1f} s without "
                      f"({config['attribution_overhead']:+.1%})")
    if out:
        out.write_text(json.dumps(result, indent=2))


# --- ingest and streaming: load, watch, subscribe ------------------------------------------------------------------
def _stop_on_sigterm() -> Callable[[], None]:
    """Make SIGTERM stop a long-running command as Ctrl-C does (cleanly), e.g. under ``timeout`` or a supervisor;
    return the function that puts the previous handler back (the command may run inside a test process)."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (embedded use): Ctrl-C alone stops it
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, previous)


@app.command()
def load(
    db: str = typer.Argument(..., help="SQLite file (created when --key creates the table)."),
    table: str = typer.Argument(..., help="Table to write."),
    file: Path = typer.Argument(..., help="A JSON Lines, JSON array, CSV or Debezium change-event file."),
    format: Optional[str] = typer.Option(
        None, "--format", help="jsonl, json (one array of row objects), csv or debezium (default: from the "
                               "extension; a .json file holding an array, and a JSON Lines file of change events, "
                               "are recognised from their content)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Load only the file's first N records."),
    key: Optional[str] = typer.Option(
        None, "--key", help="Create the table with this key column if it does not exist (columns from the file)."),
    maintain: bool = typer.Option(
        True, "--maintain/--no-maintain", help="Bring the views up to date before exiting (runs the model), or "
                                               "leave that to the process that maintains them."),
    llm: str = LLM,
    embedder: str = EMBEDDER,
) -> None:
    """Load a file into a table as one version: every record or none. A bad record (missing key, unknown column,
    wrong type, bad Debezium op) is an error naming its line, and nothing of the file is applied. Within a file the
    last record of a key wins; the count of those it replaced is printed.

    Example: deltamem load app.db docs docs.jsonl --key id --llm test
    """
    from rich.progress import Progress

    from deltamem.ingest import load_file

    if not Path(db).exists() and key is None:
        _fail(dm.ConfigError(f"Database file {db!r} does not exist; pass --key to create it with the table"))
    try:
        with Progress(console=console, transient=True) as progress:
            report = _task_reporter(progress)
            with dm.connect(db, llm=llm, embedder=embedder, background=False, progress=report) as database:
                result = load_file(database, table, file, format=format, key=key, limit=limit, progress=report)
                if maintain and result.version is not None:
                    database.maintain()
    except dm.DeltamemError as exc:
        _fail(exc)
    if result.version is None:
        console.print(f"{file}: no records; nothing committed")
        return
    created = f" (created table {table!r})" if result.created else ""
    console.print(f"{table}{created}: {result.summary()}; committed version {result.version}")


@app.command()
def watch(
    db: str = typer.Argument(..., help="SQLite file (created if missing)."),
    table: str = typer.Argument(..., help="Table mirroring the folder (key 'path'; columns path, text, mtime)."),
    folder: Path = typer.Argument(..., help="The folder to watch."),
    glob: str = typer.Option("**/*", "--glob", help="Which files, relative to the folder, e.g. '**/*.md'."),
    interval: float = typer.Option(2.0, "--interval", help="Seconds between syncs."),
    once: bool = typer.Option(False, "--once", help="Sync once and exit (for scripts and tests)."),
    hidden: bool = typer.Option(False, "--hidden", help="Include hidden files and folders (names starting with '.')."),
    maintain: bool = typer.Option(
        True, "--maintain/--no-maintain", help="Keep the views up to date in this process (runs the model), or "
                                               "leave that to the process that maintains them."),
    llm: str = LLM,
    embedder: str = EMBEDDER,
) -> None:
    """Mirror a folder of text files into a table: each sync commits the created, edited and deleted files as one
    version (unchanged files cost nothing), so a docs folder or a code base can be a DATA_SOURCE. Ctrl-C stops.

    Example: deltamem watch app.db docs ./docs --glob '**/*.md' --interval 2 --llm test
    """
    from deltamem.watch import FolderTable

    if interval <= 0:
        _fail(dm.ConfigError(f"--interval must be positive, got {interval}"))
    restore_sigterm = _stop_on_sigterm()

    def show(result) -> None:
        if result.changed or result.skipped:
            console.print(result.summary())
        for path, reason in result.skipped:
            console.print(f"  skipped {path}: {reason}")

    database = None
    try:
        database = dm.connect(db, llm=llm, embedder=embedder, background=maintain and not once)
        mirror = FolderTable(database, table, folder, glob=glob, hidden=hidden)
        if once:
            result = mirror.sync()
            console.print(result.summary())
            for path, reason in result.skipped:
                console.print(f"  skipped {path}: {reason}")
            if maintain:
                database.maintain()
            return
        console.print(f"watching {folder} ({glob}) into {table!r} every {interval:g} s; Ctrl-C stops")
        mirror.watch(interval, on_sync=show)
    except KeyboardInterrupt:
        console.print("stopped")
    except dm.DeltamemError as exc:
        _fail(exc)
    finally:
        if database is not None:
            database.close()  # finishes the view version in progress; the last sync committed whole or not at all
        restore_sigterm()


def _copy_text(value: object) -> str:
    """A value as ``COPY ... TO STDOUT`` prints it (what Materialize's SUBSCRIBE gives psql): NULL is ``\\N``, booleans
    ``t``/``f``, JSON values compact, and backslash, tab and newline escaped so that a row stays on one line."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


@app.command()
def subscribe(
    db: str = typer.Argument(..., help="SQLite file."),
    view: str = typer.Argument(..., help="View name."),
    snapshot: bool = typer.Option(True, "--snapshot/--no-snapshot", help="Start with the current rows as +1 changes."),
    as_of: Optional[int] = typer.Option(
        None, "--as-of", "--since", help="Start at this version: its rows (with --snapshot), then every change after."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Exit after printing this many change rows."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per change row: version, diff, key, row."),
    header: bool = typer.Option(True, "--header/--no-header", help="Print the column names first (text output)."),
    llm: str = LLM,
    embedder: str = EMBEDDER,
) -> None:
    """Print a view's change rows as they happen, as Materialize's SUBSCRIBE does: version, diff (+1 added, -1
    removed; an update is both), then the row's columns, tab-separated. Keeps maintaining the views meanwhile, so
    writes from other processes are applied and printed. Runs until Ctrl-C or --limit rows.

    Example: deltamem subscribe app.db insights --no-snapshot --llm test
    """
    import queue

    from deltamem.changes import key_order
    from deltamem.errors import NoView
    from deltamem.store.base import ChangeRow

    if not Path(db).exists():
        _fail(dm.ConfigError(f"Database file {db!r} does not exist"))
    if limit is not None and limit < 1:
        _fail(dm.ConfigError(f"--limit must be at least 1, got {limit}"))
    restore_sigterm = _stop_on_sigterm()
    database = subscription = None
    try:
        # Background maintenance polls the file, so commits by other processes are applied (and delivered) here too.
        database = dm.connect(db, llm=llm, embedder=embedder, poll_interval=0.5)
        handle = database.view(view)
        columns = list(handle.columns)
        pending: queue.Queue[ChangeRow] = queue.Queue()
        backlog: list[ChangeRow] = []
        replayed_through = -1  # the subscription may deliver versions the backlog holds: print those once
        if as_of is None:
            subscription = handle.subscribe(pending.put, snapshot=snapshot)
        else:
            subscription = handle.subscribe(pending.put, snapshot=False)  # delivers from the version reflected now
            handle.rows(as_of=as_of, fresh=True)  # waits until the view reflects as_of; an error if it is ahead
            replayed_through = handle.version  # read after subscribing: the subscription starts at or before it
            if snapshot:
                at = database.store.get_view_rows(view, as_of)
                backlog = [ChangeRow(as_of, 1, k, at[k]) for k in sorted(at, key=key_order)]
            backlog += handle.changes(as_of + 1, replayed_through)
        if header and not as_json:
            typer.echo("\t".join(["version", "diff", *columns]))
        printed = 0

        def emit(change: ChangeRow) -> bool:
            """Print one change row; True once --limit rows are out."""
            nonlocal printed
            if as_json:
                typer.echo(json.dumps({"version": change.version, "diff": change.diff,
                                       "key": json.loads(change.key), "row": change.row}, default=str))
            else:
                extra = [f"{c}={_copy_text(v)}" for c, v in change.row.items() if c not in columns]  # e.g. _error
                fields = [str(change.version), f"{change.diff:+d}", *(_copy_text(change.row.get(c)) for c in columns)]
                typer.echo("\t".join(fields + extra))  # echo flushes: a pipe sees each row at once
            printed += 1
            return limit is not None and printed >= limit

        for change in backlog:
            if emit(change):
                return
        while True:
            try:
                change = pending.get(timeout=0.5)
            except queue.Empty:
                if isinstance(subscription.error, NoView):  # the view was dropped: say so, exit 1
                    _fail(subscription.error)
                for failed in (subscription.error, database.maintainer.error):
                    if failed is not None:
                        raise dm.DeltamemError(f'View "{view}" stopped: {failed}') from failed
                continue
            if change.version > replayed_through and emit(change):
                return
    except KeyboardInterrupt:
        pass  # Ctrl-C: a clean stop
    except dm.DeltamemError as exc:
        _fail(exc)
    finally:
        if subscription is not None:
            subscription.close()
        if database is not None:
            database.close()
        restore_sigterm()


# --- SQL: `deltamem sql` and `deltamem run` (deltamem.sql: dialect, planner, executor) -----------------------------


@app.command("sql")
def sql_shell(
    db: str = typer.Argument(":memory:", help="SQLite file (created if missing); a throwaway in-memory one if omitted."),
    llm: str = LLM,
    embedder: str = EMBEDDER,
) -> None:
    """Open an interactive SQL shell: statements end with ';' and may span lines; results print as tables;
    SUBSCRIBE TO v streams changes until Ctrl-C; \\q or Ctrl-D quits. History is kept in ~/.deltamem_history
    (or $DELTAMEM_HISTORY).

    Example: deltamem sql app.db --llm test --embedder test
    """
    from deltamem.sql.shell import default_history, run_shell

    try:
        with dm.connect(db, llm=llm, embedder=embedder) as database:
            run_shell(database, console, history=default_history())
    except dm.DeltamemError as exc:
        _fail(exc)


@app.command("run")
def run_sql(
    db: str = typer.Argument(..., help="SQLite file (created if missing)."),
    file: Path = typer.Argument(..., help="A .sql script: statements separated by ';'."),
    llm: str = LLM,
    embedder: str = EMBEDDER,
    echo: bool = typer.Option(True, "--echo/--no-echo", help="Print each statement before its result."),
) -> None:
    """Run a SQL script against a database, printing each statement's result; the first error stops it (a syntax
    error anywhere stops it before the first statement runs) and exits with status 1. COPY reads relative paths
    from the script's folder.

    Example: deltamem run app.db schema.sql --llm test --embedder test
    """
    from deltamem.sql.shell import run_script

    if not file.is_file():
        _fail(dm.ConfigError(f"SQL file {str(file)!r} does not exist"))
    try:
        with dm.connect(db, llm=llm, embedder=embedder) as database:
            run_script(database, file.read_text(), console, echo=echo, base_dir=file.resolve().parent)
    except dm.DeltamemError as exc:
        _fail(exc)
