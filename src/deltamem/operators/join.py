"""``sem_join``: the pairs of two relations' rows for which the model judges an instruction true, kept fresh.

    sequels = db.table("films").sem_join(db.table("books"), "{title:left} is a sequel of {title:right}", candidates=5)

Invariant: a pair's verdict is stored once it is asked and stays until one of its two rows is deleted or changes what
the template reads; the view holds exactly the stored pairs whose verdict is true (or failed, shown with ``_error``).

The template names each column with its side, ``{title:left}`` or ``{title:right}``, and reads at least one column
of each side. An output row is keyed by the pair (its key is the JSON text ``[left key, right key]``, e.g.
``"[1, 7]"``); its columns are the left row's, then the right row's, where a right column whose name is taken gets
the suffix ``_right`` (repeated until the name is free, right columns taken in sorted order): ``id``, ``title``,
``id_right``, ``title_right``.

Cost per change, in model calls (L left rows, R right rows; a memo hit is requested but not paid):

=================================  =========================  ===================================================
change                             ``candidates=None``        ``candidates=m``
=================================  =========================  ===================================================
build from scratch                 L x R                      at most m x (L + R), each pair asked once
insert of a row                    one per row of the other   min(m, rows of the other side), plus one embedding
                                   side
update of a column the template    as an insert; the row's    as an insert; the row's old pairs are retracted
reads                              old pairs are retracted
update of any other column         0: verdicts reused         0: verdicts (and the embedding) reused
delete                             0: pairs retracted         0: pairs retracted
failed call                        retried with backoff, then stored as the pair's error (the pair's row shows
                                   ``_error``) and retried at the next refresh
=================================  =========================  ===================================================

Blocking rule (``candidates=m``): when a row's text arrives (an insert, or an update that changes what the template
reads of it) it is compared with the m rows of the other side most similar to it, among the rows present then:
cosine of the embeddings of each row's side of the template, ties broken by key order. Rows arriving in the same
version each pick their m nearest; a pair picked from both ends is asked once. A pair is never re-picked later. An
embedding that still fails after its retries fails the version (the row could not pick its candidates); maintenance
retries the view later.

Guarantees:

1. ``candidates=None``: the view always equals a from-scratch build over the current rows (the full join).
2. ``candidates=m``: every output pair carries the model's verdict for that very pair, so the view is contained in
   the full join; a from-scratch build (every row arriving at once) gives the union of every row's m nearest. The
   incremental view holds the pairs asked under the rule above, which depend on the order rows arrived in; it
   equals the from-scratch build when every current row arrived in one version, or if neither side ever held
   more than m rows. Otherwise:

   a. a pair (x, y) is missing when y arrived after x, y is among x's m nearest now, but x was not among y's when y
      arrived (y probes its own m nearest only, so an insert costs at most m calls);
   b. a pair is kept when later arrivals push y out of x's m nearest (its verdict is paid for and still right);
   c. deleting a row does not refill the slots it held in other rows' m nearest (so a delete costs nothing).

NOTE(sem_join): no rule can keep both cost targets and also match a from-scratch build. Any rule that depends only on
the current rows and asks every pair while the other side has at most m rows pays on some delete: with right rows
r1 .. r(m+1) present, a new left row l asks at most m pairs, say not (l, r(m+1)); after deleting r1 the right side has
m rows, so (l, r(m+1)) must be asked now. We keep the costs; to re-block from scratch, define the view again under a
new name (pairs asked before are memo hits). A row whose input carries ``_error`` (an upstream failure) joins no pair.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from deltamem.changes import ERROR_COLUMN, Delta, Row, RowKey, decode_key, encode_key, key_order
from deltamem.errors import SchemaError, TemplateError, did_you_mean
from deltamem.llm.memo import call_hash
from deltamem.llm.runner import CallSpec
from deltamem.operators.base import MultiInputOperator, OperatorContext
from deltamem.operators.rowwise import SemFilter
from deltamem.store.base import StateEntry
from deltamem.store.state_vectors import Vector

ROLES = ("left", "right")
SUFFIX = "_right"  # appended to a right column whose name the output already has
UNJOINABLE = "upstream-error"  # fingerprint of a side row that arrived with ``_error`` set: it joins no pair
SCORE_DECIMALS = 6  # scores are rounded so that float noise cannot reorder equal ones (key order decides); float32
# embeddings carry about 7 significant digits, so nothing finer means anything


def pair_key(left: RowKey, right: RowKey) -> RowKey:
    """The output key of a pair: the JSON text of ``[left key, right key]``.

    >>> pair_key(encode_key(1), encode_key("b"))
    '"[1, \\\\"b\\\\"]"'
    """
    return encode_key(json.dumps([decode_key(left), decode_key(right)]))


def right_names(left_columns: Sequence[str], right_columns: Sequence[str]) -> dict[str, str]:
    """The output name of each right column: its own, or with ``_right`` appended until it is free.

    Right columns are renamed in sorted order, so the result does not depend on the order rows list their columns.

    >>> right_names(["id", "title"], ["id", "year"])
    {'id': 'id_right', 'year': 'year'}
    """
    taken = set(left_columns) | set(right_columns)
    names: dict[str, str] = {}
    for column in sorted(right_columns):
        if column not in left_columns:
            names[column] = column
            continue
        name = column + SUFFIX
        while name in taken:
            name += SUFFIX
        taken.add(name)
        names[column] = name
    return names


class JoinTemplate:
    """A join instruction: ``{column:left}`` and ``{column:right}`` placeholders, literal braces doubled.

    ``parts`` is the text as (literal, placeholder) pairs, a placeholder being ``(side, column)`` or None;
    ``columns`` maps each side to the columns it reads, in order of first use.

    >>> JoinTemplate("{title:left} is a sequel of {title:right}").render({"title": "B"}, {"title": "A"})
    'B is a sequel of A'
    """

    def __init__(self, text: str):
        if not isinstance(text, str) or not text.strip():
            raise TemplateError(f"Join template {text!r} is empty; write one such as "
                                "'{title:left} is a sequel of {title:right}'")
        self.text = text
        parts: list[tuple[str, tuple[str, str] | None]] = []
        columns: dict[str, list[str]] = {side: [] for side in ROLES}
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:  # unbalanced braces
            raise TemplateError(f"Join template {text!r} is malformed ({exc}); write literal braces as {{{{ and }}}}"
                                ) from None
        for literal, name, side, conversion in parsed:
            if name is None:
                parts.append((literal, None))
                continue
            shown = "{" + (name or "") + ("!" + conversion if conversion else "") + (":" + side if side else "") + "}"
            if not name or not name.isidentifier() or conversion:
                raise TemplateError(f"Join template {text!r} has the placeholder {shown}; placeholders are a column "
                                    "and its side, such as {title:left}")
            if not side:
                raise TemplateError(f"Join template {text!r} has the placeholder {shown} without a side; write "
                                    f"{{{name}:left}} or {{{name}:right}}")
            if side not in ROLES:
                raise TemplateError(f"Join template {text!r} has the placeholder {shown} with the unknown side "
                                    f"{side!r}." + did_you_mean(side, ROLES))
            parts.append((literal, (side, name)))
            if name not in columns[side]:
                columns[side].append(name)
        for side in ROLES:
            if not columns[side]:
                raise TemplateError(f"Join template {text!r} reads no column of the {side} side; name one as "
                                    f"{{column:{side}}}")
        self.parts = tuple(parts)
        self.columns: dict[str, tuple[str, ...]] = {side: tuple(names) for side, names in columns.items()}

    def check(self, columns: Mapping[str, Sequence[str]], *, where: str) -> None:
        """Raise ``TemplateError`` naming the first placeholder whose side lacks its column."""
        for side in ROLES:
            available = list(columns[side])
            for name in self.columns[side]:
                if name not in available:
                    raise TemplateError(f"Join template {self.text!r} reads {{{name}:{side}}}, a column the {side} "
                                        f"side of {where} does not have." + did_you_mean(name, available))

    def side_values(self, side: str, row: Row) -> list[str]:
        """The text of each column ``side`` reads, as the prompt shows it: what decides whether a verdict holds."""
        return [_as_text(row.get(name)) for name in self.columns[side]]

    def render(self, left: Row, right: Row) -> str:
        rows = {"left": left, "right": right}
        return "".join(literal + ("" if p is None else _as_text(rows[p[0]].get(p[1]))) for literal, p in self.parts)

    def __repr__(self) -> str:
        return f"JoinTemplate({self.text!r})"


class SemJoin(MultiInputOperator):
    """The ``sem_join`` operator.

    State, under three op ids (``<op_id>/left``, ``<op_id>/right`` and ``<op_id>``)::

        <op_id>/left   {left key:  StateEntry(fingerprint=hash of its side text, input_row=the row,
                                              value={"text": [str, ...] | None, "vec": Vector | None})}
        <op_id>/right  {right key: (the same)}
        <op_id>        {pair key:  StateEntry(fingerprint=memo hash of the verdict call,
                                              input_row={"left": left key, "right": right key},
                                              value={"value": bool, "raw": str} | None, error=str | None)}

    ``text`` is None for a row that arrived with ``_error`` (it joins nothing); ``vec`` is set only with
    ``candidates``. Invariant: a side entry exists exactly for the rows present on that side, with the current row;
    a pair entry exists only while both its rows do, and its verdict was asked for their current side texts.

    NOTE(sem_join): the embedder is not part of a side fingerprint; a database reopened with another embedder would
    score new vectors against old ones. TODO(sem_join): record the embedder id once views pin their backends.
    """

    kind: ClassVar[str] = "sem_join"
    roles: ClassVar[tuple[str, ...]] = ROLES

    def __init__(self, op_id: str, *, instruction: str, candidates: int | None = None, max_tokens: int = 4):
        if candidates is not None and (isinstance(candidates, bool) or not isinstance(candidates, int)
                                       or candidates < 1):
            raise SchemaError(f"candidates={candidates!r} is out of range; use None (ask every pair) or a number of "
                              "rows from 1 up")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise SchemaError(f"max_tokens={max_tokens!r} is out of range; use a number of tokens from 1 up")
        self.op_id = op_id
        self.template = JoinTemplate(instruction)
        self.candidates = candidates
        self.max_tokens = max_tokens
        self.side_ops = {side: f"{op_id}/{side}" for side in ROLES}
        # A verdict is a sem_filter call on the rendered claim: same prompt, same parsing, and so the same memo.
        self._verdict = SemFilter(op_id, "{claim}", max_tokens=max_tokens)
        self._names: dict[tuple[tuple[str, ...], tuple[str, ...]], dict[str, str]] = {}

    # --- schema -------------------------------------------------------------------------------------------------
    def output_columns_by_role(self, columns: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
        names = right_names(columns["left"], columns["right"])
        return (*columns["left"], *(names[c] for c in columns["right"]))

    def check_columns_by_role(self, columns: Mapping[str, Sequence[str]], *, where: str) -> None:
        self.template.check(columns, where=where)

    # --- maintenance --------------------------------------------------------------------------------------------
    def apply_inputs(self, inputs: dict[str, list[Delta]], ctx: OperatorContext) -> list[Delta]:
        state = ctx.store.get_all_state(ctx.view)  # read once: both sides and the verdicts live there
        op_side = {op: side for side, op in self.side_ops.items()}
        rows: dict[str, dict[RowKey, StateEntry]] = {side: {} for side in ROLES}
        verdicts: dict[RowKey, StateEntry] = {}
        for (op, key), entry in state.items():
            if op == self.op_id:
                verdicts[key] = entry
            elif op in op_side:
                rows[op_side[op]][key] = entry
        pairs_of: dict[str, dict[RowKey, set[RowKey]]] = {side: defaultdict(set) for side in ROLES}
        for pk, entry in verdicts.items():
            for side in ROLES:
                pairs_of[side][entry.input_row[side]].add(pk)

        # Every pair this version can touch belongs to a changed row or is retried: take its output from the stored
        # state now, before anything changes, so that its retraction is exactly what the view holds.
        retries = sorted((pk for pk, e in verdicts.items() if e.error is not None), key=key_order)
        before: dict[RowKey, Row | None] = {}
        for pk in [*retries, *(pk for side in ROLES for d in inputs.get(side, ()) for pk in pairs_of[side][d.key])]:
            if pk not in before:
                before[pk] = self._output_of(pk, rows, verdicts)

        touched: set[RowKey] = set()  # pairs whose output may change with their rows
        dropped: set[RowKey] = set()  # pairs whose verdict no longer holds: a row left or its side text changed
        forgotten: set[RowKey] = set()  # pairs of rows a TTL "keep" expiry freed: state goes, outputs stay
        probes: list[tuple[str, RowKey, str]] = []  # (side, key, call reason) of rows whose text arrived
        new_rows: list[tuple[str, StateEntry]] = []
        for side in ROLES:
            for delta in inputs.get(side, ()):
                old = rows[side].get(delta.key)
                mine = pairs_of[side][delta.key]
                if delta.forget or delta.after is None:
                    if old is not None:
                        ctx.delete_state(self.side_ops[side], delta.key)
                        del rows[side][delta.key]
                    (forgotten if delta.forget else dropped).update(mine)
                    continue
                upstream_error = delta.after.get(ERROR_COLUMN) is not None
                text = None if upstream_error else self.template.side_values(side, delta.after)
                if old is not None and old.value["text"] == text:
                    if old.input_row != delta.after:  # only columns the template does not read changed
                        kept = StateEntry(delta.key, old.fingerprint, delta.after, old.value)
                        rows[side][delta.key] = kept
                        ctx.put_state(self.side_ops[side], kept)
                    touched.update(mine)
                    continue
                dropped.update(mine)
                fingerprint = UNJOINABLE if text is None else _digest(json.dumps(text))
                entry = StateEntry(delta.key, fingerprint, delta.after, {"text": text, "vec": None})
                rows[side][delta.key] = entry
                new_rows.append((side, entry))
                if text is not None:
                    reason = "refresh" if ctx.building else "insert" if old is None else "update"
                    probes.append((side, delta.key, reason))

        for pk in dropped | forgotten:
            entry = verdicts.pop(pk, None)
            if entry is not None:
                ctx.delete_state(self.op_id, pk)
                for side in ROLES:
                    pairs_of[side][entry.input_row[side]].discard(pk)
        self._embed_new_rows(new_rows, rows, {(side, key): reason for side, key, reason in probes}, ctx)
        for side, entry in new_rows:
            ctx.put_state(self.side_ops[side], rows[side][entry.key])

        asked = self._ask(probes, retries, rows, verdicts, ctx)
        out: list[Delta] = [Delta(pk, None, None, forget=True) for pk in sorted(forgotten, key=key_order)]
        for pk in sorted((touched | dropped | asked) - forgotten, key=key_order):
            delta = Delta(pk, before.get(pk), self._output_of(pk, rows, verdicts))
            if delta.before != delta.after:
                out.append(delta)
        return out

    # --- internal helpers ---------------------------------------------------------------------------------------
    def _ask(self, probes: list[tuple[str, RowKey, str]], retries: list[RowKey],
             rows: dict[str, dict[RowKey, StateEntry]], verdicts: dict[RowKey, StateEntry],
             ctx: OperatorContext) -> set[RowKey]:
        """Ask each probing row's candidate pairs (each pair once) and the failed pairs again; store the verdicts
        in ``verdicts`` and the state, and return the pair keys asked."""
        wanted: dict[RowKey, tuple[RowKey, RowKey, str]] = {}  # pair key -> (left key, right key, reason)
        pools = {side: self._pool(rows[side]) for side in ROLES}
        for side, key, reason in probes:
            other = "right" if side == "left" else "left"
            for partner in self._candidates(rows[side][key], pools[other]):
                left, right = (key, partner) if side == "left" else (partner, key)
                pk = pair_key(left, right)
                if pk not in wanted:
                    assert pk not in verdicts, "sem_join: a probing row still had a verdict for one of its pairs"
                    wanted[pk] = (left, right, reason)
        for pk in retries:
            if pk in verdicts and pk not in wanted:
                entry = verdicts[pk]
                wanted[pk] = (entry.input_row["left"], entry.input_row["right"], "retry")

        model = ctx.runner.backend.model_id
        specs: list[CallSpec] = []
        hashes: list[str] = []
        for left, right, reason in wanted.values():
            claim = self.template.render(rows["left"][left].input_row, rows["right"][right].input_row)
            request = self._verdict.build_request(claim)
            specs.append(CallSpec(request, reason))
            hashes.append(call_hash(model, request))
        results = ctx.run_calls(self.op_id, specs)
        for (pk, (left, right, _reason)), h, result in zip(wanted.items(), hashes, results, strict=True):
            if result.completion is None:
                value, error = None, result.error
            else:
                value, error = {"value": self._verdict.parse(result.completion.text),
                                "raw": result.completion.text}, None
            entry = StateEntry(pk, h, {"left": left, "right": right}, value, error, result.cost)
            verdicts[pk] = entry
            ctx.put_state(self.op_id, entry)
        return set(wanted)

    def _pool(self, side_rows: dict[RowKey, StateEntry]) -> tuple[list[RowKey], np.ndarray | None]:
        """A side's joinable rows in key order, and (with ``candidates``) their vectors as one float64 matrix."""
        keys = sorted((k for k, e in side_rows.items() if e.value["text"] is not None), key=key_order)
        if self.candidates is None or not keys:
            return keys, None
        return keys, np.stack([np.asarray(side_rows[k].value["vec"], dtype=np.float64) for k in keys])

    def _candidates(self, entry: StateEntry, pool: tuple[list[RowKey], np.ndarray | None]) -> list[RowKey]:
        """The rows of the other side a probing row is compared with: all of them, or its m nearest (the pool is
        in key order and the sort is stable, so equal scores keep key order)."""
        keys, matrix = pool
        if self.candidates is None or len(keys) <= self.candidates:
            return keys
        scores = np.round(matrix @ np.asarray(entry.value["vec"], dtype=np.float64), SCORE_DECIMALS)
        return [keys[i] for i in np.argsort(-scores, kind="stable")[: self.candidates]]

    def _embed_new_rows(self, new_rows: list[tuple[str, StateEntry]], rows: dict[str, dict[RowKey, StateEntry]],
                        reasons: dict[tuple[str, RowKey], str], ctx: OperatorContext) -> None:
        """Give each new joinable row the embedding of its side text, in one batch (only with ``candidates``)."""
        if self.candidates is None:
            return
        todo = [(side, entry) for side, entry in new_rows if entry.value["text"] is not None]
        if not todo:
            return
        # A failure fails the view's version (a row that is not embedded cannot pick its candidates); maintenance
        # retries it.
        vectors = ctx.embed_or_raise(self.op_id, ["\n".join(entry.value["text"]) for _side, entry in todo],
                                     [reasons[(side, entry.key)] for side, entry in todo])
        # Embedders return L2-normalised rows, so a dot product is the cosine. A stored ``Vector`` keeps the float32
        # values exactly, so a stored vector scores as it did when fresh.
        for (side, entry), vector in zip(todo, np.asarray(vectors, dtype=np.float32), strict=True):
            value = {**entry.value, "vec": Vector(vector)}
            rows[side][entry.key] = StateEntry(entry.key, entry.fingerprint, entry.input_row, value)

    def _output_of(self, pk: RowKey, rows: dict[str, dict[RowKey, StateEntry]],
                   verdicts: dict[RowKey, StateEntry]) -> Row | None:
        """A pair's output row from the given state: the joined row if its verdict is true, with ``_error`` if its
        call failed, None otherwise."""
        verdict = verdicts.get(pk)
        if verdict is None:
            return None
        left = rows["left"].get(verdict.input_row["left"])
        right = rows["right"].get(verdict.input_row["right"])
        assert left is not None and right is not None, "sem_join: a stored verdict outlived one of its rows"
        if verdict.error is None and not verdict.value["value"]:
            return None
        joined = self._joined(left.input_row, right.input_row)
        return joined if verdict.error is None else {**joined, ERROR_COLUMN: verdict.error}

    def _joined(self, left: Row, right: Row) -> Row:
        shape = (tuple(left), tuple(right))
        names = self._names.get(shape)
        if names is None:
            names = self._names[shape] = right_names(list(left), list(right))
        return {**left, **{names[c]: v for c, v in right.items()}}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _as_text(value: Any) -> str:
    return "" if value is None else str(value)
