"""Facts read from 2Wiki/HotpotQA paragraphs, and the comparison relations the question stream asks about them.

    facts, noun = paragraph_facts(paragraph.text, first_sentence_end(paragraph.sentences))

The rules are numbered in ``deltamem.bench.question_stream``'s docstring: the relation table (rule 4: templates,
opposites, related and gap relations, and each fact's base question), the facts of a paragraph's first sentence
(rule 6: life dates, a film's or song's year, and the "directed by" pattern that finds a film's director) and the
comparison of dates and lifespans (rule 7).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date


YESNO = ("yes", "no")


def _expand(*forms: str) -> tuple[str, ...]:
    """Templates with every choice of each "[x|y]" spelled out, in order."""
    out = []
    for form in forms:
        m = re.search(r"\[([^][]*)\]", form)
        out += _expand(*(form[:m.start()] + o + form[m.end():] for o in m[1].split("|"))) if m else [form]
    return tuple(out)


_OF_DIRECTOR = "Which film [has the director|has the director who was|whose director was]"
_OF_DEATH = "Which film [has the director|has the director who|whose director] died"
# relation: (related relations, templates); "!" marks a template that parses questions but never rephrases them
RELATIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "released_first": (("director_born_first",),
                       _expand("Which {noun} [came out|was released] [first|earlier], {a} or {b}?")),
    "released_last": (("director_born_last",),
                      _expand("Which {noun} [was released|came out] [more recently|later], {a} or {b}?")),
    "born_first": (("died_first",), _expand(
        "Who was born [first|earlier], {a} or {b}?", "Who is older, {a} or {b}?", "Was {a} or {b} born first?")),
    "born_last": (("died_last",), _expand(
        "Who was born [later|more recently], {a} or {b}?", "Who is younger, {a} or {b}?",
        "Was {a} or {b} born later?")),
    "died_first": (("born_first",), _expand("Who died [first|earlier], {a} or {b}?", "Did {a} or {b} die first?")),
    "died_last": (("born_last",), _expand("Who died [later|more recently], {a} or {b}?", "Did {a} or {b} die later?")),
    "lived_longer": (("born_first", "died_last"),
                     _expand("[Who|Which person] lived longer, {a} or {b}?", "Who had the longer life, {a} or {b}?")),
    "lived_shorter": (("born_last", "died_first"),
                      _expand("Who [had the shorter life|lived a shorter life], {a} or {b}?")),
    "director_born_first": (("director_died_first", "released_first"), _expand(
        _OF_DIRECTOR + " born [first|earlier], {a} or {b}?", "Which film has the older director, {a} or {b}?")),
    "director_born_last": (("director_died_last", "released_last"), _expand(
        _OF_DIRECTOR + " born later, {a} or {b}?",
        "Which film [whose director is younger|has the younger director], {a} or {b}?")),
    "director_died_first": (("director_born_first", "released_first"),
                            _expand(_OF_DEATH + " [first|earlier], {a} or {b}?")),
    "director_died_last": (("director_born_last", "released_last"),
                           _expand(_OF_DEATH + " [later|more recently], {a} or {b}?")),
    "same_country": (("released_first", "born_first"), _expand(
        "[Are {a} and {b} from|Do {a} and {b} come from] the same country?",
        "!Are [{a} and {b} both|both {a} and {b}] located in the same country?",
        "!Are both [businesses, {a} and {b}, located in|bands, {a} and {b}, from] the same country?",
        "!Were {a} and {b} of the same nationality?")),
    "different_country": (("released_first", "born_first"),
                          _expand("[Are {a} and {b} from|Do {a} and {b} come from] different countries?")),
    "same_neighborhood": ((), _expand("Are {a} and {b} [located in|in] the same neighborhood?")),
    "different_neighborhood": ((), _expand("Are {a} and {b} [located in|in] different neighborhoods?")),
    "director_same_country": (("director_born_first", "released_first"), _expand(
        "Do the films {a} and {b} have directors of the same nationality?",
        "Is the director of {a} from the same country as the director of {b}?",
        "!Are [director of film {a} and director of film {b}|both directors of films {a} and {b}] from the same "
        "country?", "!Do both films[ {a} and {b} have the directors|, {a} and {b}, have the directors who are] from "
        "the same country?")),
    "director_different_country": (("director_born_first", "released_first"), (
        "Do the films {a} and {b} have directors of different nationalities?",
        "Is the director of {a} from a different country than the director of {b}?")),
    "released_gap": ((), ("How many years apart were the {noun}s {a} and {b} released?",)),
    "born_gap": ((), ("How many years apart were {a} and {b} born?",)),
    "died_gap": ((), ("How many years apart did {a} and {b} die?",)),
    "director_born_gap": ((), ("How many years separate the births of the directors of {a} and {b}?",)),
    "director_died_gap": ((), ("How many years separate the deaths of the directors of {a} and {b}?",)),
}
_FACT_OF = {"released": ("release",), "born": ("birth",), "died": ("death",), "lived": ("birth", "death"),
            "country": ("country",), "neighborhood": ("neighborhood",)}
_FLIP = {"first": "last", "last": "first", "longer": "shorter", "shorter": "longer", "same": "different",
         "different": "same"}


def _shape(rel: str) -> tuple[str, tuple[str, ...], str | None, str | None]:
    """A relation's mode, facts, opposite and gap relation, all read off its name."""
    director, words = "director_" if rel.startswith("director_") else "", rel.removeprefix("director_").split("_")
    mode = {"same": "yes", "different": "no"}.get(words[0], words[-1])
    topic = words[-1] if mode in YESNO else words[0]
    gap = None if mode in (*YESNO, "gap") else f"{director}{'born' if topic == 'lived' else topic}_gap"
    opposite = None if mode == "gap" else "_".join(_FLIP.get(w, w) for w in rel.split("_"))
    return mode, tuple(director + f for f in _FACT_OF[topic]), opposite, gap


BASE = {"release": "When was the {noun} {x} released?", "birth": "When was {x} born?", "death": "When did {x} die?",
        "director_birth": "When was the director of the film {x} born?",
        "director_death": "When did the director of the film {x} die?", "country": "Which country is {x} from?",
        "neighborhood": "Which neighborhood is {x} located in?",
        "director_country": "Which country is the director of the film {x} from?"}
_NOUNS = ("film", "song")
# relation: (mode, facts, opposite, gap relation)
SHAPE = {rel: _shape(rel) for rel in RELATIONS}


def templates(rel: str, noun: str | None, *, parse: bool = False) -> list[tuple[str, str | None]]:
    """A relation's templates with ``{noun}`` filled in (every noun when None), each with its noun."""
    forms = [f.lstrip("!") for f in RELATIONS[rel][1] if parse or not f.startswith("!")]
    filled = [(f.replace("{noun}", n), n) for f in forms if "{noun}" in f for n in ((noun,) if noun else _NOUNS)]
    return list(dict.fromkeys(filled + [(f, None) for f in forms if "{noun}" not in f]))


_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_M = "|".join(_MONTHS)
_DATE = re.compile(rf"(?P<d1>\d{{1,2}})\s+(?P<m1>{_M}),?\s+(?P<y1>\d{{3,4}})\b|(?P<m2>{_M})\s+(?P<d2>\d{{1,2}}),?\s+"
                   rf"(?P<y2>\d{{3,4}})\b|(?P<m3>{_M})\s+(?P<y3>\d{{3,4}})\b|\b(?P<y4>[1-9]\d{{2,3}})\b")
_YEAR = r"(1[89]\d\d|20\d\d)"
_WORK_YEAR = re.compile(rf"\b(?:is|was)\s+(?:an?\s+)?{_YEAR}\b|\b(?:film|movie|song|single) from {_YEAR}\b"
                        rf"|^[^()]*\(\s*{_YEAR}\s*\)\s*(?:is|was)\b")
_RELEASED = re.compile(rf"\breleased\b[^.]*?\b{_YEAR}\b")
_DASH = re.compile(r"\s*[–—]\s*|-\s+|(?<=\d)-(?=\d)")
_VERB = re.compile(r"\s(?:is|was|were|are)\s")
_PAREN = re.compile(r"\([^()]*\)")
DIRECTED = re.compile(r"\bdirected(?: and [\w-]+)? by (.{1,80})|\bby (?:[\w-]+ )?director (.{1,80})")


@dataclass(frozen=True)
class Fact:
    when: tuple[int, int, int]  # year, month (0: unknown), day (0: unknown)
    span: tuple[int, int]  # where the year is in the paragraph's text


def _date(text: str, lo: int, hi: int) -> Fact | None:
    if not (m := _DATE.search(text, lo, hi)):
        return None
    year = next(g for g in ("y1", "y2", "y3", "y4") if m[g])
    month = next((_MONTHS.index(m[g]) + 1 for g in ("m1", "m2", "m3") if m[g]), 0)
    return Fact((int(m[year]), month, int(m["d1"] or m["d2"] or 0)), m.span(year))


def first_sentence_end(sentences: tuple[str, ...]) -> int:
    """The length of a paragraph's first sentence: its sentences up to the first with a verb outside parentheses."""
    for i in range(len(sentences)):
        if _VERB.search(_PAREN.sub("", first := " ".join(sentences[: i + 1]))):
            return len(first)
    return len(" ".join(sentences))


def paragraph_facts(text: str, end: int) -> tuple[dict[str, Fact], str | None]:
    """Rule 6: a paragraph's dated facts and, for a film or a song, that noun; ``text[:end]`` is the first sentence."""
    first = text[:end]
    verb = _VERB.search(_PAREN.sub(lambda m: " " * len(m.group()), first))
    for paren in _PAREN.finditer(first):
        lo, hi = paren.start() + 1, paren.end() - 1
        if verb and paren.start() > verb.start():
            break
        if re.search(r"\bBC\b|\bfl\.", first[lo:hi]) or not re.search(r"\d{3}", first[lo:hi]):
            continue
        born = dead = None
        if cut := _DASH.search(first, lo, hi) or re.compile(r"\bdied\b").search(first, lo, hi):
            born, dead = _date(first, lo, cut.start()), _date(first, cut.end(), hi)
        elif re.search(r"\bborn\b", first[lo:hi]):
            born = _date(first, lo, hi)
        elif not ((born := _date(first, lo, hi)) and (dead := _date(first, born.span[1], hi))):
            continue  # neither a dash, born/died nor two dates
        return {k: v for k, v in (("birth", born), ("death", dead)) if v}, None
    noun = ("film" if re.search(r"\b(?:films?|movie|documentary|serial|directed)\b", first, re.I) else
            "song" if re.search(r"\b(?:song|single)\b", first, re.I) else None)
    if noun:
        if not (m := _WORK_YEAR.search(first) or _RELEASED.search(text)):
            return {}, noun
        group = next(i for i in range(1, len(m.groups()) + 1) if m[i])
        return {"release": Fact((int(m[group]), 0, 0), m.span(group))}, noun
    found = {n: re.search(w, first) for n, w in (("birth", r"\bwas born\b"), ("death", r"\bdied\b"))}
    return {n: f for n, m in found.items() if m and (f := _date(first, m.end(), len(first)))}, None


def compare_dates(x: tuple[int, int, int], y: tuple[int, int, int]) -> int | None:
    """Rule 7: -1 or 1 as ``x`` is before or after ``y`` (year, then month, then day where both are known), None when
    equal or unknown."""
    for i in range(3):
        if i and not (x[i] and y[i]):
            return None
        if x[i] != y[i]:
            return -1 if x[i] < y[i] else 1
    return None


def lifespan(birth: tuple[int, int, int], death: tuple[int, int, int]) -> tuple[float, float]:
    """Rule 7: a life's length in days and its margin: exact with full dates, else from the years, a year a side."""
    try:
        if all(birth[1:]) and all(death[1:]):
            return (date(*death) - date(*birth)).days, 0
    except ValueError:
        pass
    return (death[0] - birth[0]) * 365.25, 366
