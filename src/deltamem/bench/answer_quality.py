"""Answers judged against a gold answer as QA benchmarks do, and a paired bootstrap interval for two systems.

    token_f1("The Eiffel Tower.", "eiffel tower")  # 1.0

Both metrics first normalise the way SQuAD's and HotpotQA's evaluation scripts do: lowercase, punctuation removed,
the articles a/an/the dropped, whitespace collapsed. ``contains_match`` asks whether the normalised gold occurs in
the normalised answer (a short model answer often wraps the gold in a few words); ``token_f1`` is the F1 of the
whitespace tokens, except that a yes/no/noanswer on either side must equal the other side exactly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from deltamem.reuse.agreement import normalize_answer

_CLOSED = ("yes", "no", "noanswer")  # answers whose tokens mean nothing apart: they match whole or not at all


def contains_match(answer: str, gold: str) -> bool:
    """Whether the normalised gold is a substring of the normalised answer.

    >>> contains_match("He was born in Paris, France.", "paris")
    True
    >>> contains_match("London", "Paris")
    False
    """
    return normalize_answer(gold) in normalize_answer(answer)


def token_f1(answer: str, gold: str) -> float:
    """The F1 of the normalised answer's and gold's whitespace tokens (HotpotQA's ``f1_score``).

    >>> token_f1("the Eiffel Tower", "Eiffel Tower in Paris")
    0.6666666666666666
    >>> token_f1("no", "No."), token_f1("yes", "yes it is"), token_f1("Paris", "London")
    (1.0, 0.0, 0.0)
    """
    answer, gold = normalize_answer(answer), normalize_answer(gold)
    if answer in _CLOSED or gold in _CLOSED:
        return float(answer == gold)
    common = sum((Counter(answer.split()) & Counter(gold.split())).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(answer.split()), common / len(gold.split())
    return 2 * precision * recall / (precision + recall)


def paired_bootstrap_ci(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, seed: int = 0, level: float = 0.95,
) -> tuple[float, float] | None:
    """The percentile bootstrap interval of ``mean(a) - mean(b)`` over paired items (None without items): items are
    resampled with replacement and each resample keeps an item's two scores together, so what both systems find
    hard or easy cancels out. Deterministic given ``seed``.

    >>> paired_bootstrap_ci([1, 1, 0, 1], [1, 1, 0, 1])
    (0.0, 0.0)
    >>> low, high = paired_bootstrap_ci([1, 1, 1, 0, 1, 1], [0, 1, 0, 0, 1, 0])
    >>> 0 <= low < 0.5 < high <= 1
    True
    """
    if len(a) != len(b):
        raise ValueError(f"paired_bootstrap_ci needs scores of the same items, got {len(a)} and {len(b)}")
    if len(a) == 0:
        return None
    differences = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(differences), size=(resamples, len(differences)))
    low, high = np.quantile(differences[picks].mean(axis=1), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)
