"""The DATA_SOURCE side of ``LLM_GENERATE``: documents split into sentence chunks, kept per document in the store.

    docs, changes = DocumentChunks("3:llm_generate/docs", Template("{text}"), partition=None, embed=embed).apply(
        deltas, stored, ctx)

Each document's chunks (and their vectors, with retrieval) are stored under the operator's ``/docs`` op id,
fingerprinted by the document's text. ``apply`` folds one version's DATA_SOURCE deltas into that state and reports,
per partition, every chunk now present and exactly which chunks an edit removed and added: a sentence that an edit
left as it was, at the same position, is not a change.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deltamem.changes import Delta, Row, RowKey, key_order
from deltamem.memory.strategies import ChunkChanges
from deltamem.operators.base import OperatorContext
from deltamem.operators.template import Template
from deltamem.store.base import StateEntry
from deltamem.store.state_vectors import Vector

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of a document, in order (a text with no sentence end is one chunk).

    >>> split_sentences("Ada was born in 1815. She wrote notes! Did she? yes.")
    ['Ada was born in 1815.', 'She wrote notes!', 'Did she? yes.']
    """
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def whole(text: str) -> list[str]:
    """A document as one chunk (none when it is blank)."""
    return [text.strip()] if text.strip() else []


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Chunk:
    """One sentence of one document. ``ident`` names it by document, position and text, so an edit is a new chunk."""

    doc: RowKey
    position: int
    text: str

    @property
    def ident(self) -> tuple[str, int, str]:
        return (self.doc, self.position, text_hash(self.text))

    @property
    def prompt_order(self) -> tuple:
        """Chunks appear in prompts in document key order, then sentence order."""
        return (key_order(self.doc), self.position)


@dataclass
class Documents:
    """Every DATA_SOURCE chunk of one partition at one version, and the vector of each (with retrieval)."""

    chunks: list[Chunk]
    vectors: dict[tuple[str, int, str], np.ndarray]


class DocumentChunks:
    """Chunk state for one ``LLM_GENERATE`` operator. ``embed`` turns texts into vectors, or returns None when the
    operator does not retrieve."""

    def __init__(self, docs_op: str, document: Template, partition: str | None,
                 embed: Callable[[list[str], OperatorContext], np.ndarray | None],
                 split: Callable[[str], list[str]] = split_sentences):
        self.docs_op = docs_op
        self.document = document
        self.partition = partition
        self.embed = embed
        self.split = split  # a document's chunks: its sentences, or (graph retrieval) the whole passage

    def part_of(self, row: Row) -> str:
        """The partition an output or a document belongs to (all in one when there is no ``partition``)."""
        return "" if self.partition is None else json.dumps(row.get(self.partition))

    def apply(self, deltas: list[Delta], stored: dict[RowKey, StateEntry], ctx: OperatorContext
              ) -> tuple[dict[str, Documents], dict[str, ChunkChanges]]:
        """Apply this version's DATA_SOURCE deltas to the chunk state (``stored``, by document key); return, by
        partition, all documents' chunks in prompt order and what changed."""
        removed: dict[str, dict[tuple, str]] = defaultdict(dict)
        added: dict[str, dict[tuple, str]] = defaultdict(dict)
        added_vectors: dict[str, dict[tuple, np.ndarray]] = defaultdict(dict)
        new_texts: list[tuple[RowKey, str, list[str]]] = []
        for delta in deltas:
            old = stored.pop(delta.key, None)
            if old is not None:
                removed[old.value["part"]].update({tuple(c["ident"]): c["text"] for c in old.value["chunks"]})
                ctx.delete_state(self.docs_op, delta.key)
            if delta.after is not None and not delta.forget:
                sentences = self.split(self.document.render(delta.after))
                new_texts.append((delta.key, self.part_of(delta.after), sentences))
        vectors = self.embed([s for _key, _part, sentences in new_texts for s in sentences], ctx)
        position = 0
        for key, part, sentences in new_texts:
            chunks = []
            for i, text in enumerate(sentences):
                chunk = Chunk(key, i, text)
                vec = None if vectors is None else vectors[position]
                position += 1
                chunks.append({"ident": list(chunk.ident), "text": text, "vec": None if vec is None else Vector(vec)})
                if chunk.ident in removed[part]:
                    del removed[part][chunk.ident]
                else:
                    added[part][chunk.ident] = text
                    if vec is not None:
                        added_vectors[part][chunk.ident] = vec
            entry = StateEntry(key, text_hash(" ".join(sentences)), {},
                               {"part": part, "version": ctx.version, "chunks": chunks})
            ctx.put_state(self.docs_op, entry)
            stored[key] = entry
        docs: dict[str, Documents] = defaultdict(lambda: Documents([], {}))
        for key in sorted(stored, key=key_order):
            entry = stored[key]
            part_docs = docs[entry.value["part"]]
            for c in entry.value["chunks"]:
                chunk = Chunk(key, c["ident"][1], c["text"])
                part_docs.chunks.append(chunk)
                if c["vec"] is not None:
                    part_docs.vectors[chunk.ident] = np.asarray(c["vec"])
        changes = {part: ChunkChanges(removed[part], added[part], added_vectors[part])
                   for part in set(removed) | set(added)}
        return dict(docs), {part: c for part, c in changes.items() if c}
