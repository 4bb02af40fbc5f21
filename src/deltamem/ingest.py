"""Loading a file into a table: JSON Lines, a JSON array, CSV, or Debezium change events, as one atomic commit.

    result = load_file(db, "docs", "docs.jsonl", key="id")   # LoadResult(records=4, inserted=3, updated=1, ...)

Invariant: a file is one version or nothing. Every record is parsed first, then written inside one ``db.batch()``
where the engine validates each row; a bad record raises ``LoadError`` naming the file, the line and what is wrong,
and the table is exactly as before (a table that ``key=`` creates is created only once the whole file has parsed).

NOTE(ingest): all-or-nothing for the whole file rather than per chunk, because a half-loaded file is a state no
view should ever see, and a batch holds its writes in memory anyway; the cost is memory proportional to the file.
Within one file the last record of a key wins (a Debezium ``c`` then ``u`` then ``d`` of one key nets out), so
views see the file's net change, not each intermediate row; ``LoadResult.superseded`` counts the records that a later
record of the same key replaced (e.g. repeated titles in a file keyed by title), and the CLI and ``COPY`` print it.
``limit=n`` reads only the file's first n records (rows, array elements or events).

Formats:

- ``jsonl``: one JSON object per line, each a full row (upsert). Blank lines are skipped.
- ``json``: one JSON array of row objects (``[{"title": ..., "text": ...}, ...]``), each a full row; a line number
  is where its element starts. A ``.json`` file that starts with ``[`` is read as this, any other as JSON Lines.
- ``csv``: a header line naming the columns, then one row per record. Values are converted to the table's column
  types (``int``, ``float``, ``bool`` as true/false/1/0/yes/no, ``json``); an empty field is NULL, except in a
  ``text`` column, where it is ``""``. A new table's types are inferred from every value of each column (``nan``
  and ``inf`` make a ``text`` column, as no column stores a non-finite float).
- ``debezium``: one change event per line, ``{"before", "after", "op"}`` or the same inside ``{"payload": ...}``:
  ``c`` (create) and ``r`` (snapshot read) upsert ``after``, ``u`` upserts ``after`` (and deletes ``before``'s key
  when the key changed), ``d`` deletes ``before``'s key. ``null`` lines (Kafka tombstones) are skipped; ``t``
  (truncate) and any other op is an error. A ``jsonl`` file whose first record looks like an event is read as this.
"""

from __future__ import annotations

import csv
import enum
import io
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from deltamem.changes import ColumnType, Row, json_problem
from deltamem.errors import ConfigError, DeltamemError, LoadError, NoTable, did_you_mean

if TYPE_CHECKING:
    from deltamem.engine import Database

ProgressHook = Callable[[str, int, int], None]  # (label, done, total): what commands.common.task_reporter draws

_PROGRESS_EVERY = 512  # records between progress reports: the bar stays live without costing per-record time


class FileFormat(str, enum.Enum):
    """The formats ``load_file`` reads."""

    JSONL = "jsonl"
    JSON = "json"
    CSV = "csv"
    DEBEZIUM = "debezium"


_EXTENSIONS = {".jsonl": FileFormat.JSONL, ".ndjson": FileFormat.JSONL, ".json": FileFormat.JSONL,
               ".csv": FileFormat.CSV}
_DEBEZIUM_OPS = {"c": "create", "r": "read (snapshot)", "u": "update", "d": "delete"}
_TRUE, _FALSE = {"true", "t", "yes", "y", "1"}, {"false", "f", "no", "n", "0"}


@dataclass(frozen=True)
class Record:
    """One write a file asks for: ``row`` is upserted, or, when ``delete`` is set, ``row``'s key is deleted."""

    line: int  # 1-based line of the file where the record starts
    row: Row
    delete: bool = False


@dataclass(frozen=True)
class LoadResult:
    """What a load committed: counts of real changes (rewriting an identical row, or deleting an absent key, is
    ``unchanged``), and the version (``None`` when no record changed a row, or the file had none: nothing was
    committed)."""

    records: int
    inserted: int
    updated: int
    deleted: int
    unchanged: int
    version: int | None
    created: bool  # the table was created by this load
    superseded: int = 0  # records a later record of the same key replaced (they were never applied)

    def summary(self) -> str:
        """``"2 inserted, 0 updated, 0 deleted, 0 unchanged from 2 records"``, with the superseded, if any."""
        text = (f"{self.inserted} inserted, {self.updated} updated, {self.deleted} deleted, {self.unchanged} "
                f"unchanged from {self.records} records")
        if self.superseded:
            text += f" ({self.superseded} replaced by a later record with the same key)"
        return text


def detect_format(path: str | Path, format: str | None = None) -> FileFormat:
    """The format named by ``format``, else the one the extension implies (``.jsonl``, ``.ndjson``, ``.json``,
    ``.csv``); a ``.json`` file holding an array, and a JSON Lines file of change events, are recognised later, from
    their first bytes and first record."""
    if format is not None:
        try:
            return FileFormat(format)
        except ValueError:
            raise ConfigError(f"Unknown format {format!r}." + did_you_mean(format, [f.value for f in FileFormat])) \
                from None
    suffix = Path(path).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise ConfigError(f"Cannot tell the format of {str(path)!r} from its extension; pass --format jsonl, json, "
                          "csv or debezium")
    return _EXTENSIONS[suffix]


def load_file(
    db: Database,
    table: str,
    path: str | Path,
    *,
    format: str | None = None,
    key: str | None = None,
    limit: int | None = None,
    progress: ProgressHook | None = None,
    number: Callable[[list[Record]], list[Record]] | None = None,
    also: Callable[[], None] | None = None,
) -> LoadResult:
    """Apply the records of the file at ``path`` (its first ``limit``, if given) to ``table`` as one version (see
    the module docstring).

    The table must exist, unless ``key`` names its key column: then a missing table is created with columns
    inferred from every record. Raises ``LoadError`` (with ``.line``) for a bad record, ``NoTable`` for a missing
    table without ``key``, ``ConfigError`` for an unknown format; in every case the database is unchanged.
    ``number`` may fill in keys of the records once read (SQL numbers a stream's events with it); it runs inside the
    load's write transaction (an atomic batch), so that the numbers it reads and the rows it numbers commit together
    and no other writer, in this process or another, hands out the same ones. ``also`` runs inside the load's batch,
    so that what it writes commits with the file.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"limit takes a whole number of records, not {limit!r}")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"File {str(path)!r} does not exist")
    fmt = detect_format(path, format)
    exists = table in db.tables()
    if not exists and key is None:
        raise NoTable(f'Table "{table}" does not exist; pass --key (key="...") to create it from the file.'
                      + did_you_mean(table, db.tables()))
    definition = db._table_def(table) if exists else None
    key_column = definition.key if definition is not None else key
    assert key_column is not None
    if definition is not None and key is not None and key != definition.key:
        raise ConfigError(f'Table "{table}" has key {definition.key!r}, not {key!r}')
    columns = definition.columns if definition is not None else None

    label = f"read {path.name}"
    records = list(_read_records(path, fmt, key_column, columns, progress, label, detect=format is None,
                                 limit=limit, keyed=number is None))
    if not records:
        return LoadResult(0, 0, 0, 0, 0, None, False)
    if number is None:  # numbered records are checked once numbered, below
        _check_records(records, str(path), table, key_column, exists)
    created = False
    if not exists:
        # Declared from every record, not inferred from the first row: a later record may add a column.
        db.table(table, key=key_column, columns=_infer_columns(records, key_column))
        created = True
    target = db.table(table)
    with db.batch(atomic=number is not None) as batch:
        if number is not None:
            records = number(records)
            _check_records(records, str(path), table, key_column, exists)
        for done, record in enumerate(records, 1):
            try:
                if record.delete:
                    target.delete(record.row[key_column])
                else:
                    target.upsert(record.row)
            except LoadError:
                raise
            except DeltamemError as exc:
                raise LoadError(str(path), record.line, _as_record_problem(str(exc))) from exc
            if progress is not None and (done % _PROGRESS_EVERY == 0 or done == len(records)):
                progress(f"apply to {table}", done, len(records))
        num_keys = len({k for t, k in batch.writes if t == table})
        if also is not None:
            also()
    version = batch.version  # None when no record changed a row
    kinds = [change.kind for change in db.store.get_changes(version, version, [table])] if version else []
    return LoadResult(records=len(records), inserted=kinds.count("insert"), updated=kinds.count("update"),
                      deleted=kinds.count("delete"), unchanged=num_keys - len(kinds), version=version,
                      created=created, superseded=len(records) - num_keys)


def _check_records(records: list[Record], path: str, table: str, key_column: str, exists: bool) -> None:
    """Raise ``LoadError`` for the first record without a usable key (or, for a table to be created, with a value
    that is not JSON): checked before a table is created, so that a bad key never leaves an empty table."""
    for record in records:
        value = record.row.get(key_column)
        if value is None:
            raise LoadError(path, record.line, f"the record has no value for its key column {key_column!r}")
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise LoadError(path, record.line, f"key {key_column!r} must be a string or an integer, got {value!r}")
        if not exists:  # an existing table's rows are checked by the engine, with everything else about them
            for column, item in record.row.items():
                problem = json_problem(item)
                if problem is not None:
                    raise LoadError(path, record.line,
                                    f"the record for table {table!r}: column {column!r} holds {problem}")


def _as_record_problem(message: str) -> str:
    """The engine numbers rows within one write (always row 0 here); the line number replaces that."""
    return re.sub(r"^Row \d+ for table ('[^']*')", r"the record for table \1", message)


# --- reading ------------------------------------------------------------------------------------------------------
def _read_records(
    path: Path, fmt: FileFormat, key: str, columns: dict[str, ColumnType] | None, progress: ProgressHook | None,
    label: str, *, detect: bool, limit: int | None, keyed: bool,
) -> Iterator[Record]:
    total = path.stat().st_size
    with path.open("rb") as raw:
        def report() -> None:
            if progress is not None:
                progress(label, min(raw.tell(), total), total)

        if fmt is FileFormat.JSONL and detect and raw.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
            fmt = FileFormat.JSON  # a .json file holding one array
        raw.seek(0)
        if fmt is FileFormat.CSV:
            yield from _read_csv(raw, str(path), key, columns, report, limit, keyed=keyed)
        else:
            values = _json_array(raw, str(path), limit) if fmt is FileFormat.JSON else _json_lines(raw, str(path), report)
            yield from _json_records(values, str(path), key, fmt, detect=detect, limit=limit)
        if progress is not None:
            progress(label, total, total)


def _json_lines(raw: IO[bytes], path: str, report: Callable[[], None]) -> Iterator[tuple[int, Any]]:
    """(line, value) for each non-blank line."""
    for number, data in enumerate(raw, 1):
        if number % _PROGRESS_EVERY == 0:
            report()
        try:
            text = data.decode("utf-8-sig" if number == 1 else "utf-8")  # a byte-order mark may start the file
        except UnicodeDecodeError as exc:
            raise LoadError(path, number, f"is not UTF-8 ({exc.reason} at byte {exc.start})") from None
        text = text.rstrip("\r\n")
        if not text.strip():
            continue
        try:
            yield number, json.loads(text)
        except json.JSONDecodeError as exc:
            if text.lstrip().startswith("["):
                hint = "; JSON Lines wants one object per line: for an array, use format json"
            elif exc.pos >= len(text.rstrip()):
                hint = "; the line ends inside the object: JSON Lines wants each object whole on one line"
            else:
                hint = ""
            raise LoadError(path, number, f"is not valid JSON at {_position(text, exc.pos)}: {exc.msg}{hint}") \
                from None


def _json_array(raw: IO[bytes], path: str, limit: int | None) -> Iterator[tuple[int, Any]]:
    """(line where it starts, value) for each element of the file's one JSON array, up to ``limit`` of them."""
    data = raw.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LoadError(path, data[:exc.start].count(b"\n") + 1, f"is not UTF-8 ({exc.reason})") from None
    decoder, space = json.JSONDecoder(), re.compile(r"\s*")
    counted, line = 0, 1  # newlines before ``counted``: lines are counted as the parse moves on, never from 0

    def line_at(position: int) -> int:
        nonlocal counted, line
        line += text.count("\n", counted, position)
        counted = position
        return line

    position = space.match(text, 0).end()
    if not text.startswith("[", position):
        raise LoadError(path, line_at(position), "expected a JSON array of row objects ('[' first); for one object "
                                                 "per line, use format jsonl")
    position = space.match(text, position + 1).end()
    num_values = 0
    while not text.startswith("]", position):
        if limit is not None and num_values >= limit:
            return  # the rest of the file is not read, nor checked
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            start = text.rfind("\n", 0, exc.pos) + 1
            end = text.find("\n", exc.pos)
            line_text = text[start: len(text) if end < 0 else end]
            raise LoadError(path, exc.lineno, f"is not valid JSON at {_position(line_text, exc.pos - start)}: "
                                              f"{exc.msg}") from None
        yield line_at(position), value
        num_values += 1
        position = space.match(text, end).end()
        if text.startswith(",", position):
            position = space.match(text, position + 1).end()
        elif not text.startswith("]", position):
            raise LoadError(path, line_at(position), "expected ',' or ']' after an element of the JSON array")
    if space.match(text, position + 1).end() < len(text):
        raise LoadError(path, line_at(position), "has more after the JSON array's closing ']'")


def _position(line: str, offset: int) -> str:
    """Where in ``line`` a parse error is: its column (characters from 1, as editors count them) and the text up to
    it, so the place shows even where columns are counted otherwise: ``column 23 (after '"text": "b",')``."""
    before = line[max(0, offset - 24): offset].lstrip()
    shown = f"after {before!r}" if before else "at the start of the line"
    return f"column {offset + 1} ({shown})"


def _json_records(values: Iterator[tuple[int, Any]], path: str, key: str, fmt: FileFormat, *, detect: bool,
                  limit: int | None) -> Iterator[Record]:
    # An explicit --format jsonl or json reads rows even when they have columns named op, before and after.
    debezium: bool | None = True if fmt is FileFormat.DEBEZIUM else None if detect else False
    num_records = 0
    for number, value in values:
        if limit is not None and num_records >= limit:
            return
        if value is None and debezium is not False:
            continue  # a Kafka tombstone after a delete
        if not isinstance(value, dict):
            raise LoadError(path, number, f"expected a JSON object, got {type(value).__name__}")
        num_records += 1
        if debezium is None:
            debezium = _looks_like_event(value)
        if debezium:
            yield from event_records(value, path, number, key)
        else:
            yield Record(number, value)


def _looks_like_event(value: dict[str, Any]) -> bool:
    if isinstance(value.get("payload"), dict):
        value = value["payload"]
    return "op" in value and ("after" in value or "before" in value)


def event_records(event: dict[str, Any], path: str, line: int, key: str) -> Iterator[Record]:
    """The writes one Debezium-style event asks for (see the module docstring); ``LoadError`` names ``path`` and
    ``line`` when it is malformed."""
    if "payload" in event and "op" not in event:
        event = event["payload"]
        if event is None:
            return  # the envelope of a tombstone
        if not isinstance(event, dict):
            raise LoadError(path, line, f"'payload' must be an object, got {type(event).__name__}")
    op = event.get("op")
    if op not in _DEBEZIUM_OPS:
        known = ", ".join(f"'{o}' ({name})" for o, name in _DEBEZIUM_OPS.items())
        what = "has no 'op'" if op is None else f"has op {op!r}" + (" (truncate)" if op == "t" else "")
        raise LoadError(path, line, f"the change event {what}; supported ops are {known}")
    before, after = event.get("before"), event.get("after")
    for name, row in (("before", before), ("after", after)):
        if row is not None and not isinstance(row, dict):
            raise LoadError(path, line, f"'{name}' of op {op!r} must be an object or null, got {type(row).__name__}")
    if op == "d":
        if before is None or before.get(key) is None:
            raise LoadError(path, line, f"op 'd' needs 'before' with the key column {key!r}")
        yield Record(line, {key: before[key]}, delete=True)
        return
    if after is None:
        raise LoadError(path, line, f"op {op!r} needs an 'after' row")
    if op == "u" and before is not None and before.get(key) is not None and before.get(key) != after.get(key):
        yield Record(line, {key: before[key]}, delete=True)  # the primary key itself changed
    yield Record(line, after)


def _read_csv(raw: IO[bytes], path: str, key: str, columns: dict[str, ColumnType] | None,
              report: Callable[[], None], limit: int | None, *, keyed: bool) -> Iterator[Record]:
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")  # a byte-order mark is not in the first name
    reader = csv.reader(text)
    try:
        header = next(reader, None)
        if header is None:
            return
        header = [name.strip() for name in header]
        if key not in header and keyed:  # not keyed: the caller numbers the records
            raise LoadError(path, 1, f"the header has no key column {key!r}." + did_you_mean(key, header))
        if len(set(header)) != len(header):
            twice = sorted({name for name in header if header.count(name) > 1})
            raise LoadError(path, 1, f"the header names {', '.join(map(repr, twice))} twice")
        if columns is not None:
            unknown = [name for name in header if name not in columns]
            if unknown:
                raise LoadError(path, 1, f"unknown column {unknown[0]!r}." + did_you_mean(unknown[0], columns))
        rows: list[tuple[int, list[str]]] = []
        last_line = reader.line_num
        for fields in reader:
            if limit is not None and len(rows) >= limit:
                break  # a new table's types come from the rows read
            start, last_line = last_line + 1, reader.line_num  # a quoted field may span several lines
            if len(rows) % _PROGRESS_EVERY == 0:
                report()
            if not fields:
                continue
            if len(fields) != len(header):
                raise LoadError(path, start, f"has {len(fields)} fields, the header has {len(header)}")
            rows.append((start, fields))
    except UnicodeDecodeError as exc:
        raise LoadError(path, reader.line_num + 1, f"is not UTF-8 ({exc.reason})") from None
    except csv.Error as exc:
        raise LoadError(path, reader.line_num, f"is not valid CSV: {exc}") from None
    finally:
        text.detach()  # the caller closes the file
    types = columns or {name: _infer_csv_type([f[i] for _, f in rows]) for i, name in enumerate(header)}
    for line, fields in rows:
        yield Record(line, {name: None if name == key and not value.strip() else  # an empty key is a missing key
                            _convert(value, types[name], name, path, line) for name, value in zip(header, fields)})


def _infer_csv_type(values: list[str]) -> ColumnType:
    present = [v.strip() for v in values if v.strip()]
    for kind in (ColumnType.INT, ColumnType.FLOAT):
        if present and all(_parses(v, kind) for v in present):
            return kind
    if present and all(v.lower() in ("true", "false") for v in present):
        return ColumnType.BOOL
    return ColumnType.TEXT


def _parses(value: str, kind: ColumnType) -> bool:
    try:
        number = (int if kind is ColumnType.INT else float)(value)
    except ValueError:
        return False
    # "nan" and "inf" are words (a name, say), not floats: a float column cannot store them.
    return kind is ColumnType.INT or math.isfinite(number)


def _convert(value: str, kind: ColumnType, column: str, path: str, line: int) -> Any:
    if kind is ColumnType.TEXT:
        return value
    if not value.strip():
        return None
    value = value.strip()
    try:
        if kind is ColumnType.INT:
            return int(value)
        if kind is ColumnType.FLOAT:
            return float(value)
        if kind is ColumnType.BOOL:
            if value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            raise ValueError(value)
        return json.loads(value)  # JSON
    except ValueError:
        raise LoadError(path, line, f"column {column!r} is {kind.value}, got {value!r}") from None


def _infer_columns(records: list[Record], key: str) -> dict[str, str]:
    """Column types for a new table from every upserted row: one type per column (``int`` with ``float`` is
    ``float``; anything else mixed, or a dict or list, is ``json``; a column only ever NULL is ``text``)."""
    seen: dict[str, set[ColumnType]] = {key: set()}
    for record in records:
        for column, value in record.row.items():
            kinds = seen.setdefault(column, set())
            if value is not None:
                kinds.add(ColumnType.of(value))
    result: dict[str, str] = {}
    for column, kinds in seen.items():
        if kinds == {ColumnType.INT, ColumnType.FLOAT}:
            kinds = {ColumnType.FLOAT}
        result[column] = (kinds.pop() if len(kinds) == 1 else ColumnType.TEXT if not kinds else ColumnType.JSON).value
    return result
