"""``make demo``: views over real 2Wiki data kept fresh through streams of changes, with what each refresh cost.

    deltamem demo --llm local --passages 40 --questions 3

Part one loads 40 passages into a table with a 30-day TTL, defines a view that keeps the passages about a person and
says what each is known for, then applies about 30 changes (inserts, content edits, edits of a column the prompts do
not read, deletes, a re-insert, an expiry), waiting for the view after each. The clock is simulated so that the expiry
happens within the run. Part two (``deltamem.demo_rag``) keeps ``LLM_GENERATE`` answers to 2Wiki questions fresh
under edits of known relevance and shows the strategy each edit got. Both end with what deltamem paid beside what a
full recompute at every refresh would have paid.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

import deltamem as dm
from deltamem.bench.datasets import default_data_dir, load_passages
from deltamem.demo_rag import ratio, run_rag_demo
from deltamem.display import literal
from deltamem.llm import lazy_embedder, lazy_llm

DAY = 86400.0
FILTER = "The passage below describes the life of a person (born, died, worked as ...).\n\n{text}"
MAP = "In at most eight words, say what {title} is known for. Passage: {text}"


@dataclass(frozen=True)
class Step:
    """One change of the demo stream, described for the log."""

    label: str
    apply: Callable[[], Any]


def build_stream(db: dm.Database, clock: dm.ManualClock, initial: list[dict], extra: list[dict]) -> list[Step]:
    """About 30 changes of every kind, deterministic for given passages."""
    passages = db.table("passages")
    steps: list[Step] = []
    for row in extra[:10]:
        steps.append(Step(f"insert  {row['title']!r}", lambda row=row: passages.upsert(row)))
    for row in initial[3:11]:
        edited = {**row, "text": _edit(row["text"])}
        steps.append(Step(f"edit    {row['title']!r}", lambda edited=edited: passages.upsert(edited)))
    for row in initial[11:15]:
        retagged = {**row, "source": "2wiki-reviewed"}
        steps.append(Step(f"retag   {row['title']!r} (unread column)",
                          lambda retagged=retagged: passages.upsert(retagged)))
    for row in initial[15:20]:
        steps.append(Step(f"delete  {row['title']!r}", lambda key=row["id"]: passages.delete(key)))
    back = initial[15]
    steps.append(Step(f"restore {back['title']!r} (its old text)", lambda: passages.upsert(back)))

    def expire() -> int:
        clock.advance(6 * DAY)
        return db.expire()

    steps.append(Step("clock +6 days: TTL expiry of passages added 25 days ago", expire))
    return steps


def _edit(text: str) -> str:
    """A realistic correction: shift the first year by one, or else amend the first sentence."""
    match = re.search(r"\b(1[5-9]\d\d|20[0-2]\d)\b", text)
    if match:
        return text[: match.start()] + str(int(match.group()) + 1) + text[match.end() :]
    return text.replace(".", ", according to a revised source.", 1)


def run_demo(
    *, db_path: str, llm: str, embedder: str, num_passages: int, num_questions: int, data: Path | None,
    console: Console,
) -> dm.Database:
    data_file = (data or default_data_dir()) / "2wikimultihopqa" / "dev_000_099.json"
    rows = load_passages(data_file, limit=num_passages + 10)
    initial, extra = rows[:num_passages], rows[num_passages:]
    if len(initial) < 20:
        raise dm.DeltamemError(f"The demo needs at least 20 passages; got {len(initial)}")
    lazy_llm(llm), lazy_embedder(embedder)  # check both backends before the old database is removed
    Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(db_path + suffix).unlink(missing_ok=True)  # a fresh run: an old memo would answer every call

    clock = dm.ManualClock(start=time.time())
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    )
    calls_task = progress.add_task("model calls", total=None, visible=False)

    def on_calls(label: str, done: int, total: int) -> None:
        progress.update(calls_task, description=f"  calls {label}", completed=done, total=total, visible=done < total)

    console.print(literal("deltamem demo", style="bold")
                  + literal(f" · store {db_path} · llm={llm} · {len(initial)} passages from {data_file}"))
    db = dm.connect(db_path, llm=llm, embedder=embedder, clock=clock, progress=on_calls)
    console.print(f"loading the model ({llm}) ...")
    started = time.perf_counter()
    db.llm  # noqa: B018 (load now, so the first change is not charged for it)
    console.print(f"model {db.llm.model_id} ready in {time.perf_counter() - started:.1f} s")

    passages = db.table(
        "passages", key="id", ttl="30 days", ttl_column="added",
        columns={"id": "text", "title": "text", "text": "text", "source": "text", "added": "float"},
    )
    now = clock.now()
    initial = [{**row, "source": "2wiki", "added": now - (25 * DAY if i < 3 else 0.0)} for i, row in enumerate(initial)]
    passages.upsert(initial)
    people = db.view("people", passages.sem_filter(FILTER).sem_map(MAP, out="known_for", max_tokens=24))

    with progress:
        build = progress.add_task(f"building view 'people' over {len(initial)} passages", total=None)
        people.rows(fresh=True)
        progress.update(build, total=1, completed=1)
        steps = build_stream(db, clock, initial, [{**r, "source": "2wiki", "added": now} for r in extra])
        stream = progress.add_task("applying changes", total=len(steps))
        for step in steps:
            before = db.usage()
            t0 = time.perf_counter()
            step.apply()
            read = people.rows(fresh=True)
            after = db.usage()
            progress.console.print(literal(
                f"v{read.version:<3} {step.label[:58]:<58} {after.calls - before.calls} calls, "
                f"{after.memo_hits - before.memo_hits} memo, {time.perf_counter() - t0:4.1f} s, {len(read)} rows"
            ))
            progress.advance(stream)
    _report_people(db, people, console)
    if num_questions > 0:
        run_rag_demo(db, data_file, num_questions=num_questions, console=console,
                     heatmap=Path(db_path).parent / "heatmap.png")
    console.print(db.usage().rich_table())
    return db


def _report_people(db: dm.Database, people: dm.View, console: Console) -> None:
    read = people.rows(fresh=True)
    sample = RichTable(title=f"view 'people' at version {read.version}: {min(8, len(read))} of its {len(read)} rows")
    for column in ("title", "known_for"):
        sample.add_column(column, overflow="fold")
    for row in read.rows[:8]:
        known_for = row.get("known_for")
        sample.add_row(literal(row["title"]), literal(known_for) if known_for else literal(row.get("_error"), "red"))
    console.print(sample)
    all_views = db.usage()
    usage, full = all_views.by_view["people"], all_views.full_recompute["people"]
    paid_tokens = usage.prompt_tokens + usage.output_tokens
    full_tokens = full.cost.prompt_tokens + full.cost.output_tokens
    console.print(
        f"deltamem paid [bold]{usage.calls}[/] calls, {paid_tokens} tokens, {usage.seconds:.1f} s of model time "
        f"over {full.refreshes} refreshes; a full recompute at every refresh would have paid "
        f"[bold]{full.cost.calls}[/] calls, {full_tokens} tokens, {full.cost.seconds:.1f} s in the same engine, its "
        f"memo answering identical calls ({ratio(full.cost.calls, usage.calls)} the calls, "
        f"{ratio(full_tokens, paid_tokens)} the tokens), and {full.no_memo.calls} calls without a memo "
        f"({ratio(full.no_memo.calls, usage.calls)}). Memo hits: {all_views.memo_hits}."
    )

