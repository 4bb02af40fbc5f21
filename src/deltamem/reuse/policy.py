"""When a new question may take an answered question's answer: per-entry thresholds and a bounded error rate.

    ReusePolicy(max_error=0.02).decide(0.97, entry_checks=[], pooled_checks=checks, draw=0.3)

The evidence is a list of ``Check``s: a question at similarity ``s`` to an answered entry was also answered by a real
call, and the two answers agreed or not (``deltamem.reuse.agreement``). Checks come from every miss that had an
answered neighbour (the call was paid anyway) and from the share of reuses that are checked on purpose.

A decision at similarity ``s`` to entry ``e`` (the idea of vCache, Schroeder et al. 2025, with a pooled bound so
that a short stream can start reusing):

1. **The entry's threshold** ``t_e`` is the highest similarity at which a check against ``e`` disagreed (0 while
   none has). A question at or below it never takes ``e``'s answer: one wrong reuse that close is evidence enough.
2. **The error bound** ``u(s)`` is the upper ``confidence`` quantile of the Beta posterior (uniform prior) of the
   rate of disagreement among the view's checks at similarity ``>= s``, pooled over its entries.
3. The answer is reused with probability ``min(1, max_error / u(s))``: a deterministic ``draw`` in [0, 1) below it
   reuses. So the expected share of wrong reuses among the questions that reach a decision stays at most
   ``max_error`` wherever the bound holds, and reuse grows as agreeing checks accumulate (with no checks at all,
   about ``max_error`` of such questions reuse).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from deltamem.errors import SchemaError

MIN_SIMILARITY = 0.7  # below this cosine an answered question is no neighbour: no decision, no check
CONFIDENCE = 0.8  # the quantile of the posterior error rate the reuse probability is set against


@dataclass(frozen=True)
class Check:
    """A question at ``similarity`` to an entry was answered for real: did the answers agree?"""

    similarity: float
    agreed: bool


@dataclass(frozen=True)
class ReuseVerdict:
    """One reuse decision and the numbers it rested on (logged, and shown by ``explain``)."""

    reuse: bool
    similarity: float
    threshold: float  # the entry's own: the highest similarity of a disagreeing check against it
    error_bound: float  # u(s): the bound on the rate of wrong reuses at this similarity
    probability: float  # the chance of reusing at this similarity: min(1, max_error / u(s)), 0 at or below threshold

    def describe(self, source: str) -> str:
        verb = "took the answer of" if self.reuse else "did not take the answer of"
        return (f"{verb} {source}: similarity {self.similarity:.3f} above its threshold {self.threshold:.3f}, "
                f"reuse probability {self.probability:.2f} at an error bound of {self.error_bound:.1%}"
                if self.similarity > self.threshold else
                f"{verb} {source}: similarity {self.similarity:.3f} is not above its threshold {self.threshold:.3f}")


class ReusePolicy:
    """The reuse decision of one view (see the module docstring).

    Invariant: the probability of a reuse at similarity ``s`` never exceeds ``max_error / u(s)``, and is 0 at or
    below the entry's threshold.
    """

    def __init__(self, max_error: float, *, confidence: float = CONFIDENCE):
        if isinstance(max_error, bool) or not isinstance(max_error, (int, float)) or not 0.0 < max_error < 1.0:
            raise SchemaError(f"max_error={max_error!r} is out of range; use a rate strictly between 0 and 1, "
                              "e.g. 0.02")
        self.max_error = float(max_error)
        self.confidence = confidence

    @staticmethod
    def threshold(entry_checks: Sequence[Check]) -> float:
        """The entry's threshold: the highest similarity at which a check against it disagreed, else 0."""
        return max((c.similarity for c in entry_checks if not c.agreed), default=0.0)

    def error_bound(self, similarity: float, pooled_checks: Sequence[Check]) -> float:
        """``u(s)``: the upper ``confidence`` quantile of the disagreement rate among checks at ``>= similarity``."""
        above = [c for c in pooled_checks if c.similarity >= similarity - 1e-9]
        wrong = sum(not c.agreed for c in above)
        return beta_quantile(self.confidence, 1 + wrong, 1 + len(above) - wrong)

    def decide(self, similarity: float, entry_checks: Sequence[Check], pooled_checks: Sequence[Check],
               draw: float) -> ReuseVerdict:
        threshold = self.threshold(entry_checks)
        bound = self.error_bound(similarity, pooled_checks)
        probability = 0.0 if similarity <= threshold else min(1.0, self.max_error / bound)
        return ReuseVerdict(draw < probability, similarity, threshold, bound, probability)


def beta_quantile(q: float, a: int, b: int) -> float:
    """The ``q`` quantile of Beta(a, b) for integer ``a, b >= 1``, by bisection on its CDF (for integers, a binomial
    tail: ``I_x(a, b) = P(Binomial(a + b - 1, x) >= a)``).

    >>> round(beta_quantile(0.5, 1, 1), 4), round(beta_quantile(0.8, 1, 21), 4)
    (0.5, 0.0738)
    """
    n = a + b - 1

    def cdf(x: float) -> float:  # in log space: the binomial coefficients overflow a float past n ~ 1000
        if x <= 0.0 or x >= 1.0:
            return float(x >= 1.0)
        log_x, log_y = math.log(x), math.log1p(-x)
        return sum(math.exp(math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * log_x
                            + (n - j) * log_y) for j in range(a, n + 1))

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
    return (lo + hi) / 2
