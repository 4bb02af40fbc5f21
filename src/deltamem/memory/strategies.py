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


def attention_share(attribution: Mapping | None, changed: set[Ident]) -> float | None:
    """The largest share of its attention any output sentence paid to the ``changed`` prompt sentences, or None when
    the answer has no attribution (``attribution["columns"]`` names the sentence of each matrix column).

    >>> attention_share({"columns": [["a", 0, "x"], ["a", 1, "y"], ["b", 0, "z"]], "matrix": [[0.7, 0.2, 0.1]]},
    ...                 {("b", 0, "z")})
    0.1
    """
    if not attribution or attribution.get("matrix") is None:
        return None
    matrix = attribution["matrix"]
    indices = [i for i, ident in enumerate(attribution["columns"]) if tuple(ident) in changed]
    return max((sum(row[i] for i in indices) for row in matrix), default=0.0)


def attended(attribution: Mapping | None, count: int) -> list[Ident]:
    """The ``count`` context sentences the answer paid most attention to (by their largest share in any output
    sentence, and more than none), most attended first.

    >>> attended({"columns": [["a", 0, "x"], ["a", 1, "y"]], "matrix": [[0.2, 0.8]]}, 1)
    [('a', 1, 'y')]
    """
    if not attribution or not attribution.get("matrix"):
        return []
    peak = [max(column) for column in zip(*attribution["matrix"])]
    order = sorted((i for i in range(len(peak)) if peak[i] > 0), key=lambda i: (-peak[i], i))[:count]
    return [tuple(attribution["columns"][i]) for i in order]


def attention_skip(share: float | None, threshold: float, changes: ChunkChanges, in_prompt: set[Ident],
                   question: str, answer: str, anchors: Sequence[str] = ()) -> str | None:
    """Why the change looks irrelevant to an answer that paid ``share`` of its attention to the changed sentences:
    below ``threshold``, and what the change rewrote, removed or added mentions no key term of the question, of the
    answer, or of the ``anchors`` (the sentences the answer attended to most: a change that names their entities may
    sit on the answer's chain of facts) (approximate). None when it may be relevant."""
    if share is None or share >= threshold:
        return None
    replacements = changes.replacements(in_prompt) or {}
    swapped = [span for old, new in replacements.items() for span in (substitution(old, new) or ())]
    touched = [changes.removed[i] for i in in_prompt & set(changes.removed)] + list(changes.added.values())
    terms = key_spans(question) | key_spans(answer) | {t for anchor in anchors for t in key_spans(anchor)}
    if any(span and (span in question or span in answer) for span in swapped) or any(
            term in text for term in terms for text in touched):
        return None
    return (f"its answer paid {share:.1%} of its attention to the changed sentences (< {threshold:.1%}), and the "
            "change touches no key term of the question, the answer or the sentences it attended to most")


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


@dataclass(frozen=True)
class ShadowCheck:
    """One shadow-checked approximate decision: its strategy, whether it agreed with the full recompute, and the
    attention share it rested on (None for evidence other than attention)."""

    strategy: str
    agrees: bool
    share: float | None = None


@dataclass(frozen=True)
class Calibration:
    """What shadow checks allow ``auto`` now: the approximate strategies it may no longer use, and the attention
    share below which it may skip."""

    disabled: frozenset[str]
    attention_threshold: float


def calibrate(checks: Sequence[ShadowCheck], *, default_threshold: float, min_checks: int,
              min_agreement: float) -> Calibration:
    """Thresholds from the shadow checks so far.

    A strategy is disabled once it has ``min_checks`` checks and their agreement is below ``min_agreement``. Skips
    that rested on attention are judged by share instead: the threshold is the largest value up to
    ``default_threshold`` at which the checked skips below it either are too few to judge or agree often enough, so
    disagreements at high shares pull it down and the skips that remain are the ones the evidence supports.

    >>> checks = [ShadowCheck("skip", ok, share) for ok, share in [(1, .01), (1, .02), (1, .02), (1, .03), (1, .03),
    ...                                                           (0, .04), (0, .045)]]
    >>> calibrate(checks, default_threshold=0.05, min_checks=5, min_agreement=0.9).attention_threshold
    0.04
    """
    by_strategy: dict[str, list[bool]] = {}
    for check in checks:
        if check.share is None:
            by_strategy.setdefault(check.strategy, []).append(check.agrees)
    disabled = {s for s, seen in by_strategy.items() if len(seen) >= min_checks and sum(seen) / len(seen) < min_agreement}
    shares = sorted((c.share, c.agrees) for c in checks if c.share is not None and c.strategy == "skip")
    threshold = default_threshold
    for candidate in sorted({default_threshold, *(s for s, _ok in shares if s < default_threshold)}, reverse=True):
        below = [ok for s, ok in shares if s < candidate]
        threshold = candidate
        if len(below) < min_checks or sum(below) / len(below) >= min_agreement:
            break  # the smallest candidate always stops here: no checked share lies below it
    return Calibration(frozenset(disabled), threshold)


def is_shadowed(view: str, key: str, version: int, share: float) -> bool:
    """Whether this decision is shadow-checked: a deterministic ``share`` of (view, key, version) triples."""
    if share <= 0:
        return False
    digest = hashlib.sha256(f"{view}\x00{key}\x00{version}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < share


def carry_attribution(attribution: Mapping | None, changes: ChunkChanges) -> dict | None:
    """``attribution`` with each column that names a sentence an edit rewrote in place renamed to the sentence that
    replaced it, so the attention the answer paid to a sentence still counts when that sentence is edited again.

    >>> changes = ChunkChanges({("a", 0, "x"): "Old."}, {("a", 0, "y"): "New."}, {})
    >>> carry_attribution({"columns": [["a", 0, "x"], ["b", 0, "z"]], "matrix": [[0.9, 0.1]]}, changes)["columns"]
    [['a', 0, 'y'], ['b', 0, 'z']]
    """
    if not attribution or not changes:
        return None if attribution is None else dict(attribution)
    added_at = {ident[:2]: ident for ident in changes.added}
    columns = [list(added_at.get((c[0], c[1]), c)) if tuple(c) in changes.removed else list(c)
               for c in attribution["columns"]]
    return {**attribution, "columns": columns}
