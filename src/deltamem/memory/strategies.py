"""The evidence behind each refresh strategy of an ``LLM_GENERATE`` output, as pure functions.

    plan_patch("Alan studied at Cambridge.", {"Alan studied at Cambridge.": "Alan studied at Oxford."}, "Cambridge")

The operator (``deltamem.operators.generate``) applies them cheapest first: skip, patch, regenerate (or append),
full. Exact evidence (retrieval) can skip on its own; approximate evidence (a substitution the answer does not copy,
a substitution it does) is used by ``auto`` only while its shadow-checked agreement holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from deltamem.llm.base import CompletionRequest, Message
from deltamem.memory.provenance import copied_spans, key_spans, substitution

Ident = tuple[str, int, str]  # (document key, sentence position, text hash)


@dataclass(frozen=True)
class ChunkChanges:
    """What one version did to the DATA_SOURCE chunks: ``removed`` and ``added`` map idents to sentence text."""

    removed: Mapping[Ident, str]
    added: Mapping[Ident, str]
    added_vectors: Mapping[Ident, np.ndarray]

    def __bool__(self) -> bool:
        return bool(self.removed or self.added)

    def replacements(self, in_prompt: set[Ident]) -> dict[str, str] | None:
        """Old sentence -> new sentence for each sentence of the prompt that an edit rewrote in place; None when a
        prompt sentence was deleted outright."""
        added_at = {(doc, pos): text for (doc, pos, _h), text in self.added.items()}
        out = {}
        for ident in in_prompt & set(self.removed):
            new = added_at.get(ident[:2])
            if new is None:
                return None
            out[self.removed[ident]] = new
        return out


def retrieval_skip(in_prompt: set[Ident], kth: float | None, k: int, changes: ChunkChanges,
                   question_vec: np.ndarray | None) -> str | None:
    """Why an output with top-k retrieval provably keeps its prompt (its reason), or None when it may not."""
    if question_vec is None or in_prompt & set(changes.removed) or len(in_prompt) < k or kth is None:
        return None
    best = max((float(np.dot(question_vec, v)) for v in changes.added_vectors.values()), default=None)
    if best is not None and best >= kth:
        return None
    best_text = "no chunk was added" if best is None else f"the best new chunk scores {best:.3f}"
    return f"none of its {len(in_prompt)} retrieved chunks changed and {best_text} < its k-th {kth:.3f}"


def plan_patch(answer: str, replacements: Mapping[str, str]) -> tuple[str, str] | None:
    """The patched answer and the reason, when every rewritten sentence substitutes one key span the answer copies.

    >>> plan_patch("He studied at Cambridge.", {"Alan studied at Cambridge.": "Alan studied at Oxford."})
    ('He studied at Oxford.', "replaced 'Cambridge' by 'Oxford', which the answer copies")
    """
    if not replacements:
        return None
    patched, done = answer, []
    for old, new in replacements.items():
        swap = substitution(old, new)
        if swap is None or swap[0] not in copied_spans(old, answer):
            return None
        patched = patched.replace(swap[0], swap[1])
        done.append(f"replaced {swap[0]!r} by {swap[1]!r}")
    return patched, ", ".join(done) + ", which the answer copies"


def lexical_skip(answer: str, question: str, replacements: Mapping[str, str]) -> str | None:
    """Why the rewritten sentences look irrelevant: each substitutes a span that neither the question nor the answer
    mentions (approximate), or None."""
    if not replacements:
        return None
    reasons = []
    for old, new in replacements.items():
        swap = substitution(old, new)
        if swap is None:
            return None
        mentioned = key_spans(question) | key_spans(answer)
        if any(part in question or part in answer for part in swap) or swap[0] in mentioned:
            return None
        reasons.append(f"{swap[0]!r} -> {swap[1]!r}")
    return "the edit replaced " + ", ".join(reasons) + ", which neither the question nor the answer mentions"


def append_request(base: CompletionRequest, log: Sequence[tuple[str, str]], delta: str) -> CompletionRequest:
    """``LLM(C + LLM(C) + ΔC)``: the base prompt, each earlier (delta, answer) turn, then the new delta."""
    messages = list(base.messages)
    for turn_delta, turn_answer in log:
        messages += [Message("user", turn_delta), Message("assistant", turn_answer)]
    messages.append(Message("user", delta))
    return CompletionRequest(tuple(messages), base.max_tokens, base.temperature, base.stop)


def describe_delta(changes: ChunkChanges) -> str:
    """The change as a conversation turn: what was removed and what was added."""
    lines = ["The documents changed since your last answer."]
    if changes.removed:
        lines.append("Removed: " + " ".join(changes.removed.values()))
    if changes.added:
        lines.append("Added: " + " ".join(changes.added.values()))
    lines.append("Give the updated answer to the question, briefly.")
    return "\n".join(lines)


def is_shadowed(view: str, key: str, version: int, share: float) -> bool:
    """Whether this decision is shadow-checked: a deterministic ``share`` of (view, key, version) triples."""
    if share <= 0:
        return False
    digest = hashlib.sha256(f"{view}\x00{key}\x00{version}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < share
