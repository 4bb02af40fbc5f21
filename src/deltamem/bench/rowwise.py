"""``deltamem bench rowwise``: a per-row view kept fresh by deltamem against a full recompute, in one run.

    deltamem bench rowwise --llm test --passages 200 --changes 100 --out results.json

Both sides see the same seeded stream of changes to 2Wiki passages (content edits, inserts, deletes, edits of a
column no prompt reads, re-inserts of deleted passages). After every change deltamem maintains its view
incrementally; the baseline rebuilds the view from scratch in a fresh database (no memo, no stored state), as a
system without incremental maintenance would. Reported: calls, tokens and wall seconds of each side, their ratios,
and whether the final views agree row for row.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import deltamem as dm
from deltamem.bench.datasets import load_passages
from deltamem.demo import FILTER, MAP
from deltamem.llm import lazy_llm

COLUMNS = {"id": "text", "title": "text", "text": "text", "source": "text"}


@dataclass(frozen=True)
class SideResult:
    calls: int
    prompt_tokens: int
    output_tokens: int
    seconds: float  # wall time of all refreshes


@dataclass(frozen=True)
class RowwiseResult:
    passages: int
    changes: int
    llm: str
    incremental: SideResult
    full_recompute: SideResult
    views_agree: bool

    def ratios(self) -> dict[str, float]:
        ours, full = self.incremental, self.full_recompute
        return {
            "calls": full.calls / max(ours.calls, 1),
            "tokens": (full.prompt_tokens + full.output_tokens) / max(ours.prompt_tokens + ours.output_tokens, 1),
            "seconds": full.seconds / max(ours.seconds, 1e-9),
        }

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratios": self.ratios()}


def change_stream(rows: list[dict], spare: list[dict], num_changes: int, seed: int) -> list[tuple[str, dict]]:
    """A seeded mix: 40% content edits, 20% inserts, 15% deletes, 15% unread-column edits, 10% re-inserts."""
    rng = random.Random(seed)
    live = {r["id"]: r for r in rows}
    deleted: dict[str, dict] = {}
    spare = list(spare)
    stream: list[tuple[str, dict]] = []
    kinds = ["edit"] * 8 + ["insert"] * 4 + ["delete"] * 3 + ["retag"] * 3 + ["reinsert"] * 2
    while len(stream) < num_changes:
        kind = rng.choice(kinds)
        if kind == "insert" and spare:
            row = spare.pop()
        elif kind == "reinsert" and deleted:
            row = deleted.pop(rng.choice(sorted(deleted)))
        elif kind == "delete" and len(live) > 1:
            row = live.pop(rng.choice(sorted(live)))
            deleted[row["id"]] = row
            stream.append(("delete", row))
            continue
        elif kind == "retag" and live:
            old = live[rng.choice(sorted(live))]
            row = {**old, "source": f"rev-{len(stream)}"}
        elif live:
            old = live[rng.choice(sorted(live))]
            row = {**old, "text": f"{old['text']} Revision {len(stream)}."}
            kind = "edit"
        else:
            continue
        live[row["id"]] = row
        stream.append((kind, row))
    return stream


def _view(db: dm.Database) -> dm.View:
    table = db.table("passages", key="id", columns=COLUMNS)
    return db.view("people", table.sem_filter(FILTER).sem_map(MAP, out="known_for", max_tokens=24))


def run_rowwise_bench(*, data_file: Path, llm: str, num_passages: int, num_changes: int, seed: int = 0,
                      progress=None) -> RowwiseResult:
    rows = [{**r, "source": "2wiki"} for r in load_passages(data_file, limit=num_passages + num_changes)]
    initial, spare = rows[:num_passages], rows[num_passages:]
    stream = change_stream(initial, spare, num_changes, seed)
    backend = lazy_llm(llm).get()  # one loaded model for both sides

    with tempfile.TemporaryDirectory() as folder:
        ours = dm.connect(str(Path(folder) / "bench.db"), llm=backend, embedder="test", background=False)
        ours.table("passages", key="id", columns=COLUMNS).upsert(initial)
        view = _view(ours)
        started = time.perf_counter()
        view.rows(fresh=True)
        for i, (kind, row) in enumerate(stream):
            table = ours.table("passages")
            table.delete(row["id"]) if kind == "delete" else table.upsert(row)
            view.rows(fresh=True)
            if progress:
                progress("incremental", i + 1, len(stream))
        ours_seconds = time.perf_counter() - started
        usage = ours.usage()
        ours_rows = view.rows().rows
        ours.close()

    full_calls = full_prompt = full_output = 0
    full_seconds = 0.0
    current = {r["id"]: r for r in initial}
    final_rows: list[dict] = []
    for i in range(len(stream) + 1):
        if i:
            kind, row = stream[i - 1]
            current.pop(row["id"]) if kind == "delete" else current.__setitem__(row["id"], row)
        started = time.perf_counter()
        scratch = dm.connect(":memory:", llm=backend, embedder="test", background=False)
        scratch.table("passages", key="id", columns=COLUMNS).upsert(list(current.values()))
        final_rows = _view(scratch).rows(fresh=True).rows
        full_seconds += time.perf_counter() - started
        spent = scratch.usage()
        full_calls += spent.calls  # identical calls within one rebuild are paid once: generous to the baseline
        full_prompt += spent.prompt_tokens
        full_output += spent.output_tokens
        scratch.close()
        if progress:
            progress("full recompute", i + 1, len(stream) + 1)

    return RowwiseResult(
        passages=num_passages, changes=len(stream), llm=backend.model_id,
        incremental=SideResult(usage.calls, usage.prompt_tokens, usage.output_tokens, ours_seconds),
        full_recompute=SideResult(full_calls, full_prompt, full_output, full_seconds),
        views_agree=ours_rows == final_rows,
    )
