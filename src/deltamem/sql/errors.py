"""Errors of the SQL layer: where a statement went wrong, said in one place the shell and scripts print.

    raise SQLSyntaxError("expected ')'", sql, start=41, end=41)   # prints the line, and a caret under offset 41

Invariant: a ``SQLSyntaxError`` always points into the text it was raised for (``start``/``end`` are offsets into
``sql``, inclusive), so its caret is under the token at fault; every other SQL error names the object it is about.
"""

from __future__ import annotations

from deltamem.errors import DeltamemError, NoTable


class SQLSyntaxError(DeltamemError):
    """Raised when SQL text does not parse; carries the line, column and a caret excerpt of the fault."""

    def __init__(self, description: str, sql: str, *, start: int, end: int | None = None):
        self.description = description
        self.sql = sql
        self.start = max(0, min(start, len(sql)))
        self.end = max(self.start, end if end is not None else self.start)
        line_start = sql.rfind("\n", 0, self.start) + 1
        line_end = sql.find("\n", self.start)
        line_end = len(sql) if line_end < 0 else line_end
        self.line = sql.count("\n", 0, self.start) + 1  # 1-based, like editors
        self.column = self.start - line_start + 1  # 1-based
        text = sql[line_start:line_end].replace("\t", " ")  # one cell per character keeps the caret aligned
        width = max(1, min(self.end, line_end - 1) - self.start + 1)
        gutter = str(self.line)
        self.excerpt = f"  {gutter} | {text}\n  {' ' * len(gutter)} | {' ' * (self.column - 1)}{'^' * width}"
        super().__init__(f"syntax error at line {self.line}, column {self.column}: {description}\n{self.excerpt}")


class NotSupported(DeltamemError):
    """Raised for SQL that parses but that deltamem cannot run yet; the message names the construct."""


class BindError(DeltamemError):
    """Raised when a statement's parameters (``?``, ``$1``, ``:name``) and the values given do not match."""


class InternalTable(NoTable):
    """Raised when a statement or an HTTP request names one of deltamem's own tables (``_sql_catalog``); they are
    kept consistent by deltamem alone, so no caller may read or write them. A ``NoTable``, so a caller that handles a
    missing table handles this too."""
