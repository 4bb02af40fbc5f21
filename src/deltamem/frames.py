"""pandas in and out: ``table.upsert(df)`` and ``view.to_pandas()``. pandas is optional (``deltamem[pandas]``).

    papers.upsert(pd.DataFrame({"id": [1, 2], "year": [2021, None]}))   # year NaN -> NULL
    view.to_pandas()          # the rows it reflects now, one column per view column
    view.to_pandas(version=3)  # as of version 3

A DataFrame marks a missing value with NaN (or ``None``, ``pd.NA``, ``NaT``), so a DataFrame's missing values are
stored as NULL; a NaN in a plain dict row is still refused, since there NaN is a value that JSON cannot hold. NumPy
scalars (``np.int64``, ``np.float32``, ``np.bool_``) become the Python value they hold, in any row, and a
``datetime`` cell of a DataFrame (a ``pd.Timestamp``) its ISO-8601 text, as a ``TIMESTAMP`` column holds it.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from deltamem.changes import ERROR_COLUMN, ColumnType, Row
from deltamem.errors import ConfigError

if TYPE_CHECKING:
    import pandas


def is_frame(value: Any) -> bool:
    """True for a pandas DataFrame, without importing pandas."""
    kind = type(value)
    return kind.__name__ == "DataFrame" and kind.__module__.startswith("pandas")


def plain(value: Any) -> Any:
    """``value`` with NumPy scalars made Python values (``np.int64(3)`` -> ``3``), inside lists and dicts too."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {name: plain(item) for name, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(plain(item) for item in value)  # a named tuple too: stored as a JSON array either way
    return value


def frame_rows(frame: "pandas.DataFrame", types: Mapping[str, ColumnType] | None = None) -> list[Row]:
    """One row per DataFrame row (its index is ignored): missing values as None, NumPy scalars as Python values,
    timestamps as ISO-8601 text, and a whole float in a column that ``types`` says is ``int`` as an int (pandas
    makes an int column with a missing value float64)."""
    ints = {name for name, kind in (types or {}).items() if kind is ColumnType.INT}
    names = list(frame.columns)
    for name in names:
        if not isinstance(name, str):
            raise ConfigError(f"DataFrame column {name!r} is a {type(name).__name__}; column names are strings")
    if len(set(names)) != len(names):
        raise ConfigError(f"The DataFrame names a column twice: {sorted({n for n in names if names.count(n) > 1})}")
    return [{name: _cell(value, name in ints) for name, value in zip(names, values, strict=True)}
            for values in frame.itertuples(index=False, name=None)]


def _cell(value: Any, integer: bool) -> Any:
    value = plain(value)
    if value is None or type(value).__name__ in ("NAType", "NaTType"):  # pd.NA, pd.NaT (a datetime, so first)
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return int(value) if integer and value.is_integer() else value
    if isinstance(value, dt.datetime):  # pd.Timestamp is one
        return value.isoformat()
    return value


def to_frame(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> "pandas.DataFrame":
    """A DataFrame of ``rows`` with ``columns`` in order, and ``_error`` last when a row carries one."""
    pd = import_pandas()
    names = [*columns, *([ERROR_COLUMN] if any(row.get(ERROR_COLUMN) is not None for row in rows) else [])]
    return pd.DataFrame([[row.get(name) for name in names] for row in rows], columns=names)


def import_pandas():
    try:
        import pandas
    except ImportError:
        raise ConfigError("pandas is not installed; install it with pip install 'deltamem[pandas]'") from None
    return pandas
