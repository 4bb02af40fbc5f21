"""``deltamem bench engine``: changes per second maintained end to end, per batch size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table as RichTable

import deltamem as dm
from deltamem.commands.common import comma_ints, console, fail, task_reporter


def bench_engine(
    changes: int = typer.Option(2000, help="Rows inserted per batch size."),
    batches: str = typer.Option("1,10,1000", help="Comma-separated batch sizes (rows per write, one version each)."),
    db: Optional[str] = typer.Option(
        None, "--db", help="A postgresql:// DSN (or a SQLite file) to run on; default: a fresh SQLite file. Each "
                           "batch size gets its own table and view there."),
    out: Optional[Path] = typer.Option(None, help="Write the result as JSON here."),
) -> None:
    """Changes/s from the writer's commit to the view's, on the test backend, for each batch size.

    Example: deltamem bench engine --changes 2000 --batches 1,10,1000 --db postgresql://localhost/bench
    """
    from rich.progress import Progress

    from deltamem.bench.engine import run_engine_bench

    sizes = comma_ints(batches, "batches")
    try:
        with Progress(console=console, transient=True) as progress:
            result = run_engine_bench(changes=changes, batches=sizes, db=db, progress=task_reporter(progress))
    except dm.DeltamemError as exc:
        fail(exc)
    store = result["config"]["store"]
    table = RichTable(title=f"bench engine · {store} · test backend · {changes} changes · one sem_map view")
    for column in ("batch", "versions", "wall s", "changes/s", "versions/s", "writer changes/s"):
        table.add_column(column, justify="right")
    for r in result["runs"]:
        table.add_row(str(r["batch"]), str(r["versions"]), f"{r['wall_seconds']:.2f}",
                      f"{r['changes_per_second']:,.0f}",
                      f"{r['versions_per_second']:,.0f}", f"{r['writer_changes_per_second']:,.0f}")
    console.print(table)
    if out:
        out.write_text(json.dumps(result, indent=2))
