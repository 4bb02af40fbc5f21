"""``sem_graph``: a knowledge graph of a passage table (HippoRAG-style open information extraction), kept exact.

    graph = db.view("graph", passages.sem_graph("{title}: {text}", synonym_threshold=0.9))

One call per passage (memoized, on the ledger) extracts its entities and (subject, relation, object) triples as JSON.
Entity names are normalised (lower case, inner whitespace collapsed, surrounding punctuation stripped), so two
passages naming "Ada Lovelace" and "ada lovelace." assert one node. Nodes whose names' embeddings are at least
``synonym_threshold`` alike are joined by a synonymy edge (HippoRAG's synonymy edges), which merges them for
retrieval without rewriting either.

The view's rows are the graph, one per node and edge, keyed by ``["node", name]``, ``["edge", subject, relation,
object]`` and ``["synonym", a, b]`` (``a < b``); columns ``kind``, ``subject``, ``relation``, ``object``,
``passages`` (the keys of the passages that assert it, sorted) and ``similarity`` (synonymy edges only).

**Invariant.** The graph is a function of the current passages alone: a node or fact edge exists while some passage
asserts it, with exactly those passages in ``passages``, and a synonymy edge exists between every two nodes whose
similarity reaches the threshold. So the maintained graph equals the graph built from scratch over the same
passages, whatever order the changes came in (``tests/property/test_graph_equals_recompute.py``).

===========  =======================================================================================================
insert       1 extraction call (0 paid when the memo holds it), 1 embedding per new node name, no other call
edit         1 extraction call if the rendered passage changed, else 0; its old contributions leave, the new ones
             enter; 1 embedding per node name the graph did not hold
delete       0 calls: the passage's contributions leave; a node or edge no passage asserts any more is retracted,
             with its synonymy edges
failure      an extraction that fails, or that the model returns malformed (not JSON, fields missing, an entity
             empty or longer than ``MAX_NAME`` characters), is stored as the passage's error: the passage
             contributes nothing, its error shows in the view as a row ``["error", passage key]``, and the next
             refresh asks again; after ``MAX_MALFORMED`` malformed replies to the same text (a model that runs out
             of tokens answers alike each time) it is not asked again until the passage changes, and its error says
             so
===========  =======================================================================================================

``max_tokens`` (512) caps each reply: extractions are long, and a reply cut short is malformed (the test backend's
replies to the 2Wiki corpus: 67 of 5,510 cut short at 256, 4 at 512).

A TTL ``keep`` expiry (a ``forget``) is a delete for the graph: a node or edge never outlives the passages that
assert it.

State, per operator (keys are JSON arrays, so none collides with a passage key, a JSON scalar): per passage key its
extraction (``value = {"entities", "triples"}``, or ``error``); per graph row its current output (``value = {"row"}``),
with the name's vector for a node. A passage whose extraction failed keeps ``{"malformed": n}``, the malformed
replies so far: the next request says so, which makes it a new call rather than a memo hit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from deltamem.changes import ERROR_COLUMN, Delta, Row, RowKey, decode_key
from deltamem.errors import SchemaError
from deltamem.llm.base import CompletionRequest, Message
from deltamem.llm.memo import call_hash
from deltamem.llm.runner import CallSpec
from deltamem.operators.base import Operator, OperatorContext
from deltamem.operators.template import Template
from deltamem.operators.vectors import embedder_of, similarities
from deltamem.store.base import StateEntry
from deltamem.store.state_vectors import Vector

MAX_NAME = 100  # characters of a normalised entity name; a longer one is a malformed extraction
MAX_MALFORMED = 3  # malformed replies to one passage text before it is no longer asked at every refresh
COLUMNS = ("kind", "subject", "relation", "object", "passages", "similarity")
SYSTEM = ("You extract knowledge for a graph. Reply with one JSON object with the keys entities (a list of names) "
          "and triples (a list of [subject, relation, object] lists whose subject and object are among the "
          "entities). No other text.")
_SPACE = re.compile(r"\s+")


def normalise(name: str) -> str:
    """An entity's node name: lower case, whitespace collapsed, surrounding punctuation stripped."""
    return _SPACE.sub(" ", name).strip().strip(".,;:!?\"'()[]").strip().lower()


def parse_extraction(text: str) -> dict[str, list]:
    """The model's reply as ``{"entities": [names], "triples": [[s, r, o]]}``, names normalised; ``ValueError``
    naming what is malformed."""
    try:
        found = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the extraction is not JSON ({exc.msg}): {text[:80]!r}") from None
    if not isinstance(found, dict) or not isinstance(found.get("entities"), list) or \
            not isinstance(found.get("triples"), list):
        raise ValueError(f"the extraction needs the lists entities and triples: {text[:80]!r}")
    entities = {_name(e) for e in found["entities"]}
    triples = set()
    for triple in found["triples"]:
        if not isinstance(triple, list) or len(triple) != 3 or not all(isinstance(p, str) for p in triple):
            raise ValueError(f"a triple is not [subject, relation, object]: {triple!r}")
        subject, obj = _name(triple[0]), _name(triple[2])
        relation = _SPACE.sub(" ", triple[1]).strip().lower()
        if not relation:
            raise ValueError(f"a triple has an empty relation: {triple!r}")
        triples.add((subject, relation, obj))
        entities |= {subject, obj}
    return {"entities": sorted(entities), "triples": sorted(list(t) for t in triples)}


def _name(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"an entity is not a string: {value!r}")
    name = normalise(value)
    if not name:
        raise ValueError(f"an entity name is empty: {value!r}")
    if len(name) > MAX_NAME:
        raise ValueError(f"an entity name is longer than {MAX_NAME} characters: {name[:40]!r}...")
    return name


def _key(*parts: str) -> RowKey:
    return RowKey(json.dumps(list(parts)))


class SemGraph(Operator):
    kind: ClassVar[str] = "sem_graph"

    def __init__(self, op_id: str, instruction: str, *, synonym_threshold: float = 0.9, max_tokens: int = 512):
        if isinstance(synonym_threshold, bool) or not isinstance(synonym_threshold, (int, float)) or \
                not 0.0 < synonym_threshold <= 1.0:
            raise SchemaError(f"sem_graph: synonym_threshold must be in (0, 1], got {synonym_threshold!r}")
        self.op_id = op_id
        self.template = Template(instruction)
        self.synonym_threshold = float(synonym_threshold)
        self.max_tokens = max_tokens

    def output_columns(self, input_columns: Sequence[str]) -> tuple[str, ...]:
        return COLUMNS

    def check_columns(self, input_columns: Sequence[str], *, where: str) -> None:
        self.template.check(input_columns, where=where)

    def build_request(self, passage: str, *, malformed: int = 0) -> CompletionRequest:
        """The extraction request; after ``malformed`` malformed replies, with a note asking again. The note makes it
        another call: asking the same one again would get the memoised malformed reply."""
        messages = [Message("system", SYSTEM), Message("user", f"Passage:\n{passage}")]
        if malformed:
            messages.append(Message("user", f"Your reply {malformed} was not that JSON object. Reply again with the "
                                            "JSON object only."))
        return CompletionRequest(tuple(messages), self.max_tokens)

    def apply(self, deltas: Sequence[Delta], ctx: OperatorContext) -> list[Delta]:
        state = {key: e for (op, key), e in ctx.store.get_all_state(ctx.view).items() if op == self.op_id}
        return self.apply_on(deltas, ctx, state).commit(ctx, self.op_id)

    def apply_on(self, deltas: Sequence[Delta], ctx: OperatorContext, state: dict[RowKey, StateEntry]) -> "GraphUpdate":
        """The graph after this version's passage ``deltas``, on the operator's ``state`` as read at the version's
        start (an operator that embeds this one, ``llm_generate`` with ``retrieve="graph"``, passes what it has
        read); ``commit`` on the result writes it and returns the output deltas."""
        graph = GraphUpdate(state)
        asked: list[tuple[RowKey, Row, str, int]] = []  # passages to extract: (key, row, its fingerprint, malformed)
        model = None
        for delta in deltas:
            old = state.get(delta.key)
            if delta.forget or delta.after is None:
                graph.withdraw(delta.key, old)
                continue
            model = model or ctx.runner.backend.model_id
            h = call_hash(model, self.build_request(self.template.render(delta.after)))
            if old is not None and old.fingerprint == h and old.error is None:
                if old.input_row != delta.after:
                    graph.put(StateEntry(delta.key, h, delta.after, old.value, None, old.cost))
                continue
            graph.withdraw(delta.key, old)
            # The same text as a malformed extraction: asked with the note, or the memo would give it back again.
            malformed = (old.value or {}).get("malformed", 0) if old is not None and old.fingerprint == h else 0
            asked.append((delta.key, delta.after, h, malformed))
        touched = {d.key for d in deltas}
        for failed in [e for e in state.values() if e.error is not None and e.key not in touched
                       and (e.value or {}).get("malformed", 0) < MAX_MALFORMED]:
            graph.withdraw(failed.key, failed)  # asked again: its error row leaves, whatever the answer
            asked.append((failed.key, failed.input_row, failed.fingerprint, (failed.value or {}).get("malformed", 0)))
        # A retry asks again a passage whose text did not change; a changed one is an insert or an update.
        specs = [CallSpec(self.build_request(self.template.render(row), malformed=malformed),
                          "retry" if key not in touched else "insert" if key not in state else "update")
                 for key, row, _h, malformed in asked]
        for (key, row, h, malformed), result in zip(asked, ctx.run_calls(self.op_id, specs), strict=True):
            if result.completion is None:  # nothing memoised: the same request is asked again
                graph.fail(StateEntry(key, h, row, {"malformed": malformed}, result.error, result.cost))
                continue
            try:
                extraction = parse_extraction(result.completion.text)
            except ValueError as exc:
                error = f"malformed extraction of passage {decode_key(key)!r}: {exc}"
                if malformed + 1 >= MAX_MALFORMED:
                    error += f" (after {MAX_MALFORMED} malformed replies, asked again only when the passage changes)"
                graph.fail(StateEntry(key, h, row, {"malformed": malformed + 1}, error, result.cost))
                continue
            graph.assert_(StateEntry(key, h, row, extraction, None, result.cost))
        self._link_synonyms(graph, ctx)
        graph.unlink_gone_nodes()
        return graph

    def _link_synonyms(self, graph: "GraphUpdate", ctx: OperatorContext) -> None:
        """Embed the new nodes' names and join every pair of nodes at least ``synonym_threshold`` alike."""
        new = sorted(graph.new_nodes())
        if not new:
            return
        embedder = embedder_of(ctx, self.kind)
        vectors = ctx.embed_or_raise(self.op_id, new, ["node"] * len(new))
        for name, vector in zip(new, vectors, strict=True):
            graph.set_vector(name, vector)
        names, matrix = graph.node_vectors(embedder.dim)
        sims = similarities(matrix, np.stack(vectors))  # (all nodes, new nodes)
        for j, name in enumerate(new):
            for i in np.flatnonzero(sims[:, j] >= self.synonym_threshold):
                if names[i] != name:
                    graph.link(name, names[i], float(sims[i, j]))


class GraphUpdate:
    """The graph as one version changes it. ``state`` is the operator's state before the version: per passage its
    extraction, per graph row (a JSON-array key) ``{"row", "vector"?}``. Changes are collected here and written by
    ``commit``, with one output delta per graph row that changed."""

    def __init__(self, state: dict[RowKey, StateEntry]):
        self.state = state
        self.passages: dict[RowKey, StateEntry | None] = {}  # passage key -> its new entry (None: gone)
        self.rows: dict[RowKey, Row | None] = {}  # graph row key -> its new row (None: gone)
        self.vectors: dict[str, np.ndarray] = {}  # new node name -> its vector

    # --- passages -------------------------------------------------------------------------------------------------
    def withdraw(self, passage: RowKey, old: StateEntry | None) -> None:
        """Take back what ``old`` (the passage's stored extraction, if any) asserted."""
        self.passages[passage] = None
        if old is None:
            return
        if old.error is not None:
            self.rows[_key("error", passage)] = None
            return
        self._assert(passage, old.value, present=False)

    def assert_(self, entry: StateEntry) -> None:
        self.passages[entry.key] = entry
        self._assert(entry.key, entry.value, present=True)

    def put(self, entry: StateEntry) -> None:
        self.passages[entry.key] = entry

    def fail(self, entry: StateEntry) -> None:
        self.passages[entry.key] = entry
        self.rows[_key("error", entry.key)] = {"kind": "error", "subject": None, "relation": None, "object": None,
                                               "passages": [entry.key], "similarity": None, ERROR_COLUMN: entry.error}

    def _assert(self, passage: RowKey, extraction: dict, *, present: bool) -> None:
        for name in extraction["entities"]:
            self._mark(_key("node", name), {"kind": "node", "subject": name, "relation": None, "object": None},
                       passage, present)
        for subject, relation, obj in extraction["triples"]:
            self._mark(_key("edge", subject, relation, obj),
                       {"kind": "edge", "subject": subject, "relation": relation, "object": obj}, passage, present)

    def _mark(self, key: RowKey, fields: Row, passage: RowKey, present: bool) -> None:
        row = self.current(key)
        passages = set() if row is None else set(row["passages"])
        (passages.add if present else passages.discard)(passage)
        self.rows[key] = {**fields, "passages": sorted(passages), "similarity": None} if passages else None

    # --- graph rows -----------------------------------------------------------------------------------------------
    def current(self, key: RowKey) -> Row | None:
        if key in self.rows:
            return self.rows[key]
        entry = self.state.get(key)
        return None if entry is None else entry.value["row"]

    def new_nodes(self) -> list[str]:
        return [json.loads(key)[1] for key, row in self.rows.items()
                if row is not None and row["kind"] == "node" and key not in self.state]

    def set_vector(self, name: str, vector: np.ndarray) -> None:
        self.vectors[name] = vector

    def node_vectors(self, dim: int) -> tuple[list[str], np.ndarray]:
        """Every node now, and its name's vector."""
        keys = {key for key, e in self.state.items() if key.startswith('["node"')} | \
            {key for key in self.rows if key.startswith('["node"')}
        names, vectors = [], []
        for key in sorted(keys):
            if self.current(key) is None:
                continue
            name = json.loads(key)[1]
            names.append(name)
            vectors.append(self.vectors[name] if name in self.vectors else
                           np.asarray(self.state[key].value["vector"]))
        return names, np.stack(vectors) if vectors else np.zeros((0, dim), dtype=np.float32)

    def link(self, a: str, b: str, similarity: float) -> None:
        first, second = sorted((a, b))
        self.rows[_key("synonym", first, second)] = {"kind": "synonym", "subject": first, "relation": "synonym",
                                                      "object": second, "passages": [], "similarity": similarity}

    def unlink_gone_nodes(self) -> None:
        gone = {json.loads(key)[1] for key, row in self.rows.items() if row is None and key.startswith('["node"')}
        if gone:
            for key in [k for k in self.state if k.startswith('["synonym"')]:
                _kind, a, b = json.loads(key)
                if a in gone or b in gone:
                    self.rows[key] = None

    # --- the graph now ---------------------------------------------------------------------------------------------
    def extractions(self) -> dict[RowKey, dict]:
        """Per passage whose extraction succeeded, its ``{"entities", "triples"}``, after this version."""
        merged = {k: e for k, e in self.state.items() if not k.startswith("[")}
        merged.update(self.passages)
        return {k: e.value for k, e in merged.items() if e is not None and e.error is None}

    def synonyms(self) -> list[tuple[str, str, float]]:
        """Every synonymy edge after this version, as (a, b, similarity)."""
        keys = {k for k in self.state if k.startswith('["synonym"')} | \
            {k for k in self.rows if k.startswith('["synonym"')}
        rows = [self.current(key) for key in sorted(keys)]
        return [(r["subject"], r["object"], r["similarity"]) for r in rows if r is not None]

    # --- writing --------------------------------------------------------------------------------------------------
    def changed_rows(self) -> list[tuple[RowKey, Row | None, Row | None]]:
        """(key, row before, row now) of every graph row this version changed."""
        out = []
        for key, row in self.rows.items():
            old = self.state.get(key)
            before = None if old is None else old.value["row"]
            if row != before:
                out.append((key, before, row))
        return out

    def commit(self, ctx: OperatorContext, op_id: str) -> list[Delta]:
        for key, entry in self.passages.items():
            if entry is not None:
                ctx.put_state(op_id, entry)
            elif key in self.state:
                ctx.delete_state(op_id, key)
        out = []
        for key, before, row in self.changed_rows():
            if row is None:
                ctx.delete_state(op_id, key)
            else:
                value: dict[str, Any] = {"row": row}
                if row["kind"] == "node":
                    name = row["subject"]
                    value["vector"] = Vector(self.vectors[name]) if name in self.vectors else \
                        self.state[key].value["vector"]
                ctx.put_state(op_id, StateEntry(key, "graph", {}, value, None))
            out.append(Delta(key, before, row))
        return out
