"""Shared test helpers: databases on the deterministic backend, and from-scratch recomputes to compare with."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import deltamem as dm
from deltamem.llm.base import Attribution, BackendCapabilities
from deltamem.llm.embedding_runs import is_embedding_operator
from deltamem.llm.runner import RetryPolicy
from deltamem.llm.scripted import ScriptedLLM
from deltamem.operators.rowwise import PASSTHROUGH

NO_WAIT = RetryPolicy(attempts=3, base_delay=0.0)


def scripted_db(path: str = ":memory:", **options) -> dm.Database:
    """A database on the test backend, maintained inline (no thread) unless ``background=True`` is passed."""
    options.setdefault("background", False)
    options.setdefault("retry", NO_WAIT)
    return dm.connect(path, llm=options.pop("llm", "test"), embedder="test", **options)


def recompute_from_scratch(
    tables: dict[str, tuple[str, dict[str, str], list[dict]]], build: Callable[[dm.Database], None],
    llm: Any = "test",
) -> tuple[dict[str, list[dict]], dict[tuple[str, str, str], str]]:
    """Load ``tables`` (name -> key, columns, rows) into a fresh database on ``llm``, let ``build`` define the views
    there.

    Returns each view's rows and the calls the full recompute needed: ``{(view, operator, key): call hash}``.
    """
    db = scripted_db(llm=llm)
    for name, (key, columns, rows) in tables.items():
        table = db.table(name, key=key, columns=columns)
        if rows:
            table.upsert(rows)
    build(db)
    result = {name: db.view(name).rows(fresh=True).rows for name in db.views()}
    needed = {
        (view, op, key): entry.fingerprint
        for view in db.views()
        for (op, key), entry in db.store.get_all_state(view).items()
        if entry.fingerprint != PASSTHROUGH
    }
    db.close()
    return result, needed


def paid_hashes(db: dm.Database) -> list[str]:
    """The LLM calls paid (embeddings, also on the ledger, left out)."""
    return [entry.call_hash for entry in db.store.get_ledger()
            if entry.outcome == "paid" and not is_embedding_operator(entry.operator)]


def num_requested_calls(db: dm.Database, view: str | None = None) -> int:
    """LLM calls the operators (of ``view``, if given) asked for: paid, answered by the memo, or failed (embeddings,
    on the ledger too, left out)."""
    return sum(1 for entry in db.store.get_ledger(view) if not is_embedding_operator(entry.operator))


class ExtractiveLLM(ScriptedLLM):
    """A test double that answers like an extractive reader: with the document sentence sharing the most words with
    the question (so its answers copy spans verbatim, as real models often do)."""

    def answer(self, request):
        user = request.messages[-1].content
        if "Question:" not in user:
            return super().answer(request)
        documents, _, question = user.rpartition("Question:")
        words = set(re.findall(r"\w+", question.lower()))
        sentences = re.split(r"(?<=[.!?])\s+", re.sub(r"\[\d+\]", " ", documents.replace("Documents:", "")))
        return max(sentences, key=lambda s: (len(words & set(re.findall(r"\w+", s.lower()))), -len(s))).strip()


class AttendingLLM(ExtractiveLLM):
    """``ExtractiveLLM`` with attention, as a reader that looks only at what it copies: its one output sentence pays
    all its attention to the context sentences its answer contains (so the attention evidence is known exactly)."""

    capabilities = BackendCapabilities(attention=True)

    def complete(self, request, attribute_to=None):
        completion = super().complete(request)
        if attribute_to is None:
            return completion
        hits = [float(bool(s) and s in completion.text) for s in attribute_to]
        total = sum(hits) or 1.0
        attribution = Attribution((completion.text,), (tuple(h / total for h in hits),))
        return dataclasses.replace(completion, attribution=attribution)


def apply_doc_step(db: dm.Database, docs: dm.Table, step: tuple, clock: dm.ManualClock) -> bool:
    """Apply one generated step to a ``{"id", "text", "tag"}`` table: ``("upsert", id, text, tag)``,
    ``("delete", id)``, ``("batch", [(id, text, tag), ...])`` or ``("expire", days)``. False for any other step."""
    kind = step[0]
    if kind == "upsert":
        docs.upsert({"id": step[1], "text": step[2], "tag": step[3]})
    elif kind == "delete":
        docs.delete(step[1])
    elif kind == "batch":
        with db.batch():
            for key, text, tag in step[1]:
                docs.upsert({"id": key, "text": text, "tag": tag})
    elif kind == "expire":
        clock.advance(f"{step[1]} days")
        db.expire()
    else:
        return False
    return True


def doc_steps(keys, texts, *, batch_size: int = 3, max_days: int = 3):
    """A hypothesis strategy of the steps ``apply_doc_step`` applies, over ids from ``keys`` and texts from ``texts``."""
    from hypothesis import strategies as st

    tags = st.sampled_from(["x", "y"])
    return st.one_of(
        st.tuples(st.just("upsert"), keys, texts, tags),
        st.tuples(st.just("delete"), keys),
        st.tuples(st.just("batch"), st.lists(st.tuples(keys, texts, tags), min_size=1, max_size=batch_size)),
        st.tuples(st.just("expire"), st.integers(min_value=1, max_value=max_days)),
    )
