"""Shared test helpers: databases on the deterministic backend, and from-scratch recomputes to compare with."""

from __future__ import annotations

from collections.abc import Callable

import deltamem as dm
from deltamem.llm.runner import RetryPolicy

NO_WAIT = RetryPolicy(attempts=3, base_delay=0.0)


def scripted_db(path: str = ":memory:", **options) -> dm.Database:
    """A database on the test backend, maintained inline (no thread) unless ``background=True`` is passed."""
    options.setdefault("background", False)
    options.setdefault("retry", NO_WAIT)
    return dm.connect(path, llm=options.pop("llm", "test"), embedder="test", **options)


def recompute_from_scratch(
    tables: dict[str, tuple[str, dict[str, str], list[dict]]], build: Callable[[dm.Database], None]
) -> tuple[dict[str, list[dict]], dict[tuple[str, str, str], str]]:
    """Load ``tables`` (name -> key, columns, rows) into a fresh database, let ``build`` define the views there.

    Returns each view's rows and the calls the full recompute needed: ``{(view, operator, key): call hash}``.
    """
    db = scripted_db()
    for name, (key, columns, rows) in tables.items():
        table = db.table(name, key=key, columns=columns)
        if rows:
            table.upsert(rows)
    build(db)
    result = {name: db.view(name).rows(fresh=True).rows for name in db.views()}
    needed = {
        (view, op, key): fingerprint
        for view, op, key, fingerprint in db.store._query("SELECT view, op, key, fingerprint FROM op_state")
        if fingerprint != "passthrough"
    }
    db.close()
    return result, needed


def paid_hashes(db: dm.Database) -> list[str]:
    return [h for (h,) in db.store._query("SELECT call_hash FROM ledger WHERE outcome = 'paid'")]


def num_requested_calls(db: dm.Database) -> int:
    """Calls the operators asked for: paid, answered by the memo, or failed."""
    return db.store._query("SELECT COUNT(*) FROM ledger")[0][0]
