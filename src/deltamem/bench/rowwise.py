"""``deltamem bench rowwise``: a per-row view kept fresh by deltamem against a full recompute, in one run.

    deltamem bench rowwise --llm test --passages 200 --changes 100 --out results.json

Both sides see the same seeded stream of changes to 2Wiki passages (content edits, inserts, deletes, edits of a
column no prompt reads, re-inserts of deleted passages). After every change deltamem maintains its view
incrementally; the baseline, in a second database of the same engine, drops the view and defines it again, so every
output is asked for again and the memo answers the calls it has seen before: what a full recompute really pays.
Reported: calls, tokens and wall seconds of each side, their ratios, whether the final views agree row for row, and
whether the baseline's calls match ``usage().full_recompute`` of deltamem's side (the ledger's counterfactual).
Beside them, labelled, what a full recompute without a memo would pay (every row at every change), as the ledger
counts it (``no_memo``); that side is counted, not run.
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
from deltamem.llm.ledger import CostTotals

COLUMNS = {"id": "text", "title": "text", "text": "text", "source": "text"}


@dataclass(frozen=True)
class SideResult:
    calls: int
    prompt_tokens: int
    output_tokens: int
    seconds: float | None  # wall time of all refreshes; None for a side that is counted, not run


@dataclass(frozen=True)
class RowwiseResult:
    passages: int
    changes: int
    llm: str
    incremental: SideResult
    full_recompute: SideResult  # the same engine, its memo answering identical calls: run
    full_recompute_no_memo: SideResult  # every row paid again at every change: counted by the ledger
    views_agree: bool
    ledger_agrees: bool  # usage().full_recompute of the incremental side == the calls the baseline paid

    def ratios(self) -> dict[str, float]:
        ours, full, no_memo = self.incremental, self.full_recompute, self.full_recompute_no_memo
        ours_tokens = max(ours.prompt_tokens + ours.output_tokens, 1)
        return {
            "calls": full.calls / max(ours.calls, 1),
            "tokens": (full.prompt_tokens + full.output_tokens) / ours_tokens,
            "seconds": (full.seconds or 0.0) / max(ours.seconds or 0.0, 1e-9),
            "calls_no_memo": no_memo.calls / max(ours.calls, 1),
            "tokens_no_memo": (no_memo.prompt_tokens + no_memo.output_tokens) / ours_tokens,
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

    full_seconds, full, final_rows = _full_recompute(backend, initial, stream, progress)
    ledger = usage.full_recompute["people"]
    paid = usage.by_view["people"]
    return RowwiseResult(
        passages=num_passages, changes=len(stream), llm=backend.model_id,
        incremental=SideResult(paid.calls, paid.prompt_tokens, paid.output_tokens, ours_seconds),
        full_recompute=SideResult(full.calls, full.prompt_tokens, full.output_tokens, full_seconds),
        full_recompute_no_memo=SideResult(ledger.no_memo.calls, ledger.no_memo.prompt_tokens,
                                          ledger.no_memo.output_tokens, None),
        views_agree=ours_rows == final_rows,
        ledger_agrees=ledger.cost.calls == full.calls,
    )


def _full_recompute(backend, initial: list[dict], stream: list[tuple[str, dict]],
                    progress) -> tuple[float, CostTotals, list[dict]]:
    """The baseline: after every change, drop the view and define it again over the table's rows, in one database,
    so the memo answers identical calls. Returns its wall seconds (the rebuilds), what it paid and its last rows.
    The database is in memory (no fsync per commit, unlike deltamem's file): generous to the baseline's time."""
    db = dm.connect(":memory:", llm=backend, embedder="test", background=False)
    table = db.table("passages", key="id", columns=COLUMNS)
    table.upsert(initial)
    seconds = 0.0
    rows: list[dict] = []
    for i in range(len(stream) + 1):
        if i:
            kind, row = stream[i - 1]
            table.delete(row["id"]) if kind == "delete" else table.upsert(row)
        started = time.perf_counter()
        if i:
            db.drop_view("people")
        rows = _view(db).rows(fresh=True).rows
        seconds += time.perf_counter() - started
        if progress:
            progress("full recompute", i + 1, len(stream) + 1)
    paid = db.usage().by_view["people"]  # every incarnation's calls, filed under the view's name
    db.close()
    return seconds, paid, rows
