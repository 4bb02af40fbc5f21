"""``deltamem load | watch | subscribe``: files and folders into tables, and a view's change rows out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

import deltamem as dm
from deltamem.commands.common import EMBEDDER, LLM, MAINTAIN_HERE, console, fail, stop_on_sigterm, task_reporter
from deltamem.display import literal
from deltamem.store import is_postgres_dsn


def load(
    db: str = typer.Argument(..., help="SQLite file (created when --key creates the table), or a postgresql:// DSN."),
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

    if not is_postgres_dsn(db) and not Path(db).exists() and key is None:
        fail(dm.ConfigError(f"Database file {db!r} does not exist; pass --key to create it with the table"))
    try:
        with Progress(console=console, transient=True) as progress:
            report = task_reporter(progress)
            with dm.connect(db, llm=llm, embedder=embedder, background=False, progress=report) as database:
                result = load_file(database, table, file, format=format, key=key, limit=limit, progress=report)
                if maintain and result.version is not None:
                    database.maintain()
    except dm.DeltamemError as exc:
        fail(exc)
    if result.version is None:
        what = result.summary() if result.records else "no records"
        console.print(literal(f"{file}: {what}; nothing changed, nothing committed"))
        return
    created = f" (created table {table!r})" if result.created else ""
    console.print(literal(f"{table}{created}: {result.summary()}; committed version {result.version}"))


def watch(
    db: str = typer.Argument(..., help="SQLite file (created if missing), or a postgresql:// DSN."),
    table: str = typer.Argument(..., help="Table mirroring the folder (key 'path'; columns path, text, mtime)."),
    folder: Path = typer.Argument(..., help="The folder to watch."),
    glob: str = typer.Option("**/*", "--glob", help="Which files, relative to the folder, e.g. '**/*.md'."),
    interval: float = typer.Option(2.0, "--interval", help="Seconds between syncs."),
    once: bool = typer.Option(False, "--once", help="Sync once and exit (for scripts and tests)."),
    hidden: bool = typer.Option(False, "--hidden", help="Include hidden files and folders (names starting with '.')."),
    maintain: bool = MAINTAIN_HERE,
    llm: str = LLM,
    embedder: str = EMBEDDER,
) -> None:
    """Mirror a folder of text files into a table: each sync commits the created, edited and deleted files as one
    version (unchanged files cost nothing), so a docs folder or a code base can be a DATA_SOURCE. Ctrl-C stops.

    Example: deltamem watch app.db docs ./docs --glob '**/*.md' --interval 2 --llm test
    """
    from deltamem.watch import FolderTable

    if interval <= 0:
        fail(dm.ConfigError(f"--interval must be positive, got {interval}"))
    restore_sigterm = stop_on_sigterm()

    def show(result) -> None:
        if result.changed or result.skipped:
            console.print(literal(result.summary()))
        for path, reason in result.skipped:
            console.print(literal(f"  skipped {path}: {reason}"))

    database = None
    try:
        database = dm.connect(db, llm=llm, embedder=embedder, background=maintain and not once)
        mirror = FolderTable(database, table, folder, glob=glob, hidden=hidden)
        if once:
            result = mirror.sync()
            console.print(literal(result.summary()))
            for path, reason in result.skipped:
                console.print(literal(f"  skipped {path}: {reason}"))
            if maintain:
                database.maintain()
            return
        console.print(literal(f"watching {folder} ({glob}) into {table!r} every {interval:g} s; Ctrl-C stops"))
        mirror.watch(interval, on_sync=show)
    except KeyboardInterrupt:
        console.print("stopped")
    except dm.DeltamemError as exc:
        fail(exc)
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


def subscribe(
    db: str = typer.Argument(..., help="SQLite file, or a postgresql:// DSN."),
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

    from deltamem.changes import decode_key, key_order
    from deltamem.errors import NoView
    from deltamem.store.base import ChangeRow

    if not is_postgres_dsn(db) and not Path(db).exists():
        fail(dm.ConfigError(f"Database file {db!r} does not exist"))
    if limit is not None and limit < 1:
        fail(dm.ConfigError(f"--limit must be at least 1, got {limit}"))
    restore_sigterm = stop_on_sigterm()
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
                backlog = [ChangeRow(as_of, 1, decode_key(k), at[k]) for k in sorted(at, key=key_order)]
            backlog += handle.changes(as_of + 1, replayed_through)
        if header and not as_json:
            typer.echo("\t".join(["version", "diff", *columns]))
        printed = 0

        def emit(change: ChangeRow) -> bool:
            """Print one change row; True once --limit rows are out."""
            nonlocal printed
            if as_json:
                typer.echo(json.dumps({"version": change.version, "diff": change.diff,
                                       "key": change.key, "row": change.row}, default=str))
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
                    fail(subscription.error)
                for failed in (subscription.error, database.maintainer.error):
                    if failed is not None:
                        raise dm.DeltamemError(f'View "{view}" stopped: {failed}') from failed
                continue
            if change.version > replayed_through and emit(change):
                return
    except KeyboardInterrupt:
        pass  # Ctrl-C: a clean stop
    except dm.DeltamemError as exc:
        fail(exc)
    finally:
        if subscription is not None:
            subscription.close()
        if database is not None:
            database.close()
        restore_sigterm()
