"""``deltamem sql`` (the shell) and ``deltamem run`` (a script): deltamem's SQL from the command line."""

from __future__ import annotations

from pathlib import Path

import typer

import deltamem as dm
from deltamem.commands.common import EMBEDDER, LLM, console, fail


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
        fail(exc)


def run_sql(
    db: str = typer.Argument(..., help="SQLite file (created if missing), or a postgresql:// DSN."),
    file: Path = typer.Argument(..., help="A .sql script: statements separated by ';'."),
    llm: str = LLM,
    embedder: str = EMBEDDER,
    echo: bool = typer.Option(True, "--echo/--no-echo", help="Print each statement before its result."),
) -> None:
    """Run a SQL script against a database, printing each statement's result; the first error stops it (a syntax
    error anywhere, or a misconfigured --llm or --embedder, stops it before the first statement runs) and exits with
    status 1. COPY reads relative paths from the script's folder.

    Example: deltamem run app.db schema.sql --llm test --embedder test
    """
    from deltamem.sql.shell import run_script

    if not file.is_file():
        fail(dm.ConfigError(f"SQL file {str(file)!r} does not exist"))
    try:
        with dm.connect(db, llm=llm, embedder=embedder) as database:
            run_script(database, file.read_text(), console, echo=echo, base_dir=file.resolve().parent)
    except dm.DeltamemError as exc:
        fail(exc)
