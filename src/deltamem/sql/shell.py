"""The SQL shell and script runner behind ``deltamem sql`` and ``deltamem run``: read statements, print results.

    run_shell(db, Console())   # deltamem=> SHOW TABLES;  ... until \\q or Ctrl-D

Invariant: a statement runs only once it is complete (it ends with ``;`` outside strings and comments), and an error
ends that statement, never the shell: it is printed as one ``Error: ...`` block and the next prompt follows.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from deltamem.display import literal, print_table
from deltamem.errors import DeltamemError
from deltamem.sql.dialect import is_complete
from deltamem.sql.executor import Result, execute_script, follow, format_value

if TYPE_CHECKING:
    from rich.console import Console

    from deltamem.engine import Database

PROMPT, CONTINUATION = "deltamem=> ", "deltamem-> "
QUIT = ("\\q", "\\quit", "quit", "exit")
HELP = """Statements end with ';' and may span lines. \\q (or Ctrl-D) quits; Ctrl-C clears the statement being typed,
or stops a SUBSCRIBE. Try: SHOW TABLES; SHOW VIEWS; SHOW USAGE; SELECT * FROM v AS OF VERSION 3; SUBSCRIBE TO v;"""
FOLLOW_INTERVAL = 0.2  # seconds between polls of a subscribed view's history


def print_result(console: "Console", result: Result) -> None:
    """A result's rows as a table (when it has columns), then its status line."""
    if result.columns:
        print_table(console, result.rich_table())  # whole cells when stdout is not a terminal
    status = result.status + (f" (version {result.version})" if result.version is not None else "")
    console.print(literal(status))


def echo_statement(console: "Console", text: str) -> None:
    """A statement as the shell shows it typed, for script transcripts."""
    lines = text.splitlines() or [""]
    transcript = "\n".join((PROMPT if i == 0 else CONTINUATION) + line for i, line in enumerate(lines)) + ";"
    console.print(literal(transcript), soft_wrap=True)  # the statement's strings are data


def run_script(db: "Database", text: str, console: "Console", *, echo: bool = True,
               base_dir: Path | None = None) -> None:
    """Run every statement of ``text``, printing each (with ``echo``) and its result; raises at the first error.
    ``base_dir`` is the script's folder: COPY reads relative paths from there."""
    for statement, result in execute_script(db, text, base_dir=base_dir):
        if echo:
            echo_statement(console, statement.text)
        print_result(console, result)


def run_shell(db: "Database", console: "Console", *, read: Callable[[str], str] = input,
              history: Path | None = None) -> None:
    """Read statements until ``\\q`` or end of input, run each when complete, print results and errors."""
    interactive = sys.stdin.isatty()
    if interactive:
        # A process started from a non-interactive shell in the background inherits SIGINT ignored; the shell's
        # Ctrl-C (stop a SUBSCRIBE, drop a half-typed statement) needs it delivered as KeyboardInterrupt.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    _load_history(history)
    buffer: list[str] = []
    if interactive:
        console.print("deltamem SQL shell. End statements with ';'. \\? for help, \\q to quit.", markup=False,
                      highlight=False)
    try:
        while True:
            try:
                line = read((CONTINUATION if buffer else PROMPT) if interactive else "")
            except EOFError:
                break
            except KeyboardInterrupt:  # Ctrl-C at the prompt drops what was typed, as psql does
                console.print("^C", markup=False, highlight=False)
                buffer = []
                continue
            if not buffer and line.strip() in QUIT:
                break
            if not buffer and line.strip() in ("\\?", "help"):
                console.print(HELP, markup=False, highlight=False)
                continue
            if not buffer and not line.strip():
                continue
            buffer.append(line)
            text = "\n".join(buffer)
            if is_complete(text):
                buffer = []
                _run(db, text, console)
    finally:
        _save_history(history)


def _run(db: "Database", text: str, console: "Console") -> None:
    try:
        for _statement, result in execute_script(db, text):
            print_result(console, result)
            if result.view is not None and result.version is not None and sys.stdin.isatty():
                _follow(db, result.view, result.version, console)
    except DeltamemError as exc:
        console.print(literal(f"Error: {exc}"), soft_wrap=True)  # the message quotes the offending values
    except KeyboardInterrupt:
        console.print("cancelled (statements already committed stay)", markup=False, highlight=False)


def _follow(db: "Database", view: str, after: int, console: "Console") -> None:
    """Stream SUBSCRIBE's change rows as they commit, one tab-separated line each (version, diff, columns...)."""
    console.print(f"following {view} after version {after}; Ctrl-C stops", markup=False, highlight=False)
    try:
        while True:
            rows, after = follow(db, view, after)
            for row in rows:  # written raw: rich would expand the tabs that separate the fields
                console.file.write("\t".join(format_value(v) for v in row) + "\n")
                console.file.flush()
            time.sleep(FOLLOW_INTERVAL)
    except KeyboardInterrupt:
        console.print(f"stopped following {view} at version {after}", markup=False, highlight=False)


def default_history() -> Path:
    return Path(os.environ.get("DELTAMEM_HISTORY", "~/.deltamem_history")).expanduser()


def _load_history(path: Path | None) -> None:
    try:
        import readline
    except ImportError:  # no line editing on this platform: the shell still works
        return
    readline.set_history_length(1000)
    if path is not None and path.exists():
        try:
            readline.read_history_file(path)
        except OSError:
            pass  # an unreadable history file loses the history, not the session


def _save_history(path: Path | None) -> None:
    try:
        import readline
    except ImportError:
        return
    if path is not None:
        try:
            readline.write_history_file(path)
        except OSError:
            pass
