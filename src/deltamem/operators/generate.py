"""``LLM_GENERATE``: one standing answer per CONTEXT row, over the DATA_SOURCE rows, kept fresh as both change.

    answers = db.generate("answers", prompt="Answer using the documents.", context=questions, data_source=docs, retrieve=5)

Documents are split into sentences (chunks that keep their document key, position and a hash of their text). With
``retrieve="all"`` every document is in every prompt; with ``retrieve=k`` the k chunks most similar to the question
(cosine over the database's embedder) are, in document order. Each output records its provenance: the chunks that were
in its prompt and, with retrieval, the score of the k-th.

When DATA_SOURCE changes, each output gets one strategy, and the decision is logged with its reason and cost:

==========  ==========================================================================================================
skip        the change touches nothing the output depends on: none of its chunks changed, and no new chunk scores
            above its k-th (exact: the prompt is provably the same); also whenever the rebuilt prompt is identical
regenerate  on a backend with KV caches: reuse the prompt KV up to the first changed token and re-score the old answer
            as a draft in one pass; token for token what ``full`` gives, for greedy decoding
full        recompute from scratch
==========  ==========================================================================================================

``strategy="auto"`` (the default) skips what it can prove unaffected and regenerates the rest where the backend can,
else recomputes. ``strategy="skip"`` skips or recomputes; ``"regenerate"`` never skips on retrieval evidence;
``"full"`` asks for every output again at every change of DATA_SOURCE (the baseline; the memo still answers a call
identical to an earlier one). ``refresh="as_of_now"`` answers a
CONTEXT row once and never refreshes it for DATA_SOURCE changes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from deltamem.changes import ERROR_COLUMN, Delta, Row, RowKey, key_order
from deltamem.errors import SchemaError
from deltamem.llm.base import CompletionRequest, Message
from deltamem.llm.memo import call_hash
from deltamem.llm.runner import CallSpec
from deltamem.operators.base import MultiInputOperator, OperatorContext
from deltamem.operators.template import Template
from deltamem.store.base import Decision, StateEntry

STRATEGIES = ("auto", "skip", "regenerate", "full")
REFRESH_MODES = ("on_change", "as_of_now")
MAX_RETRIEVE = 1000
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of a document, in order (a text with no sentence end is one chunk).

    >>> split_sentences("Ada was born in 1815. She wrote notes! Did she? yes.")
    ['Ada was born in 1815.', 'She wrote notes!', 'Did she? yes.']
    """
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Chunk:
    """One sentence of one document. ``ident`` names it by document, position and text, so an edit is a new chunk."""

    doc: RowKey
    position: int
    text: str

    @property
    def ident(self) -> tuple[str, int, str]:
        return (self.doc, self.position, _text_hash(self.text))


@dataclass
class Documents:
    """Every DATA_SOURCE chunk at one version, and the vector of each (with retrieval)."""

    chunks: list[Chunk]
    vectors: dict[tuple[str, int, str], np.ndarray]


class GenerateOperator(MultiInputOperator):
    """The ``llm_generate`` operator.

    State, under two op ids: ``"<op_id>/docs"`` holds per document its chunks (and their vectors, with retrieval),
    fingerprinted by the document's text; ``"<op_id>"`` holds per CONTEXT key its answer ``{"text", "output_ids",
    "chunks", "kth", "question", "question_vec"}``, fingerprinted by the memo hash of the call that produced it.
    Invariant: an output entry exists exactly for the CONTEXT rows present, and its ``chunks`` are the idents of the
    chunks in the prompt of its last answer.
    """

    kind: ClassVar[str] = "llm_generate"

    def __init__(
        self,
        op_id: str,
        prompt: str,
        *,
        retrieve: int | str = "all",
        strategy: str = "auto",
        refresh: str = "on_change",
        question: str,
        document: str,
        out: str = "answer",
        max_tokens: int = 64,
    ):
        if not isinstance(prompt, str) or not prompt.strip():
            raise SchemaError("llm_generate needs a non-empty prompt")
        if retrieve != "all" and not (isinstance(retrieve, int) and not isinstance(retrieve, bool)
                                      and 1 <= retrieve <= MAX_RETRIEVE):
            raise SchemaError(f"retrieve={retrieve!r} is out of range; use 'all' or a number of chunks from 1 to "
                              f"{MAX_RETRIEVE}")
        if strategy not in STRATEGIES:
            raise SchemaError(f"Unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
        if refresh not in REFRESH_MODES:
            raise SchemaError(f"Unknown refresh {refresh!r}; use one of {', '.join(REFRESH_MODES)}")
        if not out.isidentifier():
            raise SchemaError(f"Output column name {out!r} is not an identifier")
        self.op_id = op_id
        self.docs_op = f"{op_id}/docs"
        self.prompt = prompt
        self.retrieve = retrieve
        self.strategy = strategy
        self.refresh = refresh
        self.question = Template(question)
        self.document = Template(document)
        self.out = out
        self.max_tokens = max_tokens

    def output_columns(self, input_columns: Sequence[str]) -> tuple[str, ...]:
        return (*[c for c in input_columns if c != self.out], self.out)

    # --- prompt -------------------------------------------------------------------------------------------------
    def build_request(self, question: str, chunks: Sequence[Chunk]) -> CompletionRequest:
        """Documents first (they change; the question does not), so an edit late in the documents keeps the most
        prompt KV reusable."""
        by_doc: dict[RowKey, list[str]] = {}
        for chunk in sorted(chunks, key=lambda c: (key_order(c.doc), c.position)):
            by_doc.setdefault(chunk.doc, []).append(chunk.text)
        documents = "\n".join(f"[{i}] {' '.join(texts)}" for i, texts in enumerate(by_doc.values(), start=1))
        user = f"Documents:\n{documents}\n\nQuestion: {question}\nAnswer briefly."
        return CompletionRequest((Message("system", self.prompt), Message("user", user)), self.max_tokens)

    # --- maintenance --------------------------------------------------------------------------------------------
    def apply_inputs(self, inputs: dict[str, list[Delta]], ctx: OperatorContext) -> list[Delta]:
        docs, removed, added = self._update_documents(inputs.get("data_source", []), ctx)
        stored = {key: e for (op, key), e in ctx.store.get_all_state(ctx.view).items() if op == self.op_id}
        work: dict[RowKey, tuple[Row, Row | None, StateEntry | None, str]] = {}  # key -> (row, old out, old, reason)
        out: list[Delta] = []
        for delta in inputs.get("context", []):
            old = stored.pop(delta.key, None)
            before_out = self._output_for(delta.before, old)
            if delta.forget or delta.after is None:
                if old is not None:
                    ctx.delete_state(self.op_id, delta.key)
                if delta.forget:
                    out.append(Delta(delta.key, None, None, forget=True))
                elif before_out is not None:
                    out.append(Delta(delta.key, before_out, None))
                    ctx.commit.decisions.append(Decision(ctx.view, delta.key, ctx.version, "retract",
                                                         "its CONTEXT row was deleted"))
                continue
            reason = "refresh" if ctx.building else "insert" if old is None else "update"
            work[delta.key] = (delta.after, before_out, old, reason)
        for key, entry in stored.items():  # outputs whose CONTEXT row did not change
            if entry.error is not None:
                work[key] = (entry.input_row, self._output_for(entry.input_row, entry), entry, "retry")
            elif (removed or added) and self.refresh == "on_change":
                work[key] = (entry.input_row, self._output_for(entry.input_row, entry), entry, "data")
        return out + self._refresh(work, docs, removed, added, ctx)

    def _refresh(self, work, docs, removed, added, ctx: OperatorContext) -> list[Delta]:
        """Decide a strategy per output, run the calls in one batch, and return the output deltas."""
        model = ctx.runner.backend.model_id
        calls: list[tuple[RowKey, Row, Row | None, dict, CallSpec, str, str]] = []
        out: list[Delta] = []
        question_vecs = self._embed_questions(work, ctx)
        for key in sorted(work, key=key_order):
            row, before_out, old, reason = work[key]
            question = self.question.render(row)
            if reason == "data":
                evidence = self._retrieval_evidence(old, removed, added, question_vecs.get(key))
                if evidence is not None and self.strategy in ("auto", "skip"):
                    ctx.commit.decisions.append(Decision(ctx.view, key, ctx.version, "skip", evidence))
                    continue
            chunks, kth = self._retrieve(docs, question_vecs.get(key))
            request = self.build_request(question, chunks)
            h = call_hash(model, request)
            identical = old is not None and old.fingerprint == h and old.error is None
            if identical and not (reason == "data" and self.strategy == "full"):
                if old.input_row != row:
                    ctx.put_state(self.op_id, StateEntry(key, h, row, old.value, None, old.cost))
                out.append(Delta(key, before_out, self._output_for(row, old)))
                if reason == "data":
                    ctx.commit.decisions.append(Decision(ctx.view, key, ctx.version, "skip",
                                                         "the rebuilt prompt is identical"))
                continue
            strategy, why, spec = self._strategy(ctx, key, request, old, reason)
            value = {"chunks": [list(c.ident) for c in chunks], "kth": kth, "question": question,
                     "question_vec": None if key not in question_vecs else question_vecs[key].tolist()}
            calls.append((key, row, before_out, value, spec, strategy, why))
        results = ctx.run_calls(self.op_id, [c[4] for c in calls])
        for (key, row, before_out, value, _spec, strategy, why), result in zip(calls, results, strict=True):
            completion = result.completion
            if completion is None:
                entry = StateEntry(key, result.call_hash, row, value, result.error, result.cost)
            else:
                text = completion.text.strip()
                entry = StateEntry(key, result.call_hash, row,
                                   {**value, "text": text, "output_ids": list(completion.output_ids)}, None,
                                   result.cost)
            ctx.put_state(self.op_id, entry)
            c = completion
            ctx.commit.decisions.append(Decision(
                ctx.view, key, ctx.version, "memo" if result.memo_hit else strategy,
                "an identical call was answered before" if result.memo_hit else why,
                0 if result.memo_hit else 1,
                0 if c is None or result.memo_hit else c.prompt_tokens,
                0 if c is None or result.memo_hit else c.reused_tokens,
                0 if c is None or result.memo_hit else c.output_tokens,
                0.0 if c is None or result.memo_hit else c.seconds,
            ))
            out.append(Delta(key, before_out, self._output_for(row, entry)))
        return [d for d in out if d.forget or d.before != d.after]

    def _strategy(self, ctx: OperatorContext, key: RowKey, request: CompletionRequest, old: StateEntry | None,
                  reason: str) -> tuple[str, str, CallSpec]:
        spec_reason = "update" if reason == "data" else reason
        if old is None or old.error is not None or reason != "data":
            why = {"insert": "a new CONTEXT row", "refresh": "the view was built", "update": "its CONTEXT row changed",
                   "retry": "its last call failed"}[reason]
            return "full", why, CallSpec(request, spec_reason)
        why = "a chunk it depends on changed" if self.retrieve != "all" else "every document is in its prompt"
        if self.strategy == "full" or not ctx.runner.backend.capabilities.kv_cache:
            return "full", why, CallSpec(request, spec_reason)
        draft = tuple(old.value.get("output_ids") or ()) or None
        cache_key = f"{ctx.view}/{key}"
        return "regenerate", why + "; reusing its prompt KV and re-scoring its answer", \
            CallSpec(request, spec_reason, cache_key=cache_key, draft=draft)

    def _retrieval_evidence(self, old, removed, added, question_vec) -> str | None:
        """Why this output provably does not depend on the change, or None when it may."""
        if self.retrieve == "all":
            return None
        in_prompt = {tuple(ident) for ident in old.value["chunks"]}
        if in_prompt & removed:
            return None
        best = max((float(np.dot(question_vec, chunk_vec)) for chunk_vec in added.values()), default=None)
        if best is not None and (best >= old.value["kth"] or len(in_prompt) < self.retrieve):
            return None
        best_text = "no chunk was added" if best is None else f"the best new chunk scores {best:.3f}"
        return f"none of its {len(in_prompt)} retrieved chunks changed and {best_text} < its k-th {old.value['kth']:.3f}"

    def _retrieve(self, docs: "Documents", question_vec) -> tuple[list[Chunk], float | None]:
        """The chunks for one prompt, and the score of the k-th (ties broken by document order)."""
        if self.retrieve == "all" or question_vec is None:
            return docs.chunks, None
        scored = sorted(
            ((float(np.dot(question_vec, docs.vectors[chunk.ident])), chunk) for chunk in docs.chunks),
            key=lambda pair: (-pair[0], key_order(pair[1].doc), pair[1].position),
        )
        top = scored[: self.retrieve]
        return [chunk for _score, chunk in top], (top[-1][0] if top else None)

    # --- documents ----------------------------------------------------------------------------------------------
    def _update_documents(self, deltas: list[Delta], ctx: OperatorContext) -> tuple["Documents", set, dict]:
        """Apply this version's DATA_SOURCE deltas to the chunk state; return all documents' chunks, and the
        idents removed and the vectors of the chunks added by this version."""
        stored = {key: e for (op, key), e in ctx.store.get_all_state(ctx.view).items() if op == self.docs_op}
        removed: set[tuple] = set()
        added: dict[tuple, np.ndarray] = {}
        new_texts: list[tuple[RowKey, list[str]]] = []
        for delta in deltas:
            old = stored.pop(delta.key, None)
            if old is not None:
                removed |= {tuple(c["ident"]) for c in old.value["chunks"]}
                ctx.delete_state(self.docs_op, delta.key)
            if delta.after is not None and not delta.forget:
                new_texts.append((delta.key, split_sentences(self.document.render(delta.after))))
        vectors = self._embed([s for _key, sentences in new_texts for s in sentences], ctx)
        position = 0
        for key, sentences in new_texts:
            chunks = []
            for i, text in enumerate(sentences):
                chunk = Chunk(key, i, text)
                vec = None if vectors is None else vectors[position]
                position += 1
                chunks.append({"ident": list(chunk.ident), "text": text, "vec": None if vec is None else vec.tolist()})
                if chunk.ident in removed:
                    removed.discard(chunk.ident)  # the same sentence at the same place: not a change
                elif vec is not None or self.retrieve == "all":
                    added[chunk.ident] = vec
            entry = StateEntry(key, _text_hash(" ".join(sentences)), {}, {"chunks": chunks})
            ctx.put_state(self.docs_op, entry)
            stored[key] = entry
        docs = Documents([], {})
        for key, entry in stored.items():
            for c in entry.value["chunks"]:
                chunk = Chunk(key, c["ident"][1], c["text"])
                docs.chunks.append(chunk)
                if c["vec"] is not None:
                    docs.vectors[chunk.ident] = np.asarray(c["vec"], dtype=np.float32)
        return docs, removed, added

    def _embed(self, texts: list[str], ctx: OperatorContext) -> np.ndarray | None:
        if self.retrieve == "all" or not texts or ctx.embedder is None:
            return None
        return ctx.embedder.get().embed(texts)

    def _embed_questions(self, work, ctx: OperatorContext) -> dict[RowKey, np.ndarray]:
        if self.retrieve == "all":
            return {}
        vecs: dict[RowKey, np.ndarray] = {}
        fresh = []
        for key, (row, _before, old, _reason) in work.items():
            question = self.question.render(row)
            if old is not None and old.value.get("question") == question and old.value.get("question_vec"):
                vecs[key] = np.asarray(old.value["question_vec"], dtype=np.float32)
            else:
                fresh.append((key, question))
        embedded = self._embed([q for _k, q in fresh], ctx)
        for i, (key, _q) in enumerate(fresh):
            vecs[key] = embedded[i]
        return vecs

    def _output_for(self, row: Row | None, entry: StateEntry | None) -> Row | None:
        if row is None or entry is None:
            return None
        if entry.error is not None:
            return {**row, self.out: None, ERROR_COLUMN: entry.error}
        return {**row, self.out: entry.value.get("text")}

    def to_plan(self) -> dict[str, Any]:
        return {"op": self.kind, "prompt": self.prompt, "retrieve": self.retrieve, "strategy": self.strategy,
                "refresh": self.refresh, "question": self.question.text, "document": self.document.text,
                "out": self.out, "max_tokens": self.max_tokens}
