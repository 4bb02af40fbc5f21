"""``deltamem bench engine``: changes per second maintained end to end, from the writer's commit to the view's.

    deltamem bench engine --changes 2000 --batches 1,10,1000

One ``sem_map`` view over one table, on the test backend (its calls cost no model time, so what is measured is the
engine: the store, the runner's bookkeeping per call, the operators), in a SQLite file or a PostgreSQL database. For
each batch size a new table and view receive ``changes`` new rows, ``batch`` per write (one version each), while the
view is maintained in the background; the clock runs from before the first write until the view has applied the last
version. Reported per batch size:
changes/s and versions/s end to end, the writers' own rate (their commits alone), and the wall seconds.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import deltamem as dm
from deltamem.errors import ConfigError
from deltamem.store import is_postgres_dsn


def run_engine_bench(*, changes: int, batches: list[int], db: str | None = None, timeout: float = 600.0,
                     progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Every batch size on its own table and view of one database: ``db`` (a SQLite file or a ``postgresql://`` DSN),
    or a fresh SQLite file when None; the result as a JSON-ready dict."""
    if changes < 1 or not batches or any(b < 1 for b in batches):
        raise ConfigError(f"changes ({changes}) and every batch size ({batches}) must be at least 1")
    store = "postgresql" if db is not None and is_postgres_dsn(db) else "sqlite"
    with tempfile.TemporaryDirectory(prefix="deltamem-bench-engine-") as tmp:
        path = db or str(Path(tmp) / "bench.db")
        suffix = f"{os.getpid()}_{int(time.time())}"  # tables of an earlier run on the same database stay apart
        runs = [_run(path, f"{batch}_{suffix}", changes, batch, timeout, progress) for batch in batches]
    return {"config": {"store": store, "llm": "test", "changes": changes, "batches": batches}, "runs": runs}


def _run(path: str, name: str, changes: int, batch: int, timeout: float, progress) -> dict[str, Any]:
    db = dm.connect(path, llm="test", embedder="test")
    try:
        docs = db.table(f"docs_{name}", key="id", columns={"id": "int", "text": "text"})
        view = db.view(f"gists_{name}", docs.sem_map("Sum up {text}", out="gist", max_tokens=8))
        view.rows(fresh=True)
        start = time.perf_counter()
        for first in range(0, changes, batch):
            docs.upsert([{"id": i, "text": f"passage {i}"} for i in range(first, min(first + batch, changes))])
            if progress:
                progress(f"batch {batch}: writes", min(first + batch, changes), changes)
        written = time.perf_counter() - start
        read = view.rows(fresh=True, timeout=timeout)
        wall = time.perf_counter() - start
        if len(read) != changes:
            raise ConfigError(f"the view holds {len(read)} rows after {changes} inserts")  # a bug, not a timing
        versions = -(-changes // batch)
        return {"batch": batch, "versions": versions, "wall_seconds": round(wall, 6),
                "changes_per_second": round(changes / wall, 1), "versions_per_second": round(versions / wall, 1),
                "writer_changes_per_second": round(changes / written, 1)}
    finally:
        db.close()
