"""``sem_agg``: one digest of many rows (per group), kept fresh through a tree of partial summaries.

    digest = db.view("digest", insights.sem_agg("Write a digest of these insights: {insight}", fanout=8))

**Invariant.** A group's tree is a function of the set of its row keys alone, and every stored node summary answers
the prompt built from the node's children as they are now. So the maintained digest equals the one built from scratch
over the same rows, whatever order they arrived in (``fold=True`` is the one, documented, exception).

The tree is a prolly tree (a Merkle search tree over the keys)::

    level 3                       [............... root ...............]      the digest: the root's summary
    level 2           [.......... e ..........]     [....... i .......]
    level 1      [a b c] [d] [e ......]    [f g h i]         [j k]            a node's key: its last child's
    level 0       rows, by key_order: each element is (key, sig), sig changing whenever its content does

A level is cut into nodes left to right: a node closes after an element whose key hashes, salted by the level, to 0
mod ``fanout``, or when it holds ``3 * fanout`` children (the cap that keeps a prompt inside the context window). A
level of at most ``3 * fanout`` elements gets one node, the root. Nodes hold ``fanout`` children on average, and a
change moves at most the boundaries next to it. One model call summarises a node (level 1: the rows; above: the
child summaries), in one batch per level and group.

Cost per change, in calls (d = the depth: about ceil(log_f(N / 3f)) + 1). Measured on the test backend, N = 1024,
fanout 8 (d = 3): a build costs 143 to 165 calls by key set, and 100 random inserts, updates and deletes cost 3.2
calls each on average, 5 at most (``tests/unit/test_agg.py``):

===========  =======================================================================================================
build        one per node: about N / (f - 1)
insert       the d nodes on the row's path; one more per level where the new key is a boundary (a node splits,
             probability 1/f) or shifts a cap boundary; 0 paid when every such prompt was answered before (memo)
update       the path (d) when the rendered text changed; 0 when only columns the template does not read changed
delete       the path (d; one fewer per level where two nodes merge). Not 0: the digest without the row is a text
             no stored state holds, and each node above the row summarised it. 0 paid (memo hits only) when every
             rebuilt prompt was seen before: deleting a row that a recent insert added gives back the previous
             tree, node for node. 0 calls when the group becomes empty: its output row is retracted
failure      retried with backoff by the runner; then the node is stored with its error, the nodes above it are
             ``blocked`` (stored with the same error, no call), the output shows ``_error`` (and ``out`` None), and
             the failed node is called again at the next refresh
fold=True    insert: 1 call folding the row into the running digest; the tree keeps its shape, but the nodes that
             change are left ``pending`` (no call). An update or delete falls back to the tree: it summarises the
             pending nodes (the folded rows' paths) and its own path, in one version
===========  =======================================================================================================

**fold=True is order-dependent.** The folded digest depends on the order the rows arrived in (and on the model's
rewrites), so it is not the tree's digest; after an update or delete (or a failed fold call, at the next refresh)
the output is the tree's digest again, equal to a from-scratch build. A view is always built with the tree.

State, per operator (keys are JSON arrays, so none collides with a row key, which is a JSON scalar):

- ``row key``: the leaf; ``input_row`` the row, ``value = {"group", "text", "error"}``, ``fingerprint`` its sig.
- ``["node", group, level, last key]``: ``value = {"children": [[key, sig], ...], "summary"}``, ``fingerprint``
  its sig: the memo hash of its prompt, or ``failed:``, ``blocked:`` or ``pending:`` and a hash.
- ``["group", group]``: ``value = {"value", "counts": [rows, nodes per level...], "top": root key, "fold"}``.

A version writes only the entries that changed: its rows, the nodes on the changed paths and the group entry.

NOTEs. (1) A child's text in a prompt is clipped to ``PROMPT_WORDS / (3 * fanout)`` words, so a prompt fits a
4K-token context. (2) A row that arrives with ``_error`` blocks its group's digest until it is fixed: a failure is
never dropped silently. (3) TTL ``keep`` (a ``forget``) is a delete for the tree; with ``fold=True`` it removes the
row from the tree's shape only, and the digest stays.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from deltamem.changes import ERROR_COLUMN, Delta, Row, RowKey, encode_key, key_order
from deltamem.errors import SchemaError, did_you_mean
from deltamem.llm.base import CompletionRequest, Message
from deltamem.llm.memo import call_hash
from deltamem.llm.runner import CallSpec
from deltamem.operators.base import Operator, OperatorContext
from deltamem.operators.template import Template
from deltamem.store.base import CallCost, StateEntry

COUNT_COLUMN = "num_rows"  # the output's count of the rows under the digest
PROMPT_WORDS = 3072  # the words all children of one node may take in its prompt (about 4K tokens)
SYSTEM = "You write digests: one concise text that covers every item you are given, following the instruction."
FAILED, BLOCKED, PENDING = "failed:", "blocked:", "pending:"  # sig prefixes of a node without a usable summary
_order = functools.lru_cache(maxsize=1 << 16)(key_order)


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:32]


def _usable(sig: str) -> bool:
    """Whether a node with this sig has a summary a parent can read (not failed, blocked or pending)."""
    return not sig.startswith((FAILED, BLOCKED, PENDING))


def _clip(text: str, words: int) -> str:
    parts = text.split()
    return text if len(parts) <= words else " ".join(parts[:words]) + " ..."


def node_key(group: RowKey, level: int, key: RowKey) -> RowKey:
    return RowKey(json.dumps(["node", group, level, key]))


def group_key(group: RowKey) -> RowKey:
    return RowKey(json.dumps(["group", group]))


@dataclass(frozen=True)
class Elem:
    """One element of a level: a row (level 0) or a node (level >= 1), under its key (a node's: its last key).

    ``sig`` changes whenever its content does; ``text``/``error`` are None until loaded (old elements are read lazily).
    """

    key: RowKey
    sig: str
    text: str | None = None
    error: str | None = None

    @property
    def usable(self) -> bool:
        return _usable(self.sig)


@dataclass
class _GroupWork:
    """What one version does to one group: leaf changes (None: the row left), rows that entered, retry seeds."""

    changes: dict[RowKey, Elem | None] = field(default_factory=dict)
    entered: list[RowKey] = field(default_factory=list)
    num_rows_delta: int = 0
    tree: bool = False  # an update or delete (or a failed fold): fold=True falls back to the tree
    seeds: dict[int, set[RowKey]] = field(default_factory=lambda: defaultdict(set))  # level -> node keys to redo
    value: Any = None  # the group's value, when a row named it


class _Run:
    """One version's state access: old entries cached as read, new ones buffered (a key is written once, at the end,
    and only if it changed), so navigation always sees the tree as it was before the version."""

    def __init__(self, op_id: str, ctx: OperatorContext):
        self.op_id, self.ctx = op_id, ctx
        self.old: dict[RowKey, StateEntry | None] = {}
        self.new: dict[RowKey, StateEntry | None] = {}

    def read(self, keys: Iterable[RowKey]) -> dict[RowKey, StateEntry]:
        keys = list(keys)
        missing = [k for k in keys if k not in self.old]
        if missing:
            found = self.ctx.get_state(self.op_id, missing)
            self.old.update({k: found.get(k) for k in missing})
        return {k: e for k in keys if (e := self.old[k]) is not None}

    def current(self, key: RowKey) -> StateEntry | None:
        return self.new[key] if key in self.new else self.read([key]).get(key)

    def write(self, key: RowKey, entry: StateEntry | None) -> None:
        self.new[key] = entry

    def flush(self) -> None:
        for key, entry in self.new.items():
            if entry is None:
                if key not in self.old or self.old[key] is not None:
                    self.ctx.delete_state(self.op_id, key)
            elif key not in self.old or self.old[key] != entry:
                self.ctx.put_state(self.op_id, entry)


class _OldTree:
    """Navigation in one group's tree as it was before this version (levels 1..height, root key ``top``)."""

    def __init__(self, run: _Run, group: RowKey, height: int, top: RowKey | None):
        self.run, self.group, self.height, self.top = run, group, height, top

    def node(self, level: int, key: RowKey) -> StateEntry:
        entry = self.run.read([node_key(self.group, level, key)]).get(node_key(self.group, level, key))
        assert entry is not None, f"sem_agg: node {level}/{key} of group {self.group} is missing from the store"
        return entry

    def find(self, level: int, key: RowKey, *, after: bool = False) -> tuple[RowKey, StateEntry] | None:
        """The node at ``level`` whose key range holds ``key`` (the first with last key >= key, else the last one);
        with ``after``, the first node whose last key is > key, or None."""
        assert self.top is not None, "sem_agg: navigation in an empty tree"
        at, node_at, target = self.top, self.node(self.height, self.top), _order(key)
        if after and _order(at) <= target:
            return None
        for m in range(self.height, level, -1):
            children = [c for c, _sig in node_at.value["children"]]
            pick = next((c for c in children if (_order(c) > target if after else _order(c) >= target)), None)
            at = children[-1] if pick is None else pick
            node_at = self.node(m - 1, at)
        return at, node_at

    def first(self, level: int) -> tuple[RowKey, StateEntry]:
        assert self.top is not None, "sem_agg: navigation in an empty tree"
        at, node_at = self.top, self.node(self.height, self.top)
        for m in range(self.height, level, -1):
            at = node_at.value["children"][0][0]
            node_at = self.node(m - 1, at)
        return at, node_at

    def drop_from(self, level: int) -> None:
        """Delete every node at ``level`` and above (the tree got shallower, or empty)."""
        if self.top is None:
            return
        stack = [(self.height, self.top)]
        while stack:
            m, key = stack.pop()
            if m >= level:
                self.run.write(node_key(self.group, m, key), None)
            if m - 1 >= max(level, 1):
                stack += [(m - 1, c) for c, _sig in self.node(m, key).value["children"]]

    def pending(self) -> dict[int, set[RowKey]]:
        """The nodes folds left pending, by level: each is reachable from the root through pending nodes."""
        found: dict[int, set[RowKey]] = defaultdict(set)
        if self.top is None:
            return found
        stack = [(self.height, self.top)] if self.node(self.height, self.top).fingerprint.startswith(PENDING) else []
        while stack:
            m, key = stack.pop()
            found[m].add(key)
            if m > 1:
                stack += [(m - 1, c) for c, sig in self.node(m, key).value["children"] if sig.startswith(PENDING)]
        return found


class SemAgg(Operator):
    """One digest per group (or of all rows) by ``instruction``, a ``{column}`` template, over a tree of partial
    summaries of ``fanout`` children on average; ``fold=True`` folds each inserted row into the digest with one call.

    Output: one row per group keyed by the group value (``"all"`` without ``group_by``) with columns ``group_by``
    (if given), ``out`` (the digest) and ``num_rows``; ``_error`` when the digest could not be computed. An empty
    group has no row. A group value that is not a str or an int is keyed by its JSON text (None: ``"null"``).
    """

    kind = "sem_agg"

    def __init__(self, op_id: str, instruction: str, *, fanout: int = 8, fold: bool = False, out: str = "digest",
                 group_by: str | None = None, max_tokens: int = 128):
        self.op_id = op_id
        self.template = Template(instruction)
        if not self.template.columns:
            raise SchemaError(f"sem_agg instruction {instruction!r} names no column; write e.g. 'Digest {{insight}}'")
        if isinstance(fanout, bool) or not isinstance(fanout, int) or fanout < 2:
            raise SchemaError(f"sem_agg fanout {fanout!r} is not an int >= 2; the default is 8")
        if not isinstance(fold, bool):
            raise SchemaError(f"sem_agg fold {fold!r} is not True or False")
        if not isinstance(out, str) or not out.isidentifier() or out == COUNT_COLUMN:
            raise SchemaError(f"sem_agg output column {out!r} is not an identifier other than {COUNT_COLUMN!r}")
        if group_by is not None and (not isinstance(group_by, str) or group_by in (out, COUNT_COLUMN)):
            raise SchemaError(f"sem_agg group_by {group_by!r} is not a column name other than {out!r} and "
                              f"{COUNT_COLUMN!r}")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise SchemaError(f"sem_agg max_tokens {max_tokens!r} is not a positive int")
        self.fanout, self.fold, self.out, self.group_by, self.max_tokens = fanout, fold, out, group_by, max_tokens
        self.cap = 3 * fanout
        self.child_words = max(8, PROMPT_WORDS // self.cap)
        self.instruction = self.template.text.format_map({c: f"[{c}]" for c in self.template.columns})

    def check_columns(self, input_columns: Sequence[str], *, where: str) -> None:
        self.template.check(input_columns, where=where)
        if self.group_by is not None and self.group_by not in input_columns:
            raise SchemaError(f"sem_agg group_by {self.group_by!r} is not a column of {where}."
                              + did_you_mean(self.group_by, input_columns))

    def output_columns(self, input_columns: Sequence[str]) -> tuple[str, ...]:
        return (*([self.group_by] if self.group_by else []), self.out, COUNT_COLUMN)

    # --- prompts ------------------------------------------------------------------------------------------------
    def render_item(self, row: Row) -> str:
        """A row as one item of a prompt: the value of the template's column, or ``column: value`` pairs."""
        values = {c: "" if row.get(c) is None else str(row.get(c)) for c in self.template.columns}
        return next(iter(values.values())) if len(values) == 1 else "; ".join(f"{c}: {v}" for c, v in values.items())

    def node_request(self, level: int, texts: Sequence[str]) -> CompletionRequest:
        what = "items" if level == 1 else "partial digests, each covering some of the items"
        listing = "\n".join(f"{i}. {_clip(t, self.child_words)}" for i, t in enumerate(texts, 1))
        user = f"Instruction: {self.instruction}\n\nThe {what}:\n{listing}\n\nWrite one digest that covers all of them."
        return CompletionRequest((Message("system", SYSTEM), Message("user", user)), self.max_tokens)

    def fold_request(self, digest: str, item: str) -> CompletionRequest:
        user = (f"Instruction: {self.instruction}\n\nThe current digest:\n{_clip(digest, self.child_words)}\n\n"
                f"A new item:\n{_clip(item, self.child_words)}\n\nUpdate the digest with the new item; write it whole.")
        return CompletionRequest((Message("system", SYSTEM), Message("user", user)), self.max_tokens)

    # --- maintenance --------------------------------------------------------------------------------------------
    def _group_of(self, row: Row) -> tuple[RowKey, Any]:
        if self.group_by is None:
            return encode_key("all"), None
        value = row.get(self.group_by)
        plain = isinstance(value, (str, int)) and not isinstance(value, bool)
        return encode_key(value if plain else json.dumps(value, sort_keys=True)), value

    def apply(self, deltas: Sequence[Delta], ctx: OperatorContext) -> list[Delta]:
        run = _Run(self.op_id, ctx)
        leaves = run.read([d.key for d in deltas])
        work: dict[RowKey, _GroupWork] = defaultdict(_GroupWork)
        for delta in deltas:
            old, row = leaves.get(delta.key), None if delta.forget else delta.after
            old_group = None if old is None else old.value["group"]
            new_group, value = (None, None) if row is None else self._group_of(row)
            leaf = None
            if row is not None:
                text, error = self.render_item(row), row.get(ERROR_COLUMN)
                leaf = Elem(delta.key, FAILED + _hash(error) if error is not None else _hash(text), text, error)
                run.write(delta.key, StateEntry(delta.key, leaf.sig, row, {"group": new_group, "text": text,
                                                                           "error": error}))
            elif old is not None:
                run.write(delta.key, None)
            stays = old is not None and leaf is not None and old_group == new_group
            if stays and old.fingerprint == leaf.sig:
                continue  # only columns the template does not read changed: no tree change
            if old is not None and not stays:
                w = work[old_group]
                w.changes[delta.key], w.num_rows_delta = None, w.num_rows_delta - 1
                w.tree |= not delta.forget
            if leaf is not None:
                w = work[new_group]
                w.changes[delta.key], w.value = leaf, value
                if stays:
                    w.tree = True
                else:
                    w.entered.append(delta.key)
                    w.num_rows_delta += 1
        for failed in ctx.get_failed_state(self.op_id):  # retried at every refresh
            parsed = json.loads(failed.key)
            if parsed[0] == "node":
                work[parsed[1]].seeds[parsed[2]].add(parsed[3])
            else:
                work[parsed[1]].tree = True
        run.read(group_key(g) for g in work)
        out = []
        for group in sorted(work, key=_order):
            delta = self._apply_group(run, group, work[group])
            out += [delta] if delta is not None else []
        run.flush()
        return out

    def _apply_group(self, run: _Run, group: RowKey, w: _GroupWork) -> Delta | None:
        old_entry = run.read([group_key(group)]).get(group_key(group))
        meta = None if old_entry is None else old_entry.value
        tree = _OldTree(run, group, 0, None) if meta is None else \
            _OldTree(run, group, len(meta["counts"]) - 1, meta["top"])
        old_top = None if meta is None else tree.node(tree.height, tree.top)
        before = self._output(meta, old_top)
        digest = None if meta is None else (meta["fold"]["text"] if meta["fold"] else
                                           old_top.value["summary"] if old_top.error is None else None)
        folding = self.fold and digest is not None and not w.tree
        if not folding and meta is not None and meta["fold"] is not None:
            for level, keys in tree.pending().items():  # fall back to the tree: summarise what the folds left
                w.seeds[level] |= keys
        value = w.value if meta is None or w.value is not None else meta["value"]
        counts = self._update_tree(run, tree, w, [0] if meta is None else list(meta["counts"]), pending=folding)
        if counts is None:
            run.write(group_key(group), None)
            return None if before is None else Delta(group, before, None)
        fold, error = None, None
        if folding:
            for key in sorted(w.entered, key=_order):
                leaf = w.changes[key]
                assert leaf is not None and leaf.text is not None, "sem_agg: an entered row has no leaf"
                if leaf.error is not None:
                    error = leaf.error
                    break
                spec = CallSpec(self.fold_request(digest, leaf.text), "refresh" if run.ctx.building else "insert")
                (result,) = run.ctx.run_calls(self.op_id, [spec])
                if result.completion is None:
                    error = result.error
                    break
                digest = result.completion.text.strip()
            fold = {"text": None if error else digest, "error": error}
        top_key = counts.pop()
        meta = {"value": value, "counts": counts, "top": top_key, "fold": fold}
        run.write(group_key(group), StateEntry(group_key(group), "group", {}, meta, error))
        after = self._output(meta, run.current(node_key(group, len(counts) - 1, top_key)))
        return None if before == after else Delta(group, before, after)

    def _output(self, meta: dict | None, top: StateEntry | None) -> Row | None:
        if meta is None or top is None:
            return None
        fold = meta["fold"]
        text, error = (fold["text"], fold["error"]) if fold else (top.value["summary"], top.error)
        row = {self.group_by: meta["value"]} if self.group_by else {}
        row.update({self.out: text, COUNT_COLUMN: meta["counts"][0]})
        return {**row, ERROR_COLUMN: error} if error is not None else row

    def _update_tree(self, run: _Run, tree: _OldTree, w: _GroupWork, counts: list[int], *,
                     pending: bool) -> list[Any] | None:
        """Apply one version's row changes to a group's tree, level by level from the rows up. Return the new node
        counts per level followed by the root's key, or None when the group is now empty."""
        changes: dict[RowKey, Elem | None] = dict(w.changes)
        counts[0] += w.num_rows_delta
        full = sorted((e for e in changes.values() if e), key=lambda e: _order(e.key)) if tree.height == 0 else None
        made: list[Elem] = []  # the nodes made at the level below
        consumed: dict[RowKey, StateEntry] = {}  # the old nodes they replace
        level = 1
        while True:
            below = counts[level - 1]
            if below == 0:
                tree.drop_from(1)
                return None
            if level >= 2 and below == 1:  # the level below has one node: it is the root
                tree.drop_from(level)
                if full is not None or made:
                    root = (full or made)[0].key
                else:  # every node made was deleted; the one survivor is an old node
                    root, _entry = tree.first(level - 1)
                    while root in consumed:
                        found = tree.find(level - 1, root, after=True)
                        assert found is not None, "sem_agg: the node count of a level disagrees with its nodes"
                        root = found[0]
                return [*counts[:level], root]
            if not changes and full is None and not any(s for lv, s in w.seeds.items() if lv >= level):
                return [*counts, tree.top]  # nothing changed from here up
            single = below <= self.cap  # few enough to fit one prompt: one node, the root, summarises them all
            if level > tree.height:
                assert full is not None, "sem_agg: a level above the old root without its level below"
                chunks, consumed = ([list(full)] if single else self._chunk(full, level)), {}
            else:
                chunks, consumed = self._rechunk(tree, level, changes, w.seeds.get(level, set()), single=single)
            made = self._evaluate(run, tree.group, level, chunks, consumed, pending=pending)
            new_keys = {e.key for e in made}
            changes = {e.key: e for e in made if e.key not in consumed or consumed[e.key].fingerprint != e.sig}
            for key in consumed.keys() - new_keys:
                run.write(node_key(tree.group, level, key), None)
                changes[key] = None
            if level <= tree.height:
                counts[level] += len(made) - len(consumed)
            else:
                counts.append(len(made))
            full = made if level >= tree.height else None
            level += 1

    def _closes(self, key: RowKey, level: int, size: int) -> bool:
        digest = hashlib.sha256(f"{level}|{key}".encode()).digest()
        return size >= self.cap or int.from_bytes(digest[:8], "big") % self.fanout == 0

    def _chunk(self, elems: Sequence[Elem], level: int) -> list[list[Elem]]:
        chunks: list[list[Elem]] = [[]]
        for e in elems:
            chunks[-1].append(e)
            if self._closes(e.key, level, len(chunks[-1])):
                chunks.append([])
        return [c for c in chunks if c]

    def _rechunk(self, tree: _OldTree, level: int, changes: dict[RowKey, Elem | None], seeds: set[RowKey], *,
                 single: bool) -> tuple[list[list[Elem]], dict[RowKey, StateEntry]]:
        """Cut again the part of ``level`` that ``changes`` (to the level below) and ``seeds`` touch (``single``: the
        whole level, as one node).

        A run starts at the first old node touched, where the cut state is fresh (the node before closed where it
        did). It goes on until a node closes exactly where an old node ended: from there on both cuts agree."""
        touched: dict[RowKey, list[RowKey]] = defaultdict(list)  # old node key -> changed keys in its range
        old: dict[RowKey, StateEntry] = {}
        for key, is_seed in [*((k, False) for k in changes), *((k, True) for k in seeds)]:
            found = tree.find(level, key)
            assert found is not None, "sem_agg: find without after always finds a node"
            old[found[0]] = found[1]
            touched[found[0]] += [] if is_seed else [key]
        consumed: dict[RowKey, StateEntry] = {}
        chunks: list[list[Elem]] = []
        if single:
            first, old_first = tree.first(level)
            old = {first: old_first}
        for start in sorted(old, key=_order):
            if start in consumed:
                continue
            at, entry, buf = start, old[start], []
            while True:
                consumed[at] = entry
                kept = [Elem(k, sig) for k, sig in entry.value["children"] if k not in changes]
                added = [e for k in touched.get(at, []) if (e := changes[k]) is not None]
                for e in sorted(kept + added, key=lambda e: _order(e.key)):
                    buf.append(e)
                    if not single and self._closes(e.key, level, len(buf)):
                        chunks.append(buf)
                        buf = []
                if not buf and not single:
                    break  # closed where the old node ended: in step again
                found = tree.find(level, at, after=True)
                if found is None:
                    chunks += [buf] if buf else []  # the last node of the level closes at its end
                    break
                at, entry = found
        return chunks, consumed

    def _evaluate(self, run: _Run, group: RowKey, level: int, chunks: list[list[Elem]],
                  consumed: dict[RowKey, StateEntry], *, pending: bool) -> list[Elem]:
        """Store the nodes of ``chunks`` at ``level`` and return them as elements, calling the model (one batch) for
        each whose prompt changed; a node whose children are unchanged keeps its summary without a read."""
        made: list[Elem | None] = [None] * len(chunks)
        todo: list[int] = []
        for i, chunk in enumerate(chunks):
            key, sigs = chunk[-1].key, [[e.key, e.sig] for e in chunk]
            old = consumed.get(key)
            if old is not None and old.value["children"] == sigs and _usable(old.fingerprint):
                made[i] = Elem(key, old.fingerprint, old.value["summary"])
            elif pending:
                made[i] = self._store(run, group, level, chunk, PENDING + _hash(sigs), None, None, CallCost(calls=1))
            else:
                todo.append(i)
        loaded = self._load(run, group, level - 1, [e for i in todo for e in chunks[i] if e.text is None and
                                                    e.error is None])
        calls: list[tuple[int, str, CallSpec]] = []
        model = run.ctx.runner.backend.model_id
        for i in todo:
            chunk = [loaded.get(e.key, e) for e in chunks[i]]
            key, sigs, old = chunk[-1].key, [[e.key, e.sig] for e in chunk], consumed.get(chunks[i][-1].key)
            bad = next((e for e in chunk if not e.usable), None)
            if bad is not None:
                assert not bad.sig.startswith(PENDING), "sem_agg: a pending node below a summary was not seeded"
                made[i] = self._store(run, group, level, chunk, BLOCKED + _hash(sigs), None, bad.error, CallCost())
                continue
            request = self.node_request(level, [e.text or "" for e in chunk])
            h = call_hash(model, request)
            if old is not None and old.fingerprint == h:  # same prompt from other children: keep the summary
                made[i] = self._store(run, group, level, chunk, h, old.value["summary"], None, old.cost)
                continue
            reason = "refresh" if run.ctx.building else "insert" if old is None else \
                "update" if _usable(old.fingerprint) else "retry"
            calls.append((i, h, CallSpec(request, reason)))
        results = run.ctx.run_calls(self.op_id, [spec for _i, _h, spec in calls])
        for (i, h, _spec), result in zip(calls, results, strict=True):
            if result.completion is None:
                made[i] = self._store(run, group, level, chunks[i], FAILED + h, None, result.error, result.cost)
            else:
                made[i] = self._store(run, group, level, chunks[i], h, result.completion.text.strip(), None,
                                      result.cost)
        assert all(e is not None for e in made), "sem_agg: a node was left unevaluated"
        return [e for e in made if e is not None]

    def _store(self, run: _Run, group: RowKey, level: int, chunk: list[Elem], sig: str, summary: str | None,
               error: str | None, cost: CallCost) -> Elem:
        key = node_key(group, level, chunk[-1].key)
        value = {"children": [[e.key, e.sig] for e in chunk], "summary": summary}
        run.write(key, StateEntry(key, sig, {"group": group, "level": level}, value, error, cost))
        return Elem(chunk[-1].key, sig, summary, error)

    def _load(self, run: _Run, group: RowKey, level: int, elems: list[Elem]) -> dict[RowKey, Elem]:
        """The text (or error) of old elements of ``level``: rows from their leaf entries, nodes from theirs."""
        keys = {e.key: (e.key if level == 0 else node_key(group, level, e.key)) for e in elems}
        run.read(keys.values())
        loaded = {}
        for e in elems:
            entry = run.current(keys[e.key])
            assert entry is not None, f"sem_agg: element {e.key} of level {level} has no stored entry"
            text = entry.value["text"] if level == 0 else entry.value["summary"]
            error = entry.value["error"] if level == 0 else entry.error
            loaded[e.key] = Elem(e.key, e.sig, text, error)
        return loaded
