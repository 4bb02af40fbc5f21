"""LOTUS-style prompt templates: ``"{abstract} is about databases"`` names the columns it reads in braces.

    >>> Template("{title}: {abstract}").render({"title": "T", "abstract": "A", "year": 1})
    'T: A'

Braces are doubled to appear literally (``{{``). Columns are checked against the input before any model call.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from typing import Any

from deltamem.errors import TemplateError, did_you_mean


class Template:
    """A parsed template: ``text`` and the ``columns`` it reads, in order of first use."""

    def __init__(self, text: str):
        if not isinstance(text, str) or not text.strip():
            raise TemplateError(f"Template {text!r} is empty; write an instruction such as '{{abstract}} is about X'")
        self.text = text
        columns: list[str] = []
        try:
            for _literal, name, spec, conversion in string.Formatter().parse(text):
                if name is None:
                    continue
                if not name or not name.isidentifier() or spec or conversion:
                    raise TemplateError(
                        f"Template {text!r} has the placeholder {{{name or ''}{':' + spec if spec else ''}}}; "
                        "placeholders are bare column names such as {abstract}"
                    )
                if name not in columns:
                    columns.append(name)
        except ValueError as exc:  # unbalanced braces
            raise TemplateError(f"Template {text!r} is malformed ({exc}); write literal braces as {{{{ and }}}}") from None
        self.columns: tuple[str, ...] = tuple(columns)

    def check(self, available: Iterable[str], *, where: str) -> None:
        """Raise ``TemplateError`` naming the first column the template reads that ``available`` lacks."""
        available = list(available)
        for name in self.columns:
            if name not in available:
                raise TemplateError(
                    f"Template {self.text!r} reads column {name!r}, which {where} does not have."
                    + did_you_mean(name, available)
                )

    def render(self, row: dict[str, Any]) -> str:
        return self.text.format_map({name: _as_text(row.get(name)) for name in self.columns})

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def _as_text(value: Any) -> str:
    return "" if value is None else str(value)
