"""The question stream of ``deltamem bench context-stream``: CONTEXT rows over fixed paragraphs, then edits.

    stream = build_context_stream(default_data_dir() / "2wikimultihopqa" / "dev_000_099.json", originals=20)

Questions over 2Wiki/HotpotQA paragraphs whose answers can be reused across questions (exact memo, cosine threshold,
learned threshold, composition from shared base questions), then DATA_SOURCE edits of known relevance. The rules
(``ContextStream.rules`` holds the same sentences; ``deltamem.bench.stream_facts`` holds the relation table
and the facts of rules 4, 6 and 7):

1. DATA_SOURCE: one document per paragraph of every record that gives an original; doc_id "{_id}/{index}", part
   the record's _id, text its sentences stripped and joined by spaces.
2. A file is HotpotQA when a record has a "level", else 2Wiki. Originals: 2Wiki comparison and bridge_comparison
   records (HotpotQA: comparison) in file order, up to `originals`, whose question rules 3 and 15 accept.
3. A question (whitespace collapsed) is parsed by the relation table's templates, matched case-insensitively and
   whole, slots {a} and {b} matching any text (of several matches, the one with the shortest slots; a tie skips the
   record); each slot must name a paragraph of the record (title equal ignoring case, else after SQuAD
   normalisation).
4. Relations (the 2Wiki templates, and HotpotQA's "same neighborhood"): released_first/last (of films or songs),
   born_, died_, director_born_, director_died_first/last, lived_longer/shorter, same/different_country,
   director_same/different_country, same/different_neighborhood, and the year gaps released_, born_, died_,
   director_born_, director_died_gap; each has templates, an opposite, related relations and a gap relation.
5. An original's gold is the record's answer then its answer_aliases; its winner is the one entity whose name as
   written or paragraph title equals, contains or is contained in a gold string after SQuAD normalisation.
6. Facts come from a paragraph's first sentence (its sentences up to the first with a verb outside parentheses):
   life dates from the first parenthesis before the verb with a year and a dash, born/died or two dates
   ("(4 March 1920 - 1994)", "( born June 4, 1961)", "( 1873- 1947)"), else "was born ... <date>", "died ...
   <date>"; a film's or song's year from "is a 1932 ... film", "film from 1953" or "Title (1953) was", else the
   paragraph's first "released ... <year>"; a film's director is the record's person paragraph whose title (less a
   parenthesis) follows "directed by" or "by ... director" in the film's paragraph.
7. Dates compare by year, then month, then day where both are known; equal or unknown is undecided; lifespans
   compare in days with full dates, else in years with a margin of a year a side.
8. Fact-derived questions (near_entity, near_relation, shared) are made only when the facts cannot decide the
   original's relation or decide it as the record's gold does.
9. repeat: the original's text once more, gold unchanged.
10. paraphrase: one or two (seeded) of the relation's other templates (same noun), entity order kept or swapped,
    or its own with the order swapped; gold unchanged; templates marked parse-only (bands, businesses, "both
    located", the data's directors' wordings, nationality) never rephrase.
11. near_direction: a template of the opposite relation on the same entities; gold the other entity (when the
    original has a winner) or the flipped yes/no.
12. near_entity: the original's template with one entity (seeded side) replaced by another paragraph of the same
    record and kind (film, song or person) whose facts decide the relation; gold from the facts; none for yes/no
    relations (no country or neighborhood is extracted).
13. near_relation: the first related relation the facts decide on the same two entities (born_first for
    died_first; director_died_first, then released_first, for director_born_first; ...), gold from the facts.
14. shared: the relation's year gap on the same two entities ("How many years apart were A and B born?"), gold
    the difference of the years; it reads the original's per-entity facts, so each fact's base question is shared
    by the original, its repeat, paraphrases, near_direction, shared and near_entity questions.
15. decompose maps each template the stream uses to its facts' base questions over {a} then {b}, one base
    template per fact whatever composite asks; a question is kept only if, of the patterns kept so far, it matches
    its own alone with its entities as slots and its own matches no earlier question (an original failing this is
    skipped).
16. supporting: for an original and its repeat, paraphrases and near_direction, the paragraphs of the record's
    supporting_facts; for the rest, the paragraphs of their entities and, for director relations, the directors'.
17. Arrival order (seeded): at each step the next original or any pending derived question of an arrived original,
    chosen uniformly; keys q000, q001, ... follow arrival order.
18. Relevant edits, (edits+1)//2 at most, one per seeded original whose facts decide its relation as the gold
    does: the smallest seeded shift of the year of a fact its relation reads (same digits, at most 2025, death 1 to
    105 years after birth) that flips its answer by year and leaves the paragraph's fact-derived questions decided;
    relevant_to: every question whose supporting holds the paragraph; new_gold: each whose gold changes (the
    record's gold when the winner is the record's, else the name as written and the title).
19. Irrelevant edits, the rest (seeded): in a paragraph that no question lists in supporting (nor titled like a
    supporting one of its record), one sentence's first number is raised by 1 to 9, else a clause is appended;
    relevant_to empty. No document is edited twice; all edits are shuffled together.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from deltamem.bench.answer_quality import normalize_answer
from deltamem.bench.datasets import Paragraph
from deltamem.bench.stream_facts import (BASE, DIRECTED, RELATIONS, SHAPE, YESNO, Fact, compare_dates,
                                         first_sentence_end, lifespan, paragraph_facts, templates)
from deltamem.errors import ConfigError

RULES = tuple(" ".join(item.split()) for item in re.findall(r"^\d+\. (.+?)(?=^\d+\. |\Z)", __doc__, re.M | re.S))
KINDS = ("original", "repeat", "paraphrase", "shared", "near_direction", "near_entity", "near_relation")


@dataclass(frozen=True)
class StreamQuestion:
    key: str
    part: str  # the _id of the record whose ten paragraphs it is asked over
    question: str
    gold: tuple[str, ...]
    kind: str  # one of KINDS
    origin: str  # key of the original it derives from (its own key for an original)
    relation: str
    entities: tuple[str, ...]
    supporting: tuple[str, ...]  # doc_ids of the paragraphs that decide its gold


@dataclass(frozen=True)
class StreamDocument:
    doc_id: str
    part: str
    title: str
    text: str


@dataclass(frozen=True)
class StreamEdit:
    doc_id: str
    text: str | None  # None deletes the paragraph
    relevant_to: tuple[str, ...]
    new_gold: dict[str, tuple[str, ...]]
    kind: str  # "flip_date" | "irrelevant_sentence"


@dataclass(frozen=True)
class ContextStream:
    documents: tuple[StreamDocument, ...]
    questions: tuple[StreamQuestion, ...]  # in arrival order
    edits: tuple[StreamEdit, ...]
    decompose: dict[str, list[str]]
    rules: tuple[str, ...]




@dataclass(eq=False)
class _Q:
    part: str
    text: str
    kind: str
    rel: str
    entities: tuple[str, str]
    docs: tuple[str, str]
    template: str
    supporting: tuple[str, ...]
    answer: int | str | None  # winner index, yes/no or a year gap
    gold: tuple[str, ...] = ()
    record: tuple[str, tuple[str, ...]] | None = None  # the record's winner doc and gold
    origin: _Q | None = None
    derived: list[_Q] = field(default_factory=list)


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A decompose pattern as a case-insensitive regex whose groups ``a`` and ``b`` match any text."""
    return re.compile(re.escape(pattern).replace(r"\{a\}", "(?P<a>.+)").replace(r"\{b\}", "(?P<b>.+)"), re.I)


def base_questions(stream: ContextStream, question: StreamQuestion) -> list[str]:
    """The base questions of a stream question: its matching pattern's templates with the slots filled in."""
    for pattern, bases in stream.decompose.items():
        if m := pattern_regex(pattern).fullmatch(question.question):
            return [base.format(a=m["a"], b=m["b"]) for base in bases]
    raise ConfigError(f"No decomposition pattern matches {question.question!r}")


def _same(x: str, y: str) -> bool:
    x, y = normalize_answer(x), normalize_answer(y)
    return bool(x and y) and (x == y or x in y or y in x)


class _Stream:
    """The paragraphs' facts, and the questions kept so far with their patterns."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.title: dict[str, str] = {}
        self.sentences: dict[str, tuple[str, ...]] = {}
        self.text: dict[str, str] = {}
        self.first: dict[str, int] = {}
        self.facts: dict[str, dict[str, Fact]] = {}
        self.noun: dict[str, str | None] = {}
        self.director: dict[str, str] = {}
        self.patterns: dict[str, tuple[re.Pattern[str], str, str | None]] = {}
        self.texts: list[str] = []

    def add(self, docs: list[str], paragraphs: list[Paragraph]) -> None:
        for doc, p in zip(docs, paragraphs):
            self.title[doc], self.sentences[doc], self.text[doc] = p.title, p.sentences, p.text
            self.first[doc] = first_sentence_end(p.sentences)
            self.facts[doc], self.noun[doc] = paragraph_facts(p.text, self.first[doc])
        people = [(re.sub(r"\s*\(.*\)$", "", self.title[d]).lower(), d) for d in docs
                  if self.facts[d] and not self.noun[d]]
        for doc in (d for d in docs if self.noun[d] == "film"):
            named = ["".join(c).lower() for c in DIRECTED.findall(self.text[doc])]
            if found := [d for c in named for name, d in people if name and c.startswith(name)]:
                self.director[doc] = found[0]

    def fact(self, doc: str, name: str) -> Fact | None:
        if name.startswith("director_"):
            doc, name = self.director.get(doc, ""), name[len("director_"):]
        return self.facts.get(doc, {}).get(name)

    def decide(self, rel: str, a: str, b: str) -> int | str | None:
        """Rule 7: the winner index, or the year gap, that the facts decide; None when they do not."""
        mode, names = SHAPE[rel][:2]
        fa, fb = [self.fact(a, n) for n in names], [self.fact(b, n) for n in names]
        if mode in YESNO or None in fa + fb:
            return None
        if mode == "gap":
            return str(abs(fa[0].when[0] - fb[0].when[0]))
        if mode in ("first", "last"):
            order = compare_dates(fa[0].when, fb[0].when)
        else:
            (la, ua), (lb, ub) = lifespan(fa[0].when, fa[1].when), lifespan(fb[0].when, fb[1].when)
            order = None if abs(la - lb) <= ua + ub else (-1 if la < lb else 1)
        return None if order is None else 0 if (order < 0) == (mode in ("first", "shorter")) else 1

    def gold(self, q: _Q, answer: int | str) -> tuple[str, ...]:
        if isinstance(answer, str):
            return (answer,)
        if q.record and q.record[0] == q.docs[answer]:
            return q.record[1]
        return tuple(dict.fromkeys((q.entities[answer], self.title[q.docs[answer]])))

    def keep(self, q: _Q, noun: str | None) -> bool:
        """Rule 15: its own pattern is the only kept one it matches, with its entities as slots, and matches no
        earlier question."""
        regex = self.patterns[q.template][0] if q.template in self.patterns else pattern_regex(q.template)
        m = regex.fullmatch(q.text)
        if not m or (m["a"].lower(), m["b"].lower()) != (q.entities[0].lower(), q.entities[1].lower()) or any(
                r.fullmatch(q.text) for t, (r, _, _) in self.patterns.items() if t != q.template) or (
                q.template not in self.patterns and any(regex.fullmatch(t) for t in self.texts)):
            return False
        self.patterns.setdefault(q.template, (regex, q.rel, noun))
        self.texts.append(q.text)
        return True

    def original(self, record: dict, docs: list[str]) -> tuple[_Q, str | None] | None:
        """Rules 3 and 5: the record's question as an original, or None."""
        text = " ".join(record["question"].split())
        hits = sorted(((len("".join(m.groups())), rel, t, n, m) for rel in RELATIONS if SHAPE[rel][0] != "gap"
                       for t, n in templates(rel, None, parse=True) if (m := pattern_regex(t).fullmatch(text))),
                      key=lambda h: h[0])
        if not hits or len(hits) > 1 and hits[0][0] == hits[1][0]:
            return None
        _, rel, template, noun, m = hits[0]

        def find(name: str) -> str | None:
            return next((d for d in docs if self.title[d].lower() == name.lower()), None) or next(
                (d for d in docs if normalize_answer(self.title[d]) == normalize_answer(name)), None)

        entities, pair = (m["a"], m["b"]), (find(m["a"]), find(m["b"]))
        if pair[0] is None or pair[1] is None or pair[0] == pair[1]:
            return None
        gold = tuple(dict.fromkeys([str(record["answer"]), *record.get("answer_aliases", [])]))
        answer: int | str | None = normalize_answer(gold[0])
        if SHAPE[rel][0] in YESNO and answer not in YESNO:
            return None
        if SHAPE[rel][0] not in YESNO:
            won = [i for i in (0, 1) if any(_same(g, entities[i]) or _same(g, self.title[pair[i]]) for g in gold)]
            answer = won[0] if len(won) == 1 else None
        supporting = tuple(dict.fromkeys(d for title, _ in record["supporting_facts"] if (d := find(title))))
        q = _Q(str(record["_id"]), text, "original", rel, entities, pair, template, supporting, answer, gold)
        q.record = (pair[answer], gold) if isinstance(answer, int) else None
        noun = noun or self.noun[pair[0]]
        return (q, noun) if self.keep(q, noun) else None

    def make(self, o: _Q, kind: str, rel: str, template: str, noun: str | None, *, swap: bool = False,
             pair: tuple[str, str] | None = None, entities: tuple[str, str] | None = None,
             answer: int | str | None = None, gold: tuple[str, ...] | None = None) -> bool:
        """One derived question of ``o``, kept when rule 15 allows."""
        pair = pair or ((o.docs[1], o.docs[0]) if swap else o.docs)
        entities = entities or ((o.entities[1], o.entities[0]) if swap else o.entities)
        if set(pair) == set(o.docs) and rel in (o.rel, SHAPE[o.rel][2]):
            supporting = o.supporting
        else:
            directed = any(f.startswith("director_") for f in SHAPE[rel][1])
            directors = [self.director[d] for d in pair if directed and d in self.director]
            supporting = tuple(dict.fromkeys([*pair, *directors]))
        q = _Q(o.part, template.format(a=entities[0], b=entities[1]), kind, rel, entities, pair, template,
               supporting, answer, record=o.record, origin=o)
        q.gold = gold if gold is not None else self.gold(q, answer)  # type: ignore[arg-type]
        if self.keep(q, noun):
            o.derived.append(q)
            return True
        return False

    def derive(self, o: _Q, noun: str | None, docs: list[str]) -> None:
        """Rules 8 to 14: the repeat, paraphrases and near misses of one original."""
        rng, (mode, _, opposite, gap), related = self.rng, SHAPE[o.rel], RELATIONS[o.rel][0]
        self.make(o, "repeat", o.rel, o.template, noun, answer=o.answer, gold=o.gold)
        options = [(t, s) for t, _ in templates(o.rel, noun) for s in (False, True) if (t, s) != (o.template, False)]
        wanted = rng.randint(1, 2)
        for template, swap in rng.sample(options, len(options)):
            answer = 1 - o.answer if swap and isinstance(o.answer, int) else o.answer
            if wanted and self.make(o, "paraphrase", o.rel, template, noun, swap=swap, answer=answer, gold=o.gold):
                wanted -= 1
        if o.answer is not None:
            flipped = 1 - o.answer if isinstance(o.answer, int) else YESNO[o.answer == "yes"]
            choices = templates(opposite, noun)
            any(self.make(o, "near_direction", opposite, t, noun, answer=flipped)
                for t, _ in rng.sample(choices, len(choices)))
        if (decided := self.decide(o.rel, *o.docs)) is not None and decided != o.answer:
            return  # rule 8: the facts contradict the record's gold
        for side in rng.sample((0, 1), 2) if mode not in YESNO else ():
            keep, taken = o.docs[1 - side], {self.title[d].lower() for d in o.docs}
            same_kind = {self.title[d].lower(): d for d in reversed(docs)
                         if self.title[d].lower() not in taken and self.noun[d] == self.noun[o.docs[side]]}
            pairs = [(d, keep) if side == 0 else (keep, d) for d in sorted(same_kind.values(), key=docs.index)]
            pairs = [p for p in pairs if self.decide(o.rel, *p) is not None]
            if pairs:
                pair = rng.choice(pairs)
                entities = (self.title[pair[0]], o.entities[1]) if side == 0 else (o.entities[0], self.title[pair[1]])
                if self.make(o, "near_entity", o.rel, o.template, noun, pair=pair, entities=entities,
                             answer=self.decide(o.rel, *pair)):
                    break
        for rel in related:
            needs_noun = any("{noun}" in f for f in RELATIONS[rel][1])
            rel_noun = self.noun[o.docs[0]] if needs_noun else None
            if needs_noun and (rel_noun is None or self.noun[o.docs[1]] != rel_noun):
                continue
            if (answer := self.decide(rel, *o.docs)) is not None and self.make(
                    o, "near_relation", rel, rng.choice(templates(rel, rel_noun))[0], rel_noun, answer=answer):
                break
        if gap and (answer := self.decide(gap, *o.docs)) is not None:
            gap_noun = self.noun[o.docs[0]] or noun
            self.make(o, "shared", gap, templates(gap, gap_noun)[0][0], gap_noun, answer=answer)


def _interleave(originals: list[_Q], rng: random.Random) -> list[_Q]:
    """Rule 17."""
    order: list[_Q] = []
    pending: list[_Q] = []
    while originals or pending:
        pick = rng.randrange(len(pending) + bool(originals))
        if pick == len(pending):
            order.append(originals.pop(0))
            pending += order[-1].derived
        else:
            order.append(pending.pop(pick))
    return order


def _flip(s: _Stream, o: _Q, by_doc: dict[str, list[_Q]], keys: dict[int, str]) -> StreamEdit | None:
    """Rule 18: the smallest seeded year shift of one of the original's facts that flips its answer."""
    sign = s.rng.choice((1, -1))
    options = [(side, name) for side in (0, 1) for name in SHAPE[o.rel][1]]
    for side, name in s.rng.sample(options, len(options)):
        doc, fname = o.docs[side], name
        if name.startswith("director_"):
            doc, fname = s.director[doc], name[len("director_"):]
        fact, old = s.facts[doc][fname], s.facts[doc]
        for year in (fact.when[0] + k * d for d in range(1, 61) for k in (sign, -sign)):
            text = s.text[doc][:fact.span[0]] + str(year) + s.text[doc][fact.span[1]:]
            new, _ = paragraph_facts(text, s.first[doc])
            life = [new[k].when[0] for k in ("birth", "death") if k in new]
            if len(str(year)) != len(str(fact.when[0])) or year > 2025 or fname not in new or \
                    new[fname].when[0] != year or len(life) == 2 and not 0 < life[1] - life[0] <= 105:
                continue
            s.facts[doc] = new
            try:
                touched = by_doc.get(doc, [])
                answers = {id(q): s.decide(q.rel, *q.docs) for q in touched if SHAPE[q.rel][0] not in YESNO}
                if s.decide(o.rel, *o.docs) != 1 - o.answer or None in answers.values() or any(  # type: ignore
                        s.fact(o.docs[0], n).when[0] == s.fact(o.docs[1], n).when[0] for n in SHAPE[o.rel][1]):
                    continue  # not flipped, a question left undecided, or flipped by month and day alone
                new_gold = {keys[id(q)]: s.gold(q, answers[id(q)]) for q in touched  # type: ignore[arg-type]
                            if id(q) in answers and answers[id(q)] != q.answer}
                return StreamEdit(doc, text, tuple(keys[id(q)] for q in touched), new_gold, "flip_date")
            finally:
                s.facts[doc] = old
    return None


def _irrelevant(s: _Stream, doc: str) -> StreamEdit:
    """Rule 19."""
    sentences = list(s.sentences[doc])
    i = s.rng.randrange(len(sentences))
    if m := re.search(r"\b\d+\b", sentences[i]):
        sentences[i] = sentences[i][:m.start()] + str(int(m.group()) + s.rng.randint(1, 9)) + sentences[i][m.end():]
    else:
        sentences[i] = sentences[i].rstrip(". ") + ", according to a later source."
    return StreamEdit(doc, " ".join(sentences), (), {}, "irrelevant_sentence")


def _records(path: Path) -> list[dict]:
    """The raw records of a JSON list or JSON Lines file (``load_questions`` drops their type and aliases)."""
    if not path.is_file():
        raise ConfigError(f"Data file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if text.lstrip().startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path.name} is neither a JSON list nor JSON Lines: {exc}") from None


def build_context_stream(path: str | Path, *, originals: int = 20, seed: int = 0, edits: int = 10) -> ContextStream:
    """The question stream over a 2Wiki or HotpotQA file, made by the module's rules; the same for the same seed."""
    records = _records(Path(path))
    types = {"comparison"} if any("level" in r for r in records) else {"comparison", "bridge_comparison"}
    s, kept, documents = _Stream(random.Random(seed)), [], []
    for record in (r for r in records if r.get("type") in types):
        if len(kept) >= originals:
            break
        paragraphs = [Paragraph(title, tuple(x.strip() for x in sentences)) for title, sentences in record["context"]]
        docs = [f"{record['_id']}/{i}" for i in range(len(paragraphs))]
        s.add(docs, paragraphs)
        if made := s.original(record, docs):
            s.derive(made[0], made[1], docs)
            kept.append(made[0])
            documents += [StreamDocument(d, str(record["_id"]), p.title, p.text) for d, p in zip(docs, paragraphs)]
    order = _interleave(list(kept), s.rng)
    keys = {id(q): f"q{i:03d}" for i, q in enumerate(order)}
    questions = tuple(StreamQuestion(keys[id(q)], q.part, q.text, q.gold, q.kind, keys[id(q.origin or q)], q.rel,
                                     q.entities, q.supporting) for q in order)
    by_doc: dict[str, list[_Q]] = {}
    for q in order:
        for d in q.supporting:
            by_doc.setdefault(d, []).append(q)
    flippable = [o for o in kept if isinstance(o.answer, int) and s.decide(o.rel, *o.docs) == o.answer]
    relevant: list[StreamEdit] = []
    for o in s.rng.sample(flippable, len(flippable)):
        if len(relevant) < (edits + 1) // 2 and (edit := _flip(s, o, by_doc, keys)):
            relevant.append(edit)
    titles = {(d.part, d.title.lower()) for d in documents if d.doc_id in by_doc}
    pool = [d.doc_id for d in documents if d.doc_id not in by_doc and (d.part, d.title.lower()) not in titles
            and s.sentences[d.doc_id]]
    stream_edits = relevant + [_irrelevant(s, d) for d in s.rng.sample(pool, min(edits - len(relevant), len(pool)))]
    s.rng.shuffle(stream_edits)
    decompose = {t: [BASE[f].format(noun=noun or "film", x=slot) for slot in ("{a}", "{b}") for f in SHAPE[rel][1]]
                 for t, (_, rel, noun) in s.patterns.items()}
    return ContextStream(tuple(documents), questions, tuple(stream_edits), decompose, RULES)
