"""What ``deltamem bench workers`` asks its workers to maintain: many views, or one view in shards.

    load = ShardedAnswers(4); docs = load.create(writer); docs.upsert(load.change(0, 100))

``SemMapViews(n)``: one table and ``n`` ``sem_map`` views over it, each with its own instruction: a change costs one
call per view, and workers share the views. ``ShardedAnswers(n)``: one ``LLM_GENERATE`` view, one standing question
per partition over that partition's documents (``strategy="regenerate"``), in ``n`` shards: a document change costs
one call (its partition's answer), and workers share the shards of the one view (``deltamem.shards``).
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

import deltamem as dm
from deltamem.shards import shard_of, shard_view_names

PARTITIONS_PER_SHARD = 8


class Workload(Protocol):
    calls: int  # model calls per change

    def describe(self) -> str: ...

    def view_names(self) -> list[str]:
        """Every view the workers maintain, shard views included."""

    def light_names(self) -> list[str]:
        """Those that pay no calls (shared out apart: ``deltamem.leases``)."""

    def create(self, db: dm.Database) -> dm.Table:
        """Create the tables and views; return the table the stream writes."""

    def change(self, j: int, changes: int) -> dict:
        """The stream's ``j``-th row: inserts for the first 60% of ``changes``, then updates of those rows."""

    def equals_recompute(self, db: dm.Database) -> bool:
        """Whether every view of ``db`` equals a from-scratch build on a fresh database with the same final rows."""

    def speedup_bound(self, held: list[list[str]], changes: int) -> float:
        """The most calls/s these workers can pay, over what one pays, when each holds the views in ``held``: the
        whole stream's calls over those of the busiest worker."""


def _document(j: int, changes: int) -> dict:
    """The stream's ``j``-th document: new ones for the first 60% of ``changes``, then revisions of those."""
    rows = max(1, changes * 3 // 5)
    return {"id": j % rows, "text": f"document {j % rows}, revision {j // rows}"}


def _bound(loads: dict[str, int], held: list[list[str]]) -> float:
    busiest = max(sum(loads.get(view, 0) for view in views) for views in held)
    return sum(loads.values()) / busiest if busiest else 1.0


class SemMapViews:
    def __init__(self, views: int):
        self.views = views
        self.calls = views

    def describe(self) -> str:
        return f"{self.views} sem_map views"

    def view_names(self) -> list[str]:
        return [f"v{i}" for i in range(self.views)]

    def light_names(self) -> list[str]:
        return []

    def create(self, db: dm.Database) -> dm.Table:
        docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
        for i, view in enumerate(self.view_names()):
            db.view(view, docs.sem_map(f"View {i}: summarise {{text}}", out="s"))
        return docs

    def change(self, j: int, changes: int) -> dict:
        return _document(j, changes)

    def speedup_bound(self, held: list[list[str]], changes: int) -> float:
        return _bound(dict.fromkeys(self.view_names(), changes), held)

    def equals_recompute(self, db: dm.Database) -> bool:
        fresh = dm.connect(":memory:", llm="test", embedder="test", background=False)
        try:
            self.create(fresh).upsert(list(db.store.get_rows("docs").values()))
            fresh.maintain()
            return all(db.store.get_view_rows(n) == fresh.store.get_view_rows(n) for n in self.view_names())
        finally:
            fresh.close()


class ShardedAnswers:
    def __init__(self, shards: int, partitions: int | None = None):
        self.shards = shards
        self.partitions = partitions or shards * PARTITIONS_PER_SHARD
        self.calls = 1

    def describe(self) -> str:
        return (f"one LLM_GENERATE view in {self.shards} shards ({self.partitions} partitions, one question and its "
                "documents each)")

    def view_names(self) -> list[str]:
        return [*shard_view_names("answers", self.shards), "answers"]

    def light_names(self) -> list[str]:
        return ["answers"]

    def create(self, db: dm.Database, *, shards: int | None = None) -> dm.Table:
        questions = db.table("questions", key="qid", columns={"qid": "text", "question": "text", "part": "int"})
        docs = db.table("docs", key="id", columns={"id": "int", "part": "int", "text": "text"})
        if not questions.rows():
            questions.upsert([{"qid": f"q{p}", "question": f"What do the documents of part {p} say?", "part": p}
                              for p in range(self.partitions)])
        db.generate("answers", prompt="Answer from the documents.", context=questions, data_source=docs,
                    partition="part", strategy="regenerate", max_tokens=8,
                    shards=self.shards if shards is None else shards)
        return docs

    def change(self, j: int, changes: int) -> dict:
        document = _document(j, changes)
        return {**document, "part": document["id"] % self.partitions}

    def speedup_bound(self, held: list[list[str]], changes: int) -> float:
        """Partitions hash to shards unevenly (``deltamem.shards.shard_of``), so a shard may get more of the stream
        than its share: the bound counts each shard's changes."""
        names = shard_view_names("answers", self.shards)
        loads = Counter(names[shard_of(self.change(j, changes)["part"], self.shards)] for j in range(changes))
        return _bound(dict(loads), held)

    def equals_recompute(self, db: dm.Database) -> bool:
        """Against the view built from scratch in as many shards, and unsharded: a sharded view is the same view."""
        found = db.store.get_view_rows("answers")
        for shards in (self.shards, 1):
            fresh = dm.connect(":memory:", llm="test", embedder="test", background=False)
            try:
                fresh.table("questions", key="qid", columns={"qid": "text", "question": "text", "part": "int"}) \
                    .upsert(list(db.store.get_rows("questions").values()))
                self.create(fresh, shards=shards).upsert(list(db.store.get_rows("docs").values()))
                fresh.maintain()
                if fresh.store.get_view_rows("answers") != found:
                    return False
            finally:
                fresh.close()
        return True
