"""Changes, versions, row schemas and the TTL clock.

A change is ``(table, key, before, after, version)``: an insert has no ``before``, a delete no ``after``, an update
both (a retraction plus an insertion, as in DBSP). Every commit gets the next global version; a view at version v
reflects exactly the changes up to v.

    >>> parse_duration("7 days")
    604800.0
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, NewType, Protocol

from deltamem.errors import PrimaryKeyError, SchemaError

Row = dict[str, Any]
RowKey = NewType("RowKey", str)  # canonical JSON text of a primary-key value: '1' and '"1"' are different keys

ERROR_COLUMN = "_error"  # reserved: set on a view row whose LLM call failed, so a failure is never a silent NULL


def encode_key(value: Any) -> RowKey:
    """Return the canonical text of a primary-key value (a ``str`` or an ``int``)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PrimaryKeyError(f"Primary key value {value!r} has type {type(value).__name__}; use a str or an int")
    return RowKey(json.dumps(value))


def decode_key(key: RowKey) -> Any:
    return json.loads(key)


def key_order(key: RowKey) -> tuple[bool, Any]:
    """Sort key for row keys: numbers numerically, then strings (``sorted(keys, key=key_order)``)."""
    value = decode_key(key)
    return isinstance(value, str), value


class ExpireMode(str, enum.Enum):
    """What a TTL expiry does to outputs derived from the expired row."""

    RETRACT = "retract"  # the expiry is a delete: dependent outputs are refreshed or retracted
    KEEP = "keep"  # the row and the operator state it held are freed; outputs already derived stay


class ColumnType(str, enum.Enum):
    """A column's type; ``None`` fits every type except the primary key's."""

    TEXT = "text"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    JSON = "json"  # any JSON value

    @classmethod
    def of(cls, value: Any) -> "ColumnType":
        """The type inferred for a Python value (used when a table's columns come from its first row)."""
        if isinstance(value, bool):
            return cls.BOOL
        if isinstance(value, int):
            return cls.INT
        if isinstance(value, float):
            return cls.FLOAT
        if isinstance(value, str):
            return cls.TEXT
        return cls.JSON

    def accepts(self, value: Any) -> bool:
        if value is None or self is ColumnType.JSON:
            return True
        if self is ColumnType.FLOAT:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        return ColumnType.of(value) is self


def json_problem(value: Any) -> str | None:
    """Why ``value`` cannot be stored, or None when it is a JSON value: None, a bool, an int, a finite float, a str,
    or a list, tuple or str-keyed dict of these.

    The store writes rows as JSON text that SQLite's ``json_extract`` reads back; ``json.dumps`` would write NaN and
    Infinity as bare words that SQLite rejects (breaking every later query of the table), and raise ``TypeError``
    for a ``datetime`` or ``set`` only at commit, so rows are checked with this before anything is written.
    """
    if value is None or isinstance(value, (str, int)):  # a bool is an int
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value!r}, which is not a finite number (NaN and Infinity " \
                                                 "cannot be stored)"
    if isinstance(value, (list, tuple)):
        return next((problem for problem in map(json_problem, value) if problem is not None), None)
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str):
                return f"an object key {name!r} ({type(name).__name__}); JSON object keys are strings"
            problem = json_problem(item)
            if problem is not None:
                return problem
        return None
    return f"{value!r} ({type(value).__name__}), which is not a JSON value"


@dataclass(frozen=True)
class Change:
    """One committed row change. ``expire_mode`` is set when the engine emitted it for a TTL expiry."""

    table: str
    key: RowKey
    before: Row | None
    after: Row | None
    version: int
    expire_mode: ExpireMode | None = None

    @property
    def kind(self) -> str:
        if self.expire_mode is not None:
            return "expire"
        if self.before is None:
            return "insert"
        return "delete" if self.after is None else "update"


@dataclass(frozen=True)
class Written:
    """What one write (``upsert``, ``delete``, a ``db.batch()``) committed: the version and counts of real changes.

    A version is a change: rewriting a row with the values it has (which only renews its TTL) or deleting an absent
    key is counted as ``unchanged``, and a write that changes nothing commits no version (``version`` is None).

        >>> Written(version=None, unchanged=1).changed
        0
    """

    version: int | None
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0

    @property
    def changed(self) -> int:
        """Rows inserted, updated or deleted."""
        return self.inserted + self.updated + self.deleted

    @classmethod
    def of(cls, version: int | None, changes: list["Change"], num_writes: int) -> "Written":
        """From the changes a commit of ``num_writes`` writes (one per key) made."""
        kinds = [change.kind for change in changes]
        return cls(version, kinds.count("insert"), kinds.count("update"), kinds.count("delete"),
                   num_writes - len(changes))


@dataclass(frozen=True)
class Delta:
    """What operators pass to each other: one key's row before and after a version.

    ``forget`` asks every operator to drop the state it holds for ``key`` while its outputs stay (TTL ``keep``).
    """

    key: RowKey
    before: Row | None
    after: Row | None
    forget: bool = False


@dataclass(frozen=True)
class RowWrite:
    """A requested write: ``after=None`` deletes. ``expires_at`` is the epoch second the row's TTL ends, if any."""

    table: str
    key: RowKey
    after: Row | None
    expires_at: float | None = None
    expire_mode: ExpireMode | None = None


# --- time -------------------------------------------------------------------------------------------------------


class Clock(Protocol):
    """The time source for TTL; tests inject a ``ManualClock``."""

    def now(self) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told to: ``clock.advance("2 days")``."""

    def __init__(self, start: float = 1_700_000_000.0):
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, amount: float | str) -> float:
        seconds = parse_duration(amount) if isinstance(amount, str) else float(amount)
        with self._lock:
            self._now += seconds
            return self._now


_UNITS = {
    "s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
    "d": 86400, "day": 86400, "w": 604800, "week": 604800,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+?)s?\s*$")


def parse_duration(text: str | float | int) -> float:
    """Seconds in a duration such as ``'30 days'``, ``'12h'`` or ``90`` (already seconds)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise SchemaError(f"Duration {text!r} must be positive")
        return float(text)
    match = _DURATION.match(str(text).lower())
    if not match or match.group(2) not in _UNITS:
        raise SchemaError(f"Cannot read duration {text!r}; write it like '30 days', '12 hours' or '90 s'")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise SchemaError(f"Duration {text!r} must be positive")
    return seconds


def parse_timestamp(value: Any, *, column: str) -> float:
    """Epoch seconds from an int/float (epoch seconds), an ISO-8601 string or a ``datetime``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).timestamp()
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return parse_timestamp(parsed, column=column)
    raise SchemaError(f"TTL column {column!r} holds {value!r}; use epoch seconds or an ISO-8601 timestamp")
