"""``deltamem bench engine``: changes per second maintained end to end, from the writer's commit to the view's.

    deltamem bench engine --changes 2000 --batches 1,10,1000

One ``sem_map`` view over one table, on the test backend (its calls cost no model time, so what is measured is the
engine: the store, the runner's bookkeeping per call, the operators). For each batch size a fresh database receives
``changes`` new rows, ``batch`` per write (one version each), while the view is maintained in the background; the
clock runs from before the first write until the view has applied the last version. Reported per batch size:
changes/s and versions/s end to end, the writers' own rate (their commits alone), and the wall seconds.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import deltamem as dm
from deltamem.errors import ConfigError


def run_engine_bench(*, changes: int, batches: list[int], timeout: float = 600.0,
                     progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Every batch size on a fresh SQLite file; the result as a JSON-ready dict."""
    if changes < 1 or not batches or any(b < 1 for b in batches):
        raise ConfigError(f"changes ({changes}) and every batch size ({batches}) must be at least 1")
    runs = []
    with tempfile.TemporaryDirectory(prefix="deltamem-bench-engine-") as tmp:
        for batch in batches:
            runs.append(_run(str(Path(tmp) / f"batch-{batch}.db"), changes, batch, timeout, progress))
    return {"config": {"store": "sqlite", "llm": "test", "changes": changes, "batches": batches}, "runs": runs}


def _run(path: str, changes: int, batch: int, timeout: float, progress) -> dict[str, Any]:
    db = dm.connect(path, llm="test", embedder="test")
    try:
        docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
        view = db.view("gists", docs.sem_map("Sum up {text}", out="gist", max_tokens=8))
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
        return {"batch": batch, "versions": versions, "wall_seconds": round(wall, 3),
                "changes_per_second": round(changes / wall, 1), "versions_per_second": round(versions / wall, 1),
                "writer_changes_per_second": round(changes / written, 1)}
    finally:
        db.close()
