"""What the server's read routes answer, as pydantic models (they are the OpenAPI schemas), and how each is read.

    reads.read_view(db, "answers", as_of=None)   # ViewRead(view='answers', version=12, lag_versions=0, rows=[...])

Each function takes the ``Database`` and returns one model; none keeps state between requests.
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from deltamem.changes import ERROR_COLUMN
from deltamem.errors import FreshnessTimeout, NoRow
from deltamem.sql.catalog import Catalog
from deltamem.sql.dialect import parse
from deltamem.sql.executor import bounded_reads, execute, view_columns

if TYPE_CHECKING:
    from deltamem.engine import Database


class TableInfo(BaseModel):
    name: str
    key: str
    columns: dict[str, str] | None = Field(description="Column types; null until the first row fixes them.")
    ttl_seconds: float | None
    rows: int


class ViewInfo(BaseModel):
    name: str
    definition: str = Field(description="The view's operator chain, as `deltamem rows` and EXPLAIN VIEW show it.")
    columns: list[str]
    version: int | None = Field(description="The version the view reflects; null before its first build.")
    latest_version: int
    lag_versions: int
    lag_seconds: float
    rows: int
    error_rows: int
    calls: int = Field(description="LLM calls deltamem paid for this view.")
    full_recompute_calls: int = Field(description="LLM calls a full recompute at every refresh would have paid "
                                                  "in this engine, its memo answering identical calls.")
    refreshes: int


class ViewRead(BaseModel):
    view: str
    columns: list[str]
    rows: list[dict[str, Any]]
    keys: list[str | int] = Field(description="Each row's key, in the order of `rows`: the key a subscription's "
                                              "change rows carry and `/views/{view}/rows/{key}/explain` takes.")
    version: int = Field(description="The version these rows reflect (as_of, when given).")
    latest_version: int
    lag_versions: int = Field(description="Committed versions the view does not reflect yet.")
    lag_seconds: float = Field(description="Seconds since the oldest commit the view does not reflect yet.")


class SQLRequest(BaseModel):
    sql: str = Field(min_length=1, max_length=100_000, description="Exactly one statement.")
    params: list[Any] | dict[str, Any] | None = Field(
        None, description="Values bound to ?, $1 or :name placeholders; never spliced into the text.")


class SQLResult(BaseModel):
    status: str = Field(description="The status line, e.g. 'INSERT 1' or 'SELECT 3'.")
    columns: list[str]
    rows: list[list[Any]]
    version: int | None = Field(description="The commit a write made, or the version a read reflects.")


class Totals(BaseModel):
    calls: int
    prompt_tokens: int
    reused_tokens: int
    output_tokens: int
    seconds: float
    memo_hits: int
    failures: int


class ViewUsage(BaseModel):
    view: str
    paid: Totals
    refreshes: int
    full_recompute_calls: int
    full_recompute_tokens: int
    full_recompute_seconds: float
    calls_saved: float = Field(description="1 - calls paid / full-recompute calls; 0 before the first refresh.")


class UsageReport(BaseModel):
    total: Totals
    full_recompute_calls: int
    views: list[ViewUsage]


class CostPoint(BaseModel):
    version: int
    committed_at: float | None
    paid_calls: int = Field(description="Cumulative LLM calls deltamem paid through this version.")
    full_calls: int = Field(description="Cumulative calls a full recompute at every refresh would have paid.")
    paid_tokens: int
    full_tokens: int
    paid_seconds: float
    full_seconds: float


class TableChanges(BaseModel):
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    expired: int = 0


class CommitInfo(BaseModel):
    version: int
    committed_at: float | None
    tables: dict[str, TableChanges]


def parse_key(text: str) -> str | int:
    """A key from a URL: JSON when it parses to a string or an integer (``7``, ``"q1"``), else the text itself."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, (str, int)) and not isinstance(value, bool) else text


def tables(db: "Database") -> list[TableInfo]:
    found = []
    for name in Catalog(db).tables():  # internal tables left out
        definition = db._table_def(name)
        columns = None if definition.columns is None else {c: t.value for c, t in definition.columns.items()}
        found.append(TableInfo(name=name, key=definition.key, columns=columns, ttl_seconds=definition.ttl,
                               rows=len(db.store.get_rows(name))))
    return found


def views(db: "Database") -> list[ViewInfo]:
    usage = db.usage()
    found = []
    latest = db.version
    for name in db.views():
        view = db.view(name)
        rows, failed = db.store.count_view_rows(name)
        lag, lag_seconds = db.lag(name)
        full = usage.full_recompute.get(name)
        paid = usage.by_view.get(name)
        found.append(ViewInfo(
            name=name, definition=view.definition.describe(),
            columns=[*view.columns, *([ERROR_COLUMN] if failed else [])],
            version=view.version, latest_version=latest, lag_versions=lag, lag_seconds=lag_seconds,
            rows=rows, error_rows=failed,
            calls=paid.calls if paid else 0, full_recompute_calls=full.cost.calls if full else 0,
            refreshes=full.refreshes if full else 0,
        ))
    return found


def read_view(db: "Database", name: str, as_of: int | None) -> ViewRead:
    view = db.view(name)
    read = view.rows(as_of=as_of)  # rows and keys of one snapshot, at exactly `read.version`
    return ViewRead(view=name, columns=view_columns(view.columns, read.rows), rows=read.rows,
                    keys=list(read.keys), version=read.version, latest_version=db.version,
                    lag_versions=read.lag, lag_seconds=read.lag_seconds)


def run_sql(db: "Database", request: SQLRequest, read_timeout: float | None) -> SQLResult:
    """Run ``request``'s one statement; a read of a view waits at most ``read_timeout`` seconds for the latest
    commit, so that a backlog of maintenance cannot hold the server's threads (``FreshnessTimeout`` then)."""
    from deltamem.sql.errors import NotSupported

    statements = parse(request.sql)
    if len(statements) != 1:
        raise NotSupported(f"POST /sql runs exactly one statement; got {len(statements)}. Send them one at a time")
    try:
        with bounded_reads(read_timeout):
            # read_files=False: COPY would read any file the server can; an HTTP client posts rows to /tables instead.
            result = execute(db, request.sql, request.params, read_files=False)
    except FreshnessTimeout as exc:
        raise FreshnessTimeout(f"{exc}. GET /views/{exc.view} answers its rows at once, with their version and lag",
                               exc.view) from exc
    rows = json.loads(json.dumps([list(row) for row in result.rows], default=str))
    return SQLResult(status=result.status, columns=result.columns, rows=rows, version=result.version)


def heatmap_png(db: "Database", view: str, key: str | int) -> bytes:
    import numpy as np

    from deltamem.memory.attribution import render_heatmap

    report = db.view(view).explain(key)
    found = [d["attribution"] for d in report["dependencies"].values() if d.get("attribution")]
    if not found:
        raise NoRow(f'View "{view}" key {key!r} has no attention attribution: it needs an LLM_GENERATE answer made by '
                    "a backend with attention (the local model)")
    attribution = found[0]
    buffer = io.BytesIO()
    render_heatmap(np.asarray(attribution["matrix"]), attribution["output_sentences"], attribution["context"],
                   buffer, title=f"{view} · {key}")
    return buffer.getvalue()


def _totals(totals: Any) -> Totals:
    return Totals(calls=totals.calls, prompt_tokens=totals.prompt_tokens, reused_tokens=totals.reused_tokens,
                  output_tokens=totals.output_tokens, seconds=totals.seconds, memo_hits=totals.memo_hits,
                  failures=totals.failures)


def usage(db: "Database") -> UsageReport:
    from deltamem.llm.ledger import CostTotals

    report = db.usage()
    per_view = []
    for name in sorted(set(report.by_view) | set(report.full_recompute)):
        paid = report.by_view.get(name, CostTotals())
        full = report.full_recompute.get(name)
        full_calls = full.cost.calls if full else 0
        per_view.append(ViewUsage(
            view=name, paid=_totals(paid), refreshes=full.refreshes if full else 0, full_recompute_calls=full_calls,
            full_recompute_tokens=full.cost.prompt_tokens + full.cost.output_tokens if full else 0,
            full_recompute_seconds=full.cost.seconds if full else 0.0,
            calls_saved=1 - paid.calls / full_calls if full_calls else 0.0,
        ))
    return UsageReport(total=_totals(report), full_recompute_calls=report.full_recompute_calls, views=per_view)


def cost_history(db: "Database", max_points: int = 400) -> list[CostPoint]:
    """Cumulative costs after each version that paid or would have paid something; at most ``max_points`` evenly
    spaced ones (always the last), so a long history stays one small response."""
    points: list[CostPoint] = []
    paid_calls = full_calls = paid_tokens = full_tokens = 0
    paid_seconds = full_seconds = 0.0
    for version, paid, full in db.store.get_costs_by_version():
        paid_calls += paid.calls
        full_calls += full.calls
        paid_tokens += paid.prompt_tokens + paid.output_tokens
        full_tokens += full.prompt_tokens + full.output_tokens
        paid_seconds += paid.seconds
        full_seconds += full.seconds
        points.append(CostPoint(version=version, committed_at=None, paid_calls=paid_calls, full_calls=full_calls,
                                paid_tokens=paid_tokens, full_tokens=full_tokens, paid_seconds=paid_seconds,
                                full_seconds=full_seconds))
    step = max(1, -(-len(points) // max_points))  # ceiling division; 1 for an empty history
    kept = points[::-1][::step][::-1]  # counted from the last point, so the last is always kept
    times = db.store.get_commit_times(kept[0].version, kept[-1].version) if kept else {}
    for point in kept:
        point.committed_at = times.get(point.version)
    return kept


def commit_log(db: "Database", limit: int) -> list[CommitInfo]:
    latest = db.version
    first = max(1, latest - limit + 1)
    by_version: dict[int, dict[str, TableChanges]] = {v: {} for v in range(first, latest + 1)}
    for change in db.store.get_changes(first, latest, Catalog(db).tables()):  # internal tables left out
        counts = by_version[change.version].setdefault(change.table, TableChanges())
        field = {"insert": "inserted", "update": "updated", "delete": "deleted", "expire": "expired"}[change.kind]
        setattr(counts, field, getattr(counts, field) + 1)
    times = db.store.get_commit_times(first, latest)
    return [CommitInfo(version=v, committed_at=times.get(v), tables=by_version[v])
            for v in sorted(by_version, reverse=True)]
