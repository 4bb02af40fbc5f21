"""Key spans and substitutions: which values of the context an output copies, and what an edit replaced.

    >>> sorted(key_spans("Ada Lovelace was born on 10 December 1815 in London."))
    ['10 December 1815', 'Ada Lovelace', 'London']
    >>> substitution("Ada was born in 1815 in London.", "Ada was born in 1816 in London.")
    ('1815', '1816')

A key span is a number, a date or a capitalised name. An output that contains a key span of its prompt verbatim
*copies* it; when an edit replaces exactly that span in one sentence, the output can be patched in place.
"""

from __future__ import annotations

import difflib
import re

_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
_DATE = rf"\b(?:\d{{1,2}}\s+)?(?:{_MONTHS})(?:\s+\d{{1,2}},?)?\s+\d{{3,4}}\b"
_NUMBER = r"\b\d+(?:[.,]\d+)*\b"
_NAME_WORD = r"[A-Z][\w'’.-]*"
_NAME = rf"\b{_NAME_WORD}(?:\s+(?:(?:of|de|da|del|la|le|von|van|der|the)\s+)?{_NAME_WORD})*"
_SPAN = re.compile(rf"{_DATE}|{_NUMBER}|{_NAME}")
_SENTENCE_START_WORDS = {"The", "A", "An", "He", "She", "It", "They", "His", "Her", "In", "On", "At", "This"}


def key_spans(text: str) -> set[str]:
    """The numbers, dates and capitalised names in ``text`` (a lone sentence-initial function word is not a name)."""
    spans = set()
    for match in _SPAN.finditer(text):
        span = match.group().strip(" .,")
        if span and span not in _SENTENCE_START_WORDS:
            spans.add(span)
    return spans


def copied_spans(context: str, output: str) -> list[str]:
    """The key spans of ``context`` that ``output`` contains verbatim, longest first."""
    return sorted((s for s in key_spans(context) if s in output), key=lambda s: (-len(s), s))


def substitution(old: str, new: str) -> tuple[str, str] | None:
    """``(old_span, new_span)`` when ``new`` is ``old`` with one contiguous run of words replaced, else None.

    The run is widened to whole key spans, so "1815" -> "1816" and "Ada Lovelace" -> "Grace Hopper" come out whole.
    """
    a, b = old.split(), new.split()
    blocks = [op for op in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes() if op[0] != "equal"]
    if len(blocks) != 1 or blocks[0][0] != "replace":
        return None
    _tag, i1, i2, j1, j2 = blocks[0]
    before, after = " ".join(a[i1:i2]).strip(" .,;:"), " ".join(b[j1:j2]).strip(" .,;:")
    for span in key_spans(old):
        if before in span and span in old:
            widened = span.replace(before, after, 1)
            if widened in new:
                before, after = span, widened
                break
    return (before, after) if before and before != after else None
