"""What every command shares: the console, the backend options, one-line errors and progress bars.

    from deltamem.commands.common import LLM, console, fail
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console

import deltamem as dm
from deltamem.store import is_postgres_dsn

if TYPE_CHECKING:
    from rich.progress import Progress

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download weights at run time
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF loader draws a raw tqdm bar; ours are rich's

console = Console()


class _StderrLines(logging.Handler):
    """Each record as one plain line on the stderr of the moment (a test runner swaps it per command)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            typer.echo(self.format(record), err=True)
        except Exception:  # noqa: BLE001 - logging's own contract: a failed emit never raises into the caller
            self.handleError(record)


# A model that loads says so, with its duration ("Loaded SmolLM2-135M-Instruct (Q4_1) in 31.2 s"): the bars that
# transformers would draw are off (TQDM_DISABLE above), and a silent half minute reads as a hang.
_backends_log = logging.getLogger("deltamem.llm")
if not any(isinstance(h, _StderrLines) for h in _backends_log.handlers):
    _backends_log.addHandler(_StderrLines())
    _backends_log.setLevel(logging.INFO)

LLM = typer.Option("local", "--llm", help="Chat backend: local (SmolLM2-135M), openai, or test.")
EMBEDDER = typer.Option("minilm", "--embedder", help="Embedding backend: minilm, openai, or test.")
MAINTAIN_HERE = typer.Option(True, "--maintain/--no-maintain", help="Keep the views up to date in this process (runs "
                                                                  "the model), or leave that to the process that "
                                                                  "maintains them.")


def comma_ints(text: str, option: str) -> list[int]:
    """The integers of a comma-separated option value, or a clean exit naming ``--option``."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        fail(dm.ConfigError(f"--{option} takes comma-separated integers; {text!r} is not a comma-separated list "
                            "of them"))


def fail(exc: dm.DeltamemError) -> NoReturn:
    """Print ``exc`` as one unwrapped line on stderr and exit with status 1."""
    typer.echo(f"Error: {exc}", err=True)
    raise typer.Exit(1)


def task_reporter(progress: "Progress") -> Callable[[str, int, int], None]:
    """A ``(name, done, total)`` callback that draws one bar per name."""
    tasks: dict[str, int] = {}

    def report(name: str, done: int, total: int) -> None:
        if name not in tasks:
            tasks[name] = progress.add_task(name, total=total)
        progress.update(tasks[name], completed=done)

    return report


def open_db(db: str, llm: str = "test", embedder: str = "test") -> dm.Database:
    """Open an existing database file (or a PostgreSQL DSN); a missing file is a ``ConfigError``, not a new empty
    database."""
    if not is_postgres_dsn(db) and not Path(db).exists():
        raise dm.ConfigError(f"Database file {db!r} does not exist")
    return dm.connect(db, llm=llm, embedder=embedder)


def stop_on_sigterm() -> Callable[[], None]:
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
