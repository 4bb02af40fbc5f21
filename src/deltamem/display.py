"""Printing data with rich: every value that came from a user, a file or a model is shown exactly as it is.

    table.add_row(*(literal(value) for value in row))   # '[red]x[/red] :thumbs_up:' prints as typed
    print_table(console, table)                          # whole cells in a pipe; fitted to a terminal

A ``str`` handed to rich is read as markup (``[red]``, a stray ``[/]`` raises ``MarkupError``) and its ``:name:``
codes become emoji, so data is never handed over as a ``str``: it is wrapped in ``rich.text.Text``, which rich
prints as is. rich is imported only when something is printed, so the core does not need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

# Wide enough for any table's natural width: what a table is measured against off a terminal.
_UNBOUNDED = 1_000_000


def literal(value: object, style: str = "") -> "Text":
    """``str(value)`` as rich ``Text``: printed verbatim, never read as markup or emoji codes."""
    from rich.text import Text

    return Text(str(value), style=style)


def print_table(console: "Console", table: "Table") -> None:
    """Print a table of data: on a terminal it fits the window (long cells fold); anywhere else (a pipe, a file) it
    is as wide as its widest cells, so that every cell prints whole and a program reading it never gets ``answ…``."""
    if console.is_terminal:
        console.print(table)
        return
    from rich.console import Console
    from rich.measure import Measurement

    natural = Measurement.get(console, console.options.update_width(_UNBOUNDED), table).maximum
    # A console of its own: print(width=...) cannot go beyond the console's width. Off a terminal there is no style
    # or colour to carry over.
    Console(file=console.file, width=max(natural, console.width)).print(table)
