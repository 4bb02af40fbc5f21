"""Questions rewritten to a canonical form before they are matched, so that a paraphrase finds its twin.

    QuestionRewriter().rewrite("Which film was released earlier, Moment Of Danger or The Ballad Of Josie?")
    # 'which film released first, moment of danger or the ballad of josie'

Three rules, applied in this order, and only to the text used for matching (the prompt keeps the question as asked):

1. **Text**: Unicode NFKC, case folded, whitespace collapsed, the trailing question mark dropped. Entity names that
   differ only in case or Unicode form ("The Mask Of Fu Manchu", "The Mask of Fu Manchu") become equal.
2. **Relation phrases**: each phrase of a synonym group becomes the group's canonical phrase ("came out first",
   "was released earlier" -> "released first"). A group may only join phrases of one direction: every direction word
   (first/last, earlier/later, older/younger, before/after, ...) in a phrase must belong to the same side as the
   canonical's, checked when the rewriter is made, so "born first" and "born last" are never made the same.
3. **Symmetric alternatives**: the two alternatives of "..., A or B" (the answer names one of them) and of "are A and
   B ... the same ..." (a yes/no about both) are put in sorted order. No other order is touched: "is A older than B"
   keeps its order, because swapping would change the answer.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence

from deltamem.errors import SchemaError

EARLY = ("first", "earlier", "earliest", "before", "older", "oldest", "sooner")
LATE = ("last", "later", "latest", "after", "younger", "youngest", "more recently", "most recently", "recent")

# Canonical phrase -> the phrases that say the same, in one direction.
DEFAULT_SYNONYMS: dict[str, tuple[str, ...]] = {
    "released first": ("came out first", "was released first", "was released earlier", "came out earlier",
                       "was released before", "came out before"),
    "released last": ("came out last", "was released last", "was released later", "came out later",
                      "was released more recently", "came out more recently", "is more recent"),
    "born first": ("was born first", "was born earlier", "is older", "born earlier"),
    "born last": ("was born last", "was born later", "is younger", "born later"),
    "died first": ("died earlier", "passed away first", "passed away earlier"),
    "died last": ("died later", "passed away last", "passed away later"),
    "the same country": ("both located in the same country", "located in the same country",
                         "both from the same country", "from the same country"),
}
_ALTERNATIVES = re.compile(r"^(?P<head>.*?),\s*(?P<a>.+?)\s+or\s+(?P<b>.+?)$")
_BOTH = re.compile(r"^are\s+(?P<a>.+?)\s+and\s+(?P<b>.+?)\s+"
                   r"(?P<rest>(?:both\s+)?(?:from|in|located in)?\s*the same\b.*)$")


def direction(phrase: str) -> frozenset[str]:
    """The sides ("early", "late") a phrase's direction words are on.

    >>> sorted(direction("was released more recently")), sorted(direction("the same country"))
    (['late'], [])
    """
    text = f" {phrase.casefold()} "
    return frozenset(side for side, words in (("early", EARLY), ("late", LATE))
                     if any(f" {w} " in text for w in words))


class QuestionRewriter:
    """Rewrites a question into the canonical form it is matched by (see the module docstring).

    Invariant: every synonym group is one-directional (checked here), so a rewrite never maps a question to one whose
    comparison points the other way.
    """

    def __init__(self, synonyms: Mapping[str, Sequence[str]] | None = None):
        groups = DEFAULT_SYNONYMS if synonyms is None else synonyms
        self._phrases: list[tuple[re.Pattern[str], str]] = []
        for canonical, phrases in groups.items():
            for phrase in phrases:
                if direction(phrase) != direction(canonical):
                    raise SchemaError(f"synonym {phrase!r} points another way than {canonical!r}; a rewrite must "
                                      "never change a comparison's direction")
                self._phrases.append((re.compile(rf"\b{re.escape(normalise_text(phrase))}\b"), normalise_text(canonical)))
        self._phrases.sort(key=lambda pair: -len(pair[0].pattern))  # the longest phrase first

    def rewrite(self, question: str) -> str:
        """The canonical form of ``question``.

        >>> r = QuestionRewriter()
        >>> r.rewrite("Who died first, Fleetwood Sheppard or George William Whitaker?")
        'who died first, fleetwood sheppard or george william whitaker'
        >>> r.rewrite("Who died earlier, George William Whitaker or Fleetwood Sheppard?")
        'who died first, fleetwood sheppard or george william whitaker'
        >>> r.rewrite("Who died last, George William Whitaker or Fleetwood Sheppard?")
        'who died last, fleetwood sheppard or george william whitaker'
        """
        text = normalise_text(question).rstrip("?").rstrip()
        for pattern, canonical in self._phrases:
            text = pattern.sub(canonical, text)
        both = _BOTH.match(text)
        if both:
            a, b = sorted((both["a"], both["b"]))
            return f"are {a} and {b} {both['rest']}"
        alternatives = _ALTERNATIVES.match(text)
        if alternatives:
            a, b = sorted((alternatives["a"], alternatives["b"]))
            return f"{alternatives['head']}, {a} or {b}"
        return text


def normalise_text(text: str) -> str:
    """NFKC, case folded, whitespace collapsed: the identity of a question's wording."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())
