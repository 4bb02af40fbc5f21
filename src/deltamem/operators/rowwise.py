"""The per-row semantic operators: ``sem_filter``, ``sem_map`` and ``sem_extract``.

    papers.sem_filter("{abstract} is about database systems").sem_map("State the key insight of {abstract}", out="insight")

Each makes at most one model call per input row and keeps its output keyed like its input. Cost per change:

=========  ===================================================================================================
insert     1 call (0 on a memo hit: the same prompt was answered before, by any row, in any run)
update     1 call if the rendered prompt changed; 0 if only columns the template does not read changed
delete     0 calls: the stored value is replayed to retract the output
failure    retried with backoff; then stored as an error that the view shows in ``_error``; retried at the next
           refresh
=========  ===================================================================================================

A row that arrives with ``_error`` set (an upstream call failed) passes through without a call.
"""

from __future__ import annotations

import abc
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from deltamem.changes import ERROR_COLUMN, Delta, Row
from deltamem.errors import SchemaError
from deltamem.llm.base import CompletionRequest, Message
from deltamem.llm.memo import call_hash
from deltamem.llm.runner import CallSpec
from deltamem.operators.base import Operator, OperatorContext, retract
from deltamem.operators.template import Template
from deltamem.store.base import StateEntry

PASSTHROUGH = "passthrough"  # fingerprint of an entry whose input carried an upstream error: no call was made


class RowwiseOperator(Operator):
    """Base of the per-row operators.

    State, per operator: ``{key: StateEntry}``. Invariant: an entry exists for a key exactly when the key's current
    input row reached this operator, ``entry.input_row`` is that row, and ``entry.fingerprint`` is the memo hash of
    the call its value came from. ``entry.value`` is ``{"value": parsed, "raw": completion text}``.
    """

    kind: ClassVar[str]
    reads_state_through_context = True

    def __init__(self, op_id: str, instruction: str, *, max_tokens: int):
        self.op_id = op_id
        self.template = Template(instruction)
        self.max_tokens = max_tokens

    def check_columns(self, input_columns: Sequence[str], *, where: str) -> None:
        self.template.check(input_columns, where=where)

    # --- what each operator defines -------------------------------------------------------------------------
    @abc.abstractmethod
    def build_request(self, prompt: str) -> CompletionRequest:
        """The call for one rendered instruction."""

    @abc.abstractmethod
    def parse(self, text: str) -> Any:
        """The value of one completion."""

    @abc.abstractmethod
    def derive(self, row: Row, value: Any, error: str | None) -> Row | None:
        """The output row for an input row, given its stored value (``None``: the row is not in the output)."""

    # --- shared maintenance -------------------------------------------------------------------------------------
    def output_for(self, row: Row | None, entry: StateEntry | None) -> Row | None:
        if row is None or entry is None:
            return None
        if entry.fingerprint == PASSTHROUGH:
            return self.derive(row, None, None) if self.kind != "sem_filter" else dict(row)
        value = None if entry.value is None else entry.value["value"]
        return self.derive(row, value, entry.error)

    def apply(self, deltas: Sequence[Delta], ctx: OperatorContext) -> list[Delta]:
        stored = ctx.get_state(self.op_id, [d.key for d in deltas])

        def model() -> str:  # asked for only when a call is hashed: a build over no rows must not load a model
            return ctx.runner.backend.model_id

        out: list[Delta] = []
        pending: list[tuple[Delta, Row | None, CallSpec, str]] = []  # (delta, output before, call, hash)
        for delta in deltas:
            old = stored.get(delta.key)
            before_out = self.output_for(delta.before, old)
            if delta.forget or delta.after is None:
                retracted = retract(self.op_id, delta, old, before_out, ctx)
                out += [retracted] if retracted else []
                continue
            if delta.after.get(ERROR_COLUMN) is not None:
                entry = StateEntry(delta.key, PASSTHROUGH, delta.after, None)
                ctx.put_state(self.op_id, entry)
                out.append(Delta(delta.key, before_out, self.output_for(delta.after, entry)))
                continue
            request = self.build_request(self.template.render(delta.after))
            h = call_hash(model(), request)
            if old is not None and old.fingerprint == h and old.error is None:
                if old.input_row != delta.after:
                    ctx.put_state(self.op_id, StateEntry(delta.key, h, delta.after, old.value, None, old.cost))
                out.append(Delta(delta.key, before_out, self.output_for(delta.after, old)))
                continue
            reason = "refresh" if ctx.building else "insert" if old is None else "retry" if old.error else "update"
            pending.append((delta, before_out, CallSpec(request, reason, call_hash=h), h))

        touched = {d.key for d in deltas}
        for failed in ctx.get_failed_state(self.op_id):
            if failed.key not in touched:
                row = failed.input_row
                request = self.build_request(self.template.render(row))
                retry = Delta(failed.key, row, row)
                h = call_hash(model(), request)
                pending.append((retry, self.output_for(row, failed), CallSpec(request, "retry", call_hash=h), h))

        results = ctx.run_calls(self.op_id, [spec for _d, _b, spec, _h in pending])
        for (delta, before_out, _spec, h), result in zip(pending, results, strict=True):
            assert delta.after is not None, "rowwise: only rows with an after-image are sent to the model"
            if result.completion is None:
                entry = StateEntry(delta.key, h, delta.after, None, result.error, result.cost)
            else:
                text = result.completion.text
                entry = StateEntry(delta.key, h, delta.after, {"value": self.parse(text), "raw": text}, None, result.cost)
            ctx.put_state(self.op_id, entry)
            out.append(Delta(delta.key, before_out, self.output_for(delta.after, entry)))
        return [d for d in out if d.forget or d.before != d.after]


class SemFilter(RowwiseOperator):
    """Keep the rows for which the model judges the instruction true.

    An answer that starts with neither true/yes nor false/no becomes ``default`` (False unless given).
    """

    kind = "sem_filter"
    SYSTEM = "You are a careful annotator. Read the claim and reply with one word, True or False."

    def __init__(self, op_id: str, instruction: str, *, default: bool = False, max_tokens: int = 4):
        super().__init__(op_id, instruction, max_tokens=max_tokens)
        self.default = default

    def output_columns(self, input_columns: Sequence[str]) -> tuple[str, ...]:
        return tuple(input_columns)

    def build_request(self, prompt: str) -> CompletionRequest:
        user = f"Claim: {prompt}\nIs the claim true? Answer True or False."
        return CompletionRequest((Message("system", self.SYSTEM), Message("user", user)), self.max_tokens)

    def parse(self, text: str) -> bool:
        return parse_bool(text, self.default)

    def derive(self, row: Row, value: Any, error: str | None) -> Row | None:
        if error is not None:
            return {**row, ERROR_COLUMN: error}
        return dict(row) if value else None


class SemMap(RowwiseOperator):
    """Add column ``out``: the model's answer to the instruction for each row."""

    kind = "sem_map"
    SYSTEM = "Follow the instruction about the given text. Answer concisely, with no preamble."

    def __init__(self, op_id: str, instruction: str, *, out: str, max_tokens: int = 64):
        super().__init__(op_id, instruction, max_tokens=max_tokens)
        if not out.isidentifier():
            raise SchemaError(f"Output column name {out!r} is not an identifier")
        self.out = out

    def output_columns(self, input_columns: Sequence[str]) -> tuple[str, ...]:
        return (*[c for c in input_columns if c != self.out], self.out)

    def build_request(self, prompt: str) -> CompletionRequest:
        return CompletionRequest((Message("system", self.SYSTEM), Message("user", prompt)), self.max_tokens)

    def parse(self, text: str) -> str:
        return text.strip()

    def derive(self, row: Row, value: Any, error: str | None) -> Row | None:
        result = {**row, self.out: value}
        return {**result, ERROR_COLUMN: error} if error is not None else result


class SemExtract(RowwiseOperator):
    """Add one column per named field, extracted by the model as a JSON object; a field it omits becomes None."""

    kind = "sem_extract"

    def __init__(self, op_id: str, instruction: str, *, fields: Mapping[str, str], max_tokens: int = 128):
        super().__init__(op_id, instruction, max_tokens=max_tokens)
        if not fields:
            raise SchemaError("sem_extract needs at least one field, e.g. fields={'year': 'the year it happened'}")
        for name in fields:
            if not isinstance(name, str) or not name.isidentifier():
                raise SchemaError(f"Field name {name!r} is not an identifier")
        self.fields = dict(fields)

    def output_columns(self, input_columns: Sequence[str]) -> tuple[str, ...]:
        return (*[c for c in input_columns if c not in self.fields], *self.fields)

    def build_request(self, prompt: str) -> CompletionRequest:
        keys = ", ".join(self.fields)
        system = f"Extract the requested fields from the text. Reply with a JSON object with the keys {keys}."
        described = "\n".join(f"- {name}: {text}" for name, text in self.fields.items())
        user = f"{prompt}\n\nFields:\n{described}"
        return CompletionRequest((Message("system", system), Message("user", user)), self.max_tokens)

    def parse(self, text: str) -> dict[str, Any]:
        return parse_fields(text, list(self.fields))

    def derive(self, row: Row, value: Any, error: str | None) -> Row | None:
        value = value or {}
        result = {**row, **{name: value.get(name) for name in self.fields}}
        return {**result, ERROR_COLUMN: error} if error is not None else result


# --- parsing -------------------------------------------------------------------------------------------------------

_TRUE = ("true", "yes")
_FALSE = ("false", "no")


def parse_bool(text: str, default: bool) -> bool:
    """True/False from a free-text verdict: its first word decides, else the first verdict word in it, else default.

    >>> parse_bool("True.", False), parse_bool("The claim is false", True), parse_bool("maybe", False)
    (True, False, False)
    """
    words = re.findall(r"[a-z]+", text.lower())
    if words and words[0] in _TRUE + _FALSE:
        return words[0] in _TRUE
    for word in words:
        if word in ("true", "false"):
            return word == "true"
    return default


def parse_fields(text: str, names: list[str]) -> dict[str, Any]:
    """The named fields from a JSON object in ``text`` (or from ``name: value`` lines when there is none).

    >>> parse_fields('Sure: {"year": 1999, "city": "Oslo"}', ["year", "city", "x"])
    {'year': 1999, 'city': 'Oslo', 'x': None}
    """
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            found = json.loads(text[start : end + 1])
        except json.JSONDecodeError:
            found = None
        if isinstance(found, dict):
            return {name: found.get(name) for name in names}
    lines = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            lines[name.strip(" -*\"'").lower()] = value.strip(" \"'")
    return {name: lines.get(name.lower()) for name in names}
