"""Table definitions and the rows they accept: what ``db.table(...)`` declares and what a write must satisfy.

    definition = make_table_def("papers", "id", {"id": "int", "title": "text"}, "30 days", None, "retract")
    row = check_row(definition, {"id": 1, "title": "Streams"}, position=0)

Every function here is pure: it reads its arguments, raises a ``SchemaError`` (or ``PrimaryKeyError``,
``ConfigError``) that names the table, row and column at fault, and stores nothing, so a write validated whole
before its commit changes nothing when one row is bad.
"""

from __future__ import annotations

from collections.abc import Mapping

from deltamem.changes import (
    ERROR_COLUMN,
    ColumnType,
    ExpireMode,
    Row,
    encode_key,
    json_problem,
    parse_duration,
    parse_timestamp,
)
from deltamem.errors import ConfigError, PrimaryKeyError, SchemaError, did_you_mean
from deltamem.store.base import TableDef


def make_table_def(name: str, key: str, columns: Mapping[str, str | ColumnType] | None, ttl: str | float | None,
                   ttl_column: str | None, expire: str) -> TableDef:
    """The definition of table ``name`` as ``db.table`` declares it; ``columns=None`` leaves them to the first row."""
    try:
        mode = ExpireMode(expire)
    except ValueError:
        raise ConfigError(f"Unknown expire mode {expire!r}." + did_you_mean(expire, [m.value for m in ExpireMode])) from None
    typed = None
    if columns is not None:
        typed = {}
        for column, kind in columns.items():
            try:
                typed[column] = ColumnType(kind)
            except ValueError:
                raise SchemaError(
                    f"Column {column!r} of table {name!r} has unknown type {kind!r}."
                    + did_you_mean(str(kind), [t.value for t in ColumnType])
                ) from None
        if key not in typed:
            raise SchemaError(f"Key column {key!r} is not among the columns of table {name!r}")
    for column in [key, ttl_column] + list(typed or []):
        if column == ERROR_COLUMN:
            raise SchemaError(f"Column name {ERROR_COLUMN!r} is reserved for errors")
    if ttl_column is not None and ttl is None:
        raise SchemaError(f"Table {name!r}: ttl_column={ttl_column!r} needs a ttl")
    if ttl_column is not None and typed is not None and ttl_column not in typed:
        raise SchemaError(f"TTL column {ttl_column!r} is not a column of {name!r}." + did_you_mean(ttl_column, typed))
    return TableDef(name, key, typed, None if ttl is None else parse_duration(ttl), ttl_column, mode)


def check_row(table: TableDef, row: Row, position: int) -> Row:
    """``row`` (the ``position``-th of its write) with every declared column, in declared order, once it is valid."""
    assert table.columns is not None, "engine: a row is checked against a table whose columns are known"
    where = f"Row {position} for table {table.name!r}"
    if row.get(table.key) is None:
        raise PrimaryKeyError(f"{where} has no value for its key column {table.key!r}")
    for column, value in row.items():
        if column not in table.columns:
            raise SchemaError(f"{where} has unknown column {column!r}." + did_you_mean(column, table.columns))
        kind = table.columns[column]
        if not kind.accepts(value):
            raise SchemaError(f"{where}: column {column!r} is {kind.value}, got {value!r} ({type(value).__name__})")
        problem = json_problem(value)
        if problem is not None:
            raise SchemaError(f"{where}: column {column!r} holds {problem}")
    encode_key(row[table.key])  # raises for a bad key type
    if table.ttl_column is not None:
        if row.get(table.ttl_column) is None:
            raise SchemaError(f"{where} has no value for its TTL column {table.ttl_column!r}")
        parse_timestamp(row[table.ttl_column], column=table.ttl_column)
    return {column: row.get(column) for column in table.columns}


def expires_at(table: TableDef, row: Row, now: float) -> float | None:
    """When a row written at ``now`` expires: ``ttl`` after the write, or after its ``ttl_column``; None without."""
    if table.ttl is None:
        return None
    start = now if table.ttl_column is None else parse_timestamp(row[table.ttl_column], column=table.ttl_column)
    return start + table.ttl
