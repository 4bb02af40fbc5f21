"""When two answers to a question say the same thing.

    answers_agree("Alien came out first.", "It was Alien", "Which came first, Heat or Alien?")  # True

Reuse is judged by this test everywhere (the checks that train the thresholds, the benchmark's wrong-reuse rate):

- a question that offers alternatives ("..., A or B?"): the answers agree when the first alternative each names is
  the same one (and each names one);
- a yes/no question (it starts with is, are, was, were, do, does, did, can, could, has, have or had): when both
  answers start with the same "yes" or "no";
- any other question, or an answer that names no alternative or starts with neither: when the answers are equal
  after SQuAD's normalisation (lowercase, no punctuation, no articles, single spaces).
"""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ALTERNATIVES = re.compile(r",\s*(?P<a>[^,]+?)\s+or\s+(?P<b>[^,]+?)\s*\??\s*$")
_YES_NO = re.compile(r"^\s*(is|are|was|were|do|does|did|can|could|has|have|had)\b", re.IGNORECASE)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, no punctuation, no articles, single spaces.

    >>> normalize_answer("  The  Battle of Hastings, 1066! ")
    'battle of hastings 1066'
    """
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def answers_agree(a: str | None, b: str | None, question: str | None = None) -> bool:
    """Whether two answers to ``question`` say the same (a missing answer agrees with nothing; see the module).

    >>> answers_agree("Paris.", "paris"), answers_agree("Paris", "Paris, France")
    (True, False)
    >>> q = "Who died first, Ada or Alan?"
    >>> answers_agree("Ada died first, in 1852.", "It was Ada.", q), answers_agree("Ada", "Alan, then Ada", q)
    (True, False)
    >>> answers_agree("No, they are not.", "no", "Are Ada and Alan from the same country?")
    True
    """
    if a is None or b is None:
        return False
    if question is not None:
        decided = _decision(a, question), _decision(b, question)
        if None not in decided:
            return decided[0] == decided[1]
    return normalize_answer(a) == normalize_answer(b)


def _decision(answer: str, question: str) -> str | None:
    """The alternative ``answer`` names first, or its leading yes/no, or None when it shows neither."""
    text = normalize_answer(answer)
    choice = _ALTERNATIVES.search(question)
    if choice:
        padded = f" {text} "
        alternatives = {normalize_answer(choice["a"]), normalize_answer(choice["b"])}
        named = [(padded.find(f" {alt} "), alt) for alt in alternatives if alt and f" {alt} " in padded]
        return min(named)[1] if named else None
    if _YES_NO.match(question):
        first = text.split()[:1]
        return first[0] if first and first[0] in ("yes", "no") else None
    return None
