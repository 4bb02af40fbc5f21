"""PostgreSQL's ``test_decoding`` output read back: one change line into a ``DecodedChange``, one text value into a
deltamem value.

    >>> change = parse_change("table public.docs: UPDATE: old-key: id[integer]:1 new-tuple: id[integer]:2 "
    ...                       "title[text]:'it''s' n[bigint]:null")
    >>> change.table, change.op, change.old, change.new
    (('public', 'docs'), 'UPDATE', {'id': '1'}, {'id': '2', 'title': "it's", 'n': None})
    >>> to_value("1.5", "numeric"), to_value("true", "boolean"), to_value('{"a": 1}', "jsonb")
    (1.5, True, {'a': 1})

Invariant: a value is converted by its column's type from PostgreSQL's own text output (``typoutput``), whether it
came from a change line or from the initial copy (which selects ``column::text``), so a row reads the same either way.
The types map to deltamem's as ``column_type`` says: integers to ``int``; ``real``, ``double precision`` and
``numeric`` to ``float`` (NaN and infinities, which deltamem cannot store, to NULL); ``boolean`` to ``bool``;
``json``/``jsonb`` to ``json``; every other type (text, dates and times, uuid, arrays ...) to its text.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from deltamem.changes import ColumnType

# A value that an UPDATE left in TOAST storage unchanged: test_decoding prints no value for it, so the change keeps
# the value the row had (``deltamem.cdc.follower``).
UNCHANGED = "unchanged-toast-datum"

_INT_TYPES = frozenset({"smallint", "integer", "bigint", "oid"})
_FLOAT_TYPES = frozenset({"real", "double precision", "numeric"})
_JSON_TYPES = frozenset({"json", "jsonb"})


@dataclass(frozen=True)
class DecodedChange:
    """One change line: ``table`` as (schema, name), unquoted (``("public", "docs")``), ``op``
    (``INSERT``, ``UPDATE``, ``DELETE``, ``TRUNCATE``), and per column its text value (``None`` for NULL,
    ``UNCHANGED``): ``old`` the old key (or the whole old row, under ``REPLICA IDENTITY FULL``) where printed, ``new``
    the new row of an INSERT or UPDATE."""

    table: tuple[str, str]
    op: str
    old: dict[str, str | None] | None
    new: dict[str, str | None] | None


def column_type(pg_type: str) -> ColumnType:
    """The deltamem type of a column of PostgreSQL type ``pg_type`` (as ``format_type`` names it)."""
    if pg_type in _INT_TYPES:
        return ColumnType.INT
    if pg_type in _FLOAT_TYPES:
        return ColumnType.FLOAT
    if pg_type == "boolean":
        return ColumnType.BOOL
    if pg_type in _JSON_TYPES:
        return ColumnType.JSON
    return ColumnType.TEXT


def to_value(text: str | None, pg_type: str) -> Any:
    """The deltamem value of PostgreSQL's text output ``text`` for a column of type ``pg_type``."""
    if text is None:
        return None
    kind = column_type(pg_type)
    if kind is ColumnType.INT:
        return int(text)
    if kind is ColumnType.FLOAT:
        number = float(text)
        return number if math.isfinite(number) else None
    if kind is ColumnType.BOOL:
        return text in ("t", "true")
    if kind is ColumnType.JSON:
        return json.loads(text)
    return text


def parse_change(line: str) -> DecodedChange:
    """Read one test_decoding change line (``table <schema>.<name>: <OP>: <columns>``); ``ValueError`` when it is not
    one (a caller error: the slot's plugin is not test_decoding)."""
    reader = _Reader(line)
    reader.expect("table ")
    schema = reader.identifier()
    reader.expect(".")
    name = reader.identifier()
    table = (schema, name)
    reader.expect(": ")
    op = reader.until(":")
    reader.expect(":")
    old: dict[str, str | None] | None = None
    new: dict[str, str | None] | None = None
    if reader.at_end() or reader.peek(" (") or op == "TRUNCATE":
        return DecodedChange(table, op, None, None)  # "(no-tuple data)", "(no-flags)": no columns printed
    reader.expect(" ")
    if reader.peek("old-key: "):
        reader.expect("old-key: ")
        old = reader.columns(stop="new-tuple: ")
        reader.expect("new-tuple: ")
    columns = reader.columns(stop=None)
    if op == "DELETE":
        old = columns
    else:
        new = columns
    return DecodedChange(table, op, old, new)


class _Reader:
    """A cursor over one line; each method consumes what it reads and raises ``ValueError`` where the line departs
    from test_decoding's format."""

    def __init__(self, line: str):
        self.line = line
        self.at = 0

    def at_end(self) -> bool:
        return self.at >= len(self.line)

    def peek(self, text: str) -> bool:
        return self.line.startswith(text, self.at)

    def expect(self, text: str) -> None:
        if not self.peek(text):
            raise ValueError(f"not a test_decoding change: expected {text!r} at {self.at} in {self.line[:200]!r}")
        self.at += len(text)

    def until(self, stop: str) -> str:
        end = self.line.find(stop, self.at)
        if end < 0:
            raise ValueError(f"not a test_decoding change: no {stop!r} after {self.at} in {self.line[:200]!r}")
        found, self.at = self.line[self.at:end], end
        return found

    def identifier(self) -> str:
        """A name, quoted (as ``"My ""T""`` is) or plain (up to a dot, a bracket, a colon or a space)."""
        if self.peek('"'):
            return self._quoted('"')
        start = self.at
        while not self.at_end() and self.line[self.at] not in '.[: ':
            self.at += 1
        return self.line[start:self.at]

    def columns(self, stop: str | None) -> dict[str, str | None]:
        """``name[type]:value`` items separated by spaces, up to the end or to ``stop``."""
        found: dict[str, str | None] = {}
        while not self.at_end() and not (stop and self.peek(stop)):
            name = self.identifier()
            self.expect("[")
            self.until("]:")  # the type; "text[]" ends with "]", so the first "]:" closes it
            self.expect("]:")
            found[name] = self._value()
            if not self.at_end():
                self.expect(" ")
        return found

    def _value(self) -> str | None:
        if self.peek("'"):
            return self._quoted("'")
        start = self.at
        end = self.line.find(" ", start)
        self.at = len(self.line) if end < 0 else end
        text = self.line[start:self.at]
        return None if text == "null" else text  # a NULL prints bare; the text 'null' prints quoted

    def _quoted(self, quote: str) -> str:
        """A quoted string, its quote doubled inside (``'it''s'``); the value may hold spaces and newlines."""
        self.expect(quote)
        parts = []
        while True:
            end = self.line.find(quote, self.at)
            if end < 0:
                raise ValueError(f"not a test_decoding change: unterminated {quote} in {self.line[:200]!r}")
            parts.append(self.line[self.at:end])
            self.at = end + 1
            if not self.peek(quote):
                return "".join(parts)
            parts.append(quote)
            self.at += 1
