"""Printing data with rich: every value that came from a user, a file or a model is shown exactly as it is.

    table.add_row(*(literal(value) for value in row))   # '[red]x[/red] :thumbs_up:' prints as typed

A ``str`` handed to rich is read as markup (``[red]``, a stray ``[/]`` raises ``MarkupError``) and its ``:name:``
codes become emoji, so data is never handed over as a ``str``: it is wrapped in ``rich.text.Text``, which rich
prints as is. rich is imported only when something is printed, so the core does not need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.text import Text


def literal(value: object, style: str = "") -> "Text":
    """``str(value)`` as rich ``Text``: printed verbatim, never read as markup or emoji codes."""
    from rich.text import Text

    return Text(str(value), style=style)
