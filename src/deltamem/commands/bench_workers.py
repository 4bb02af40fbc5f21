"""``deltamem bench workers``: calls/s with 1, 2, 4 worker processes on one store, calls paid twice, a SIGKILL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table as RichTable

import deltamem as dm
from deltamem.commands.common import comma_ints, console, fail, task_reporter
from deltamem.display import literal


def bench_workers(
    db: Optional[str] = typer.Argument(None, help="A postgresql:// DSN (a fresh database is created on its server "
                                                  "per run, then dropped), or a SQLite path prefix (<DB>-w<N>.db "
                                                  "files); default: temporary SQLite files."),
    workers: str = typer.Option("1,2,4", help="Comma-separated worker counts, one run each."),
    views: int = typer.Option(8, help="sem_map views over the one table: each change costs one call per view."),
    shards: int = typer.Option(0, help="Instead of --views: one LLM_GENERATE view in this many shards, one call per "
                                       "change; the workers share its shards."),
    partitions: Optional[int] = typer.Option(None, help="With --shards: the view's partitions (one question each; "
                                                        "default 8 per shard); the stream spreads over them."),
    changes: int = typer.Option(100, help="Versions committed per run (one row each)."),
    latency: float = typer.Option(0.1, help="Seconds per call of the workers' test backend."),
    max_concurrency: int = typer.Option(1, "--max-concurrency", help="Calls each worker runs at once."),
    lease_timeout: float = typer.Option(10.0, "--lease-timeout", help="The workers' lease timeout, in seconds."),
    claim_timeout: float = typer.Option(10.0, "--claim-timeout", help="The workers' claim timeout, in seconds."),
    kill: Optional[int] = typer.Option(None, "--kill", help="Workers in the SIGKILL run (default: the largest "
                                                            "count, if at least 2; 0 skips it)."),
    kill_signal: str = typer.Option("KILL", "--kill-signal", help="KILL, or STOP: a worker that stops answering, as "
                                                                  "one killed on another machine looks."),
    out: Optional[Path] = typer.Option(None, help="Write the result as JSON here."),
) -> None:
    """Worker scale-out: calls/s paid by N `deltamem worker` processes sharing one store on a test backend with a
    fixed latency per call, the share of calls paid twice (must be 0), views checked against a from-scratch
    recompute, then one worker killed with SIGKILL mid-stream.

    Example: deltamem bench workers postgresql://bench@localhost/bench --workers 1,2,4 --views 8 --changes 100
    """
    from rich.progress import Progress

    from deltamem.bench.workers import run_workers_bench

    counts = comma_ints(workers, "workers")
    try:
        with Progress(console=console, transient=True) as progress:
            result = run_workers_bench(db, workers=counts, views=views, changes=changes, latency=latency,
                                       max_concurrency=max_concurrency, lease_timeout=lease_timeout,
                                       claim_timeout=claim_timeout, kill_workers=kill, kill_signal=kill_signal.upper(),
                                       shards=shards, partitions=partitions, progress=task_reporter(progress))
    except dm.DeltamemError as exc:
        fail(exc)
    console.print(literal(
        f"store: {result['store']}; test backend, {latency:g} s per call; {result['workload']}, {changes} versions "
        "per run; "
        f"max concurrency {max_concurrency} per worker, so one worker pays at most {max_concurrency / latency:g} "
        "calls/s and the scale-out is measurable; bound: the stream's calls over those of the busiest worker's "
        "views (shards get unequal parts of a stream: partitions hash to them)"))
    table = RichTable(title="bench workers · calls/s while a backlog drains")
    held = "shards held at start" if shards else "views held at start"
    for column in ("workers", held, "calls", "seconds", "calls/s", "vs 1 worker", "bound", "paid twice",
                   "= recompute"):
        table.add_column(column, justify="right")
    for r in result["runs"]:
        speedup = "" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        table.add_row(str(r["workers"]), "/".join(map(str, r["shares_at_start"])), str(r["calls"]),
                      f"{r['seconds']:.1f}", f"{r['calls_per_second']:.1f}", speedup, f"{r['speedup_bound']:.2f}x",
                      f"{r['paid_twice_share']:.0%}", "yes" if r["equal_to_recompute"] else "NO")
    if result["runs"]:
        console.print(table)
    killed = result["kill"]
    if killed is not None:
        k = killed["kill"]
        continued = "never" if k["seconds_to_continue"] is None else f"{k['seconds_to_continue']:.2f} s"
        if k["signal"] == "SIGKILL":
            why = "on one machine a killed worker's leases are taken as soon as its pid is gone"
        else:
            why = (f"a stopped worker's leases are taken when they expire, and a call it was paying when its claim has "
                   f"gone {k['claim_timeout']:g} s without renewal")
        console.print(literal(
            f"{k['signal']} of 1 of {killed['workers']} workers mid-stream ({k['stream_changes_per_second']:.2f} "
            f"versions/s): its views {', '.join(k['views']) or '(none)'} continued after {continued} (lease "
            f"timeout {k['lease_timeout']:g} s; {why}); calls paid twice "
            f"{killed['paid_twice_share']:.0%}; calls it left interrupted (possibly paid, not on the ledger as "
            f"paid) {killed['interrupted']}; views equal to a recompute: "
            f"{'yes' if killed['equal_to_recompute'] else 'NO'}"))
    if out:
        out.write_text(json.dumps(result, indent=2))
