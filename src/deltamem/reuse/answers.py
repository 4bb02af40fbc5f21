"""Answer reuse inside one ``LLM_GENERATE`` view: which answered question a new one may take its answer from.

    match = AnswerReuse("1:llm_generate", max_error=0.02, check_share=0.1).candidates(answers, part_of).match(...)

An *answered* entry (a source) is one whose answer came from a call; a *reusing* entry holds ``reused_from`` (the
source's key) and the source's answer and provenance. Each answered entry keeps the vector of its rewritten question
(``reuse_vec``) and the checks made against it (``checks``: ``[similarity, agreed]`` pairs), both in the view's state,
so the thresholds survive restarts and are shared by every process that maintains the view.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from deltamem.changes import Row, RowKey, decode_key, key_order
from deltamem.operators.base import OperatorContext
from deltamem.reuse.agreement import answers_agree
from deltamem.reuse.policy import MIN_SIMILARITY, Check, ReusePolicy, ReuseVerdict
from deltamem.reuse.rewrite import QuestionRewriter
from deltamem.store.base import StateEntry
from deltamem.store.state_vectors import Vector


@dataclass(frozen=True)
class ReuseMatch:
    """The nearest answered entry of a new question and the decision about it."""

    source: RowKey
    verdict: ReuseVerdict
    checked: bool  # a reuse that is also answered by a real call, to train the thresholds

    @property
    def served(self) -> bool:
        """Whether the row is served the source's answer without a call."""
        return self.verdict.reuse and not self.checked


class AnswerReuse:
    """The reuse state machine of one view: rewriting, matching, deciding and recording checks.

    Invariant: only answered entries (no ``reused_from``, no error) of the same partition are candidates, so a reuse
    is never a reuse of a reuse, and its answer's provenance is exactly its source's.
    """

    def __init__(self, op_id: str, *, max_error: float, check_share: float,
                 rewriter: QuestionRewriter | None = None):
        self.op_id = op_id
        self.policy = ReusePolicy(max_error)
        self.check_share = check_share
        self.rewriter = rewriter or QuestionRewriter()

    def embed(self, ctx: OperatorContext, questions: Mapping[RowKey, str],
              known: Mapping[RowKey, StateEntry | None]) -> dict[RowKey, tuple[str, Vector]]:
        """Per key, its rewritten question and that text's vector (kept from ``known`` when the rewrite is the same,
        so a refresh that does not change the question embeds nothing)."""
        out: dict[RowKey, tuple[str, Vector]] = {}
        fresh: list[tuple[RowKey, str]] = []
        for key, question in questions.items():
            rewritten = self.rewriter.rewrite(question)
            old = known.get(key)
            if old is not None and old.value and old.value.get("rewritten") == rewritten and old.value.get("reuse_vec"):
                out[key] = (rewritten, old.value["reuse_vec"])
            else:
                fresh.append((key, rewritten))
        if fresh:
            vectors = ctx.embed_or_raise(self.op_id, [r for _k, r in fresh], ["update"] * len(fresh))
            for (key, rewritten), vec in zip(fresh, vectors):
                out[key] = (rewritten, Vector(vec))
        return out

    def candidates(self, answers: Mapping[RowKey, StateEntry], part_of) -> "ReuseCandidates":
        """The answered entries of ``answers``, indexed once for the matches of one refresh."""
        return ReuseCandidates(self, answers, part_of)

    @staticmethod
    def value_for(reuse_vec: tuple[str, Vector], old: StateEntry | None) -> dict:
        """What an answer keeps for reuse: its rewritten question, that text's vector, and the checks made against
        it while its question stays the same."""
        rewritten, vec = reuse_vec
        value = {"rewritten": rewritten, "reuse_vec": vec}
        if old is not None and old.value and old.value.get("rewritten") == rewritten and "reused_from" not in old.value:
            value["checks"] = old.value.get("checks", [])
        return value

    @staticmethod
    def reused_entry(key: RowKey, row: Row, fingerprint: str, value: dict, match: ReuseMatch,
                     source: StateEntry) -> tuple[StateEntry, str]:
        """The entry that serves ``source``'s answer and provenance to ``key``, and why."""
        taken = {name: source.value.get(name) for name in ("text", "chunks", "kth")}
        entry = StateEntry(key, fingerprint, row, {**value, **taken, "output_ids": [], "attribution": None,
                                                   "reused_from": match.source, "reuse": asdict(match.verdict)}, None)
        return entry, match.verdict.describe(repr(decode_key(match.source)))

    @staticmethod
    def observe(ctx: OperatorContext, matches: Mapping[RowKey, ReuseMatch], entries: Mapping[RowKey, StateEntry],
                candidates: Mapping[RowKey, StateEntry]) -> dict[RowKey, list[Check]]:
        """The checks this refresh's calls give, by source: a call made for a question whose nearest answered
        neighbour was not taken (or was taken, and checked) says whether taking it would have been right. Each
        such call's decision names the neighbour; a checked reuse is logged as ``check``."""
        checks: dict[RowKey, list[Check]] = {}
        for key, match in matches.items():
            entry = entries[key]
            if entry.error is not None:
                continue
            agreed = answers_agree(entry.value.get("text"), candidates[match.source].value.get("text"),
                                   entry.value.get("question"))
            checks.setdefault(match.source, []).append(Check(match.verdict.similarity, agreed))
            verdict = match.verdict.describe(repr(decode_key(match.source)))
            found = max(i for i, d in enumerate(ctx.commit.decisions) if d.key == key)
            decision = ctx.commit.decisions[found]
            if match.checked:
                reason = f"{verdict}; checked with a real call, which {'agrees' if agreed else 'disagrees'}"
                ctx.commit.decisions[found] = replace(decision, strategy="check", reason=reason,
                                                      evidence=match.verdict.similarity)
            else:
                ctx.commit.decisions[found] = replace(decision, reason=f"{decision.reason}; {verdict}")
        return checks


class ReuseCandidates:
    """The answered entries of one refresh by partition, as one matrix of question vectors each, and the view's
    pooled checks: what every match of the refresh compares with."""

    def __init__(self, reuse: AnswerReuse, answers: Mapping[RowKey, StateEntry], part_of):
        self.reuse = reuse
        self.answers = answers
        self.pooled = pooled_checks(answers.values())
        by_part: dict[str, list[RowKey]] = {}
        for key in sorted(answers, key=key_order):
            if is_answered(answers[key]):
                by_part.setdefault(part_of(answers[key].input_row), []).append(key)
        self.keys = by_part
        self.vectors = {part: np.stack([np.asarray(answers[k].value["reuse_vec"]) for k in keys])
                        for part, keys in by_part.items()}

    def match(self, ctx: OperatorContext, key: RowKey, rewritten: str, vec: Vector,
              part: str) -> ReuseMatch | None:
        """The decision about the nearest answered entry of ``key`` in ``part`` at ``MIN_SIMILARITY`` or more (the
        first in key order on a tie), or None."""
        keys = self.keys.get(part)
        if not keys:
            return None
        scores = self.vectors[part] @ np.asarray(vec, dtype=np.float32)
        best = int(np.argmax(scores))
        similarity = min(1.0, float(scores[best]))
        if similarity < MIN_SIMILARITY:
            return None
        source = keys[best]
        verdict = self.reuse.policy.decide(similarity, checks_of(self.answers[source]), self.pooled,
                                           _draw(ctx.view, key, rewritten, "reuse"))
        checked = verdict.reuse and _draw(ctx.view, key, rewritten, "check") < self.reuse.check_share
        return ReuseMatch(source, verdict, checked)


def is_answered(entry: StateEntry | None) -> bool:
    """Whether ``entry`` may be reused: answered by a call, without error, with its question's vector."""
    return (entry is not None and entry.error is None and bool(entry.value) and "reused_from" not in entry.value
            and bool(entry.value.get("reuse_vec")) and entry.value.get("text") is not None)


def checks_of(entry: StateEntry) -> list[Check]:
    return [Check(float(s), bool(a)) for s, a in (entry.value or {}).get("checks", ())]


def pooled_checks(entries) -> list[Check]:
    return [check for entry in entries if entry.value for check in checks_of(entry)]


def with_checks(entry: StateEntry, checks: Sequence[Check]) -> StateEntry:
    """``entry`` with ``checks`` added to the ones it has."""
    stored = [*entry.value.get("checks", ()), *([round(c.similarity, 4), c.agreed] for c in checks)]
    return StateEntry(entry.key, entry.fingerprint, entry.input_row, {**entry.value, "checks": stored}, entry.error,
                      entry.cost)


def _draw(view: str, key: RowKey, rewritten: str, purpose: str) -> float:
    """A deterministic number in [0, 1) per (view, key, question, purpose): the same decision on every replay."""
    digest = hashlib.sha256(f"{purpose}\x00{view}\x00{key}\x00{rewritten}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32
