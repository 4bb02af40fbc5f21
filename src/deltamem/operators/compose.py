"""``LLM_GENERATE`` with ``decompose``: composite questions answered from base questions many of them share.

    db.generate("races", prompt="Answer.", context=questions, data_source=films, decompose={
        "Which film came out first, {a} or {b}?": ["When was {a} released?", "When was {b} released?"]})

``decompose`` maps a composite question *pattern* to the templates of its base questions. A pattern's ``{slot}``
placeholders match non-empty text; a base template may use the pattern's slots and the CONTEXT row's columns (a slot
wins over a column of the same name). Patterns are tried in declared order, and the first whose text matches the whole
rendered question wins: case-insensitively, any run of whitespace for a space, a trailing ``?`` optional, each slot as
short as the match allows. A question no pattern matches as asked is rewritten (``deltamem.reuse.rewrite``: relation
phrases of one direction made one, the alternatives of "..., A or B" sorted) and matched against the patterns
rewritten the same way, so "Which film was released earlier, B or A?" finds a pattern declared as "Which film came out
first, {a} or {b}?" (its slots then hold the entities case-folded). A question that matches no pattern is its own base
question, answered over the documents directly; its answer is the base answer, with no composition call.

Base questions are ``LLM_GENERATE`` outputs over DATA_SOURCE in their own right (an inner
``GenerateOperator``, op id ``"<op_id>/base"``), so they get every strategy of ``deltamem.operators.generate``,
provenance and decisions. One base row stands for one fact: its key is the base text normalised (NFKC, casefolded,
whitespace collapsed) and, with ``partition``, the partition value, so a fact that many composites ask is asked once.
A composite is then one short call that reads the base answers, not the documents::

    system: <prompt>
    user:   Facts:
            - When was the film Alien released? Alien was released in 1979.
            - When was the film Heat released? Heat was released in 1995.

            Question: Which film came out first, Alien or Heat?
            Answer briefly.

A DATA_SOURCE change refreshes only the base answers whose provenance it touches, then composes again only the
composites whose prompt that changed: a base refreshed to the same text costs its composites nothing. Decisions are
logged under each composite's key (strategy ``compose``, or ``direct`` for a question that matched no pattern) and
under each base's key (the inner operator's). ``explain`` shows a composite's decomposition and the base answers it
read, each with its provenance.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from deltamem.changes import ERROR_COLUMN, Delta, Row, RowKey, decode_key, encode_key, key_order
from deltamem.errors import SchemaError, TemplateError, did_you_mean
from deltamem.llm.base import CompletionRequest, Message
from deltamem.llm.memo import call_hash
from deltamem.llm.runner import CallSpec
from deltamem.operators.base import MultiInputOperator, OperatorContext, retract
from deltamem.operators.generate import GenerateOperator
from deltamem.operators.template import Template
from deltamem.reuse.rewrite import QuestionRewriter, normalise_text
from deltamem.store.base import CallCost, Decision, StateEntry

BASE_QUESTION = "question"  # the inner operator's CONTEXT rows: {BASE_QUESTION: text, <partition column>: value}
BASE_ANSWER = "answer"  # and its output column
REWRITER = QuestionRewriter()
EXAMPLE = '{"Which film came out first, {a} or {b}?": ["When was {a} released?", "When was {b} released?"]}'


@dataclass(frozen=True)
class Decomposition:
    """One declared pattern: the text as written, the regex that matches a whole composite question, its slots and
    the templates of its base questions (never empty)."""

    pattern: str
    regex: re.Pattern[str]
    slots: tuple[str, ...]
    bases: tuple[Template, ...]
    rewritten: re.Pattern[str]  # the pattern's canonical form (deltamem.reuse.rewrite), matched by rewritten questions

    @classmethod
    def parse(cls, pattern: Any, templates: Any) -> "Decomposition":
        if not isinstance(pattern, str) or not pattern.strip():
            raise SchemaError(f"decompose has the pattern {pattern!r}; a pattern is a question such as "
                              "'Which film came out first, {a} or {b}?'")
        slots = Template(pattern).columns  # raises TemplateError when malformed
        if (not isinstance(templates, (list, tuple)) or not templates
                or not all(isinstance(t, str) and t.strip() for t in templates)):
            raise SchemaError(f"decompose pattern {pattern!r} names no base question: give it a non-empty list of "
                              f"base question templates, got {templates!r}")
        return cls(pattern, _pattern_regex(pattern), slots, tuple(Template(t) for t in templates),
                   _pattern_regex(REWRITER.rewrite(pattern)))

    def match(self, question: str, *, rewritten: bool = False) -> dict[str, str] | None:
        """The slot values of ``question`` (whitespace collapsed), or None when the pattern does not match it; with
        ``rewritten``, of the rewritten question against the rewritten pattern."""
        regex = self.rewritten if rewritten else self.regex
        found = regex.fullmatch(unicodedata.normalize("NFKC", question))
        return None if found is None else {k: " ".join(v.split()) for k, v in found.groupdict().items()}

    def check(self, available: Iterable[str], *, where: str) -> None:
        """Raise ``TemplateError`` naming the first base placeholder that is neither a slot nor a column."""
        names = [*self.slots, *available]
        for base in self.bases:
            for name in base.columns:
                if name not in names:
                    slots = ", ".join(self.slots) or "none"
                    raise TemplateError(
                        f"Base question {base.text!r} of pattern {self.pattern!r} reads {{{name}}}, which is neither "
                        f"a slot of the pattern ({slots}) nor a column of {where}." + did_you_mean(name, names))


def parse_decompose(decompose: Any) -> tuple[Decomposition, ...]:
    """``decompose`` (a mapping, or the JSON text of one) as its patterns in declared order; SchemaError if bad."""
    if isinstance(decompose, str):
        try:
            decompose = json.loads(decompose)
        except ValueError as exc:
            raise SchemaError(f"decompose is not valid JSON ({exc}); write an object such as {EXAMPLE}") from None
    if not isinstance(decompose, Mapping):
        raise SchemaError(f"decompose must be a JSON object from a question pattern to its base question templates, "
                          f"got {type(decompose).__name__} {decompose!r}; e.g. {EXAMPLE}")
    if not decompose:
        raise SchemaError(f"decompose names no pattern; e.g. {EXAMPLE}")
    return tuple(Decomposition.parse(pattern, templates) for pattern, templates in decompose.items())


class CompositeQuestion(Template):
    """The question template of a composite view. Its base templates read the same CONTEXT row, so checking it
    against the CONTEXT columns (as ``db.generate`` does, before anything is written) checks them too."""

    def __init__(self, text: str, decompositions: Sequence[Decomposition]):
        super().__init__(text)
        self.decompositions = tuple(decompositions)

    def check(self, available: Iterable[str], *, where: str) -> None:
        available = list(available)
        super().check(available, where=where)
        for decomposition in self.decompositions:
            decomposition.check(available, where=where)


@dataclass(frozen=True)
class _Asked:
    """A composite as decomposed: its question, the pattern it matched (None: it is its own base question), and
    per base question (distinct keys, in template order) its key and the text this composite rendered."""

    question: str
    pattern: str | None
    bases: tuple[RowKey, ...]
    base_questions: tuple[str, ...]
    base_rows: tuple[Row, ...]  # the inner operator's CONTEXT row for each base


@dataclass(frozen=True)
class _Work:
    """One composite to compose again: its CONTEXT row, decomposition, output before, stored entry and why."""

    row: Row
    asked: _Asked
    before_out: Row | None
    old: StateEntry | None
    reason: str  # the CallSpec reason: insert | update | refresh | retry
    why: str


class ComposeOperator(MultiInputOperator):
    """The ``llm_compose`` operator: ``llm_generate`` whose questions are composed from shared base questions.

    Invariant: a composite entry (op id ``"<op_id>"``: ``{"text", "question", "pattern", "bases", "base_questions",
    "base_answers"}``, fingerprinted by the memo hash of its composition call) exists exactly for the CONTEXT rows
    present, and a base row (the inner operator's, ``"<op_id>/base"``) exists exactly while some composite's
    ``bases`` names it: the base rows are reference-counted by the composites, recounted from their entries at every
    version, and the last composite gone deletes its bases (cascade). ``base_answers`` are the texts its answer read.
    """

    kind: ClassVar[str] = "llm_compose"
    roles: ClassVar[tuple[str, ...]] = ("context", "data_source")

    def __init__(
        self,
        op_id: str,
        prompt: str,
        *,
        decompose: Mapping[str, Sequence[str]] | str,
        question: str,
        document: str,
        retrieve: int | str = "all",
        strategy: str = "auto",
        refresh: str = "on_change",
        out: str = "answer",
        max_tokens: int = 64,
        shadow: float = 0.0,
        append_budget: int = 256,
        partition: str | None = None,
    ):
        if partition in (BASE_QUESTION, BASE_ANSWER):
            raise SchemaError(f"decompose cannot partition by a column named {partition!r}: the base questions use "
                              "that name; rename the column")
        self.decompositions = parse_decompose(decompose)
        # Validates prompt, retrieve, strategy, refresh, shadow and the document template.
        self.base = GenerateOperator(
            f"{op_id}/base", prompt, question="{" + BASE_QUESTION + "}", document=document, retrieve=retrieve,
            strategy=strategy, refresh=refresh, out=BASE_ANSWER, max_tokens=max_tokens, shadow=shadow,
            append_budget=append_budget, partition=partition)
        if not isinstance(out, str) or not out.isidentifier():
            raise SchemaError(f"Output column name {out!r} is not an identifier")
        self.op_id = op_id
        self.prompt = prompt
        self.question = CompositeQuestion(question, self.decompositions)
        self.document = self.base.document
        self.out = out
        self.max_tokens = max_tokens
        self.partition = partition

    def output_columns_by_role(self, columns: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
        return (*[c for c in columns["context"] if c != self.out], self.out)

    def check_columns_by_role(self, columns: Mapping[str, Sequence[str]], *, where: str) -> None:
        self.question.check(columns["context"], where=f"the CONTEXT of {where}")
        self.document.check(columns["data_source"], where=f"the DATA_SOURCE of {where}")

    # --- Public API -----------------------------------------------------------------------------------------------
    def decompose(self, row: Row) -> _Asked:
        """A CONTEXT row's question, the pattern it matches and its base questions (itself when none matches)."""
        question = self.question.render(row)
        pattern, texts = None, [question]
        # As asked first; then rewritten (a paraphrase of a declared phrasing, entities in sorted order), so that a
        # question finds the base questions of a pattern declared in other words.
        for asked, rewritten in ((question, False), (REWRITER.rewrite(question), True)):
            d, slots = next(((d, s) for d in self.decompositions
                             if (s := d.match(asked, rewritten=rewritten)) is not None), (None, None))
            if d is not None:
                pattern, texts = d.pattern, [base.render({**row, **slots}) for base in d.bases]
                break
        part = {} if self.partition is None else {self.partition: row.get(self.partition)}
        prefix = "base: " if self.partition is None else f"base[{json.dumps(part[self.partition])}]: "
        found: dict[RowKey, tuple[str, Row]] = {}
        for text in texts:
            text = " ".join(text.split())
            found.setdefault(encode_key(prefix + normalise_text(text)), (text, {BASE_QUESTION: text, **part}))
        return _Asked(question, pattern, tuple(found), tuple(q for q, _ in found.values()),
                      tuple(r for _, r in found.values()))

    def build_request(self, question: str, facts: Sequence[tuple[str, str]]) -> CompletionRequest:
        """The composition call: the base questions with their answers, then the composite question."""
        lines = "\n".join(f"- {q} {a}" for q, a in facts)
        user = f"Facts:\n{lines}\n\nQuestion: {question}\nAnswer briefly."
        return CompletionRequest((Message("system", self.prompt), Message("user", user)), self.max_tokens)

    def apply_inputs(self, inputs: dict[str, list[Delta]], ctx: OperatorContext) -> list[Delta]:
        state = ctx.store.get_all_state(ctx.view)
        stored = {key: e for (op, key), e in state.items() if op == self.op_id}
        asked = {key: self._asked_of(e) for key, e in stored.items()}  # every composite after this version
        work: dict[RowKey, _Work] = {}
        out: list[Delta] = []
        for delta in inputs.get("context", []):
            old = stored.get(delta.key)
            before_out = self._output_for(delta.before, old)
            if delta.forget or delta.after is None:
                asked.pop(delta.key, None)
                work.pop(delta.key, None)
                retracted = retract(self.op_id, delta, old, before_out, ctx)
                if retracted:
                    out.append(retracted)
                    if not retracted.forget:
                        self._decide(ctx, delta.key, "retract", "its CONTEXT row was deleted")
                continue
            asked[delta.key] = a = self.decompose(delta.after)
            reason = "refresh" if ctx.building else "insert" if old is None else "update"
            why = {"refresh": "the view was built", "insert": "a new CONTEXT row"}.get(reason) or (
                "its question changed" if old.value.get("question") != a.question else "its CONTEXT row changed")
            work[delta.key] = _Work(delta.after, a, before_out, old, reason, why)
        answers, changed = self._refresh_bases(asked, state, inputs.get("data_source", []), ctx)
        for key, a in asked.items():
            if key in work:
                continue
            old = stored[key]
            moved = [q for b, q in zip(a.bases, a.base_questions) if b in changed]
            if old.error is not None or moved:
                why = "its last call failed" if old.error is not None and not moved else \
                    "the answer to " + ", ".join(repr(q) for q in moved) + " changed"
                work[key] = _Work(old.input_row, a, self._output_for(old.input_row, old), old,
                                  "retry" if old.error is not None else "update", why)
        return out + self._compose(work, answers, ctx)

    def describe_output(self, key: RowKey, state: dict[tuple[str, RowKey], StateEntry]) -> dict[str, Any] | None:
        """One composite's decomposition, for ``explain``: its pattern, and per base question its key, the text it
        rendered, the answer it read and that answer's provenance (documents decoded, as ``explain`` gives keys)."""
        entry = state.get((self.op_id, key))
        if entry is None or entry.value is None:
            return None
        v = entry.value
        bases = []
        for base, question, answer in zip(v["bases"], v["base_questions"], v["base_answers"]):
            provenance = self.base.describe_output(base, state)
            for source in (provenance or {}).get("provenance", ()):
                source["doc"] = decode_key(source["doc"])
            bases.append({"key": decode_key(base), "question": question, "answer": answer,
                          "provenance": provenance})
        return {"decomposition": {"pattern": v["pattern"], "bases": bases}}

    # --- Internal helpers -----------------------------------------------------------------------------------------
    def _asked_of(self, entry: StateEntry) -> _Asked:
        v = entry.value
        part = {} if self.partition is None else {self.partition: entry.input_row.get(self.partition)}
        return _Asked(v["question"], v["pattern"], tuple(v["bases"]), tuple(v["base_questions"]),
                      tuple({BASE_QUESTION: q, **part} for q in v["base_questions"]))

    def _refresh_bases(self, asked: dict[RowKey, _Asked], state: dict[tuple[str, RowKey], StateEntry],
                       data: list[Delta], ctx: OperatorContext,
                       ) -> tuple[dict[RowKey, tuple[str | None, str | None]], set[RowKey]]:
        """Bring the base rows in line with the composites (the least of the texts that ask a base is its
        question, so the rows depend only on the composites present) and run the inner operator on them and on
        DATA_SOURCE. Returns every base's ``(answer, error)`` after this version, and the bases whose output changed."""
        wanted: dict[RowKey, Row] = {}
        for a in asked.values():
            for base, row in zip(a.bases, a.base_rows):
                if base not in wanted or row[BASE_QUESTION] < wanted[base][BASE_QUESTION]:
                    wanted[base] = row
        stored = {key: e for (op, key), e in state.items() if op == self.base.op_id}
        deltas = []
        for base in sorted(wanted.keys() | stored.keys(), key=key_order):
            before = stored[base].input_row if base in stored else None
            if before != wanted.get(base):
                deltas.append(Delta(base, before, wanted.get(base)))
        answers = {key: (None, e.error) if e.error is not None else ((e.value or {}).get("text"), None)
                   for key, e in stored.items()}
        changed: set[RowKey] = set()
        for delta in self.base.apply_on({"context": deltas, "data_source": data}, ctx, state):
            changed.add(delta.key)
            if delta.after is None:
                answers.pop(delta.key, None)
            else:
                answers[delta.key] = (delta.after.get(BASE_ANSWER), delta.after.get(ERROR_COLUMN))
        return answers, changed

    def _compose(self, work: dict[RowKey, _Work], answers: dict[RowKey, tuple[str | None, str | None]],
                 ctx: OperatorContext) -> list[Delta]:
        """Compose each composite in ``work`` whose prompt changed (one batch of calls); return its output deltas."""
        model = ctx.runner.backend.model_id
        entries: dict[RowKey, StateEntry] = {}
        calls: list[tuple[RowKey, str, CallSpec, dict]] = []
        for key in sorted(work, key=key_order):
            w, a = work[key], work[key].asked
            assert all(b in answers for b in a.bases), f"{self.op_id}: a base of {key} has no inner output"
            read = [answers[b] for b in a.bases]
            value = {"question": a.question, "pattern": a.pattern, "bases": list(a.bases),
                     "base_questions": list(a.base_questions), "base_answers": [text for text, _e in read]}
            failed = next(((q, e) for q, (_t, e) in zip(a.base_questions, read) if e is not None), None)
            if failed is not None:
                error = f"base question {failed[0]!r} failed: {failed[1]}"
                entries[key] = StateEntry(key, "base-failed", w.row, {**value, "text": None}, error, CallCost())
                if w.old is None or w.old.error != error:
                    self._decide(ctx, key, "compose", f"{w.why}; {error} (no call)")
            elif a.pattern is None:
                text = read[0][0]
                digest = hashlib.sha256(json.dumps(["direct", a.question, text]).encode()).hexdigest()
                entries[key] = StateEntry(key, digest, w.row, {**value, "text": text}, None, CallCost())
                if w.old is None or w.old.fingerprint != digest:
                    self._decide(ctx, key, "direct", f"{w.why}; it matches no decomposition pattern, so it is its "
                                                     f"own base question {a.base_questions[0]!r} (no call)")
            else:
                request = self.build_request(a.question, [(q, t) for q, (t, _e) in zip(a.base_questions, read)])
                h = call_hash(model, request)
                old = w.old
                if old is not None and old.error is None and old.fingerprint == h:  # the same prompt: kept
                    entries[key] = StateEntry(key, h, w.row, {**value, "text": old.value["text"]}, None, old.cost)
                else:
                    calls.append((key, h, CallSpec(request, w.reason), value))
        results = ctx.run_calls(self.op_id, [spec for _k, _h, spec, _v in calls])
        for (key, h, _spec, value), result in zip(calls, results, strict=True):
            w, c = work[key], result.completion
            why = f"{w.why}; composed from " + ", ".join(repr(q) for q in w.asked.base_questions)
            if c is None:
                entries[key] = StateEntry(key, h, w.row, {**value, "text": None}, result.error, result.cost)
            else:
                entries[key] = StateEntry(key, h, w.row, {**value, "text": c.text.strip()}, None, result.cost)
            paid = c is not None and not result.memo_hit
            why += "; an identical call was answered before" if result.memo_hit else ""
            self._decide(ctx, key, "compose", why, calls=int(paid), prompt_tokens=c.prompt_tokens if paid else 0,
                         reused_tokens=c.reused_tokens if paid else 0, output_tokens=c.output_tokens if paid else 0,
                         seconds=c.seconds if paid else 0.0)
        out = []
        for key in sorted(work, key=key_order):
            w, entry = work[key], entries[key]
            if entry != w.old:
                ctx.put_state(self.op_id, entry)
            out.append(Delta(key, w.before_out, self._output_for(w.row, entry)))
        return [d for d in out if d.before != d.after]

    def _decide(self, ctx: OperatorContext, key: RowKey, strategy: str, reason: str, **cost) -> None:
        ctx.commit.decisions.append(Decision(ctx.view, key, ctx.version, strategy, reason, **cost))

    def _output_for(self, row: Row | None, entry: StateEntry | None) -> Row | None:
        if row is None or entry is None:
            return None
        if entry.error is not None:
            return {**row, self.out: None, ERROR_COLUMN: entry.error}
        return {**row, self.out: entry.value.get("text")}


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """The regex of a pattern: literal text case-insensitively, a whitespace run for a space, a trailing ``?``
    optional, each slot the shortest non-empty text that lets the whole question match (a repeated slot the same)."""
    body = unicodedata.normalize("NFKC", pattern).strip()
    body = body[:-1].rstrip() if body.endswith("?") else body
    parts, seen = [r"\s*"], set()
    for literal, name, _spec, _conversion in string.Formatter().parse(body):
        parts.extend(r"\s+" if piece.isspace() else re.escape(piece) for piece in re.split(r"(\s+)", literal))
        if name is not None:
            parts.append(f"(?P={name})" if name in seen else rf"(?P<{name}>\S(?:.*?\S)?)")
            seen.add(name)
    parts.append(r"\s*\??\s*")
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)
