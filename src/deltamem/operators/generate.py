"""``LLM_GENERATE``: one standing answer per CONTEXT row, over the DATA_SOURCE rows, kept fresh as both change.

    answers = db.generate("answers", prompt="Answer using the documents.", context=questions, data_source=docs, retrieve=5)

Documents are split into sentences (chunks that keep their document key, position and a hash of their text). With
``retrieve="all"`` every document is in every prompt; with ``retrieve=k`` the k chunks most similar to the question
(cosine over the database's embedder) are, in document order; with ``retrieve="graph"`` each document is one chunk,
and the ``k`` (default 5) that Personalized PageRank reaches from the question's entities over a knowledge graph of
DATA_SOURCE are (``deltamem.operators.graph_retrieval``). ``db.generate(retrieve="auto")`` is resolved at
definition by the cost model (``deltamem.cost_model``) to one of the three. Each output records its provenance: the
chunks that were in its prompt and, with retrieval, the score of the k-th. An embedding that still fails after its
retries fails the version (no answer can retrieve without it); maintenance retries the view later.

On a backend with attention (the local model) every answer except the baselines' also records its attention
attribution, captured while it is generated: per output sentence, the share of attention it paid to each prompt
sentence (mean over layers and heads).

When DATA_SOURCE changes, each output gets one strategy, and the decision is logged with its reason and cost:

==========  ==========================================================================================================
skip        the change touches nothing the output depends on: none of its chunks changed, and no new chunk scores
            above its k-th, or (graph) the change missed its subgraph and the PPR bound keeps its top k (exact: the
            prompt is provably the same); also whenever the rebuilt prompt is identical.
            ``auto``, on a backend that cannot verify, also skips, approximately, a change its answer paid less
            than the attention threshold to (5% of its attention, until calibrated) that touches no key term of the
            question, the answer or the three sentences it attended to most; without attribution, an edit that
            substitutes a value neither the question nor the answer mentions
patch       an edit substituted a value (a number, date or name) that the answer copies: rewrite it in place, no call
            (approximate); ``auto`` patches only on a backend that cannot verify
verify      on a backend with KV caches: re-score the old answer as a draft against the new prompt, on KV blended
            beyond the prefix where the backend can (``deltamem.llm.kv_blend``); a draft it reproduces with a clear
            margin is kept (approximate on blended KV, exact otherwise), and any other outcome falls through to the
            exact regenerate in the same call. Logged as ``verify`` when the answer was kept, else ``regenerate``
regenerate  on a backend with KV caches: reuse the prompt KV up to the first changed token and re-score the old answer
            as a draft in one pass; token for token what ``full`` gives, for greedy decoding
append      ``LLM(C + LLM(C) + ΔC)``: the old answer stays in the conversation and the delta is a new turn; past
            ``append_budget`` tokens of deltas, a full recompute compacts the log into the base (approximate)
full        recompute from scratch
==========  ==========================================================================================================

``strategy="auto"`` (the default) takes the cheapest strategy the evidence allows: on a backend that verifies, the
exact skips, then verify; elsewhere skip, patch, append, else full. After ``MAX_APPROXIMATE_CHAIN`` approximate
answers in a row (skips on weak evidence, patches, drafts accepted on blended KV), the next change of an output is
refreshed exactly (regenerate, or full), so approximations never compound. A skip carries the answer's attention
attribution over to the sentences that replaced the ones it named, so the next edit of such a sentence is judged by
the attention it really had. A share ``shadow`` of its approximate decisions is also recomputed in full and
compared, and the checks calibrate it (``deltamem.memory.strategies.calibrate``): an approximate strategy whose
agreement falls below 90% after 5 checks is no longer used, and the attention threshold falls to the largest value at
which the checked skips below it agree at least 90% of the time. ``strategy="skip"`` skips or recomputes;
``"regenerate"`` never skips on retrieval evidence; ``"full+prefix"`` is ``full`` with the prompt KV reused up to the
first changed token (what automatic prefix caching gives), and ``"full"`` asks for every output again at every change
of DATA_SOURCE (the baseline; the memo still answers a call identical to an earlier one). ``refresh="as_of_now"``
answers a CONTEXT row once and never refreshes it for DATA_SOURCE changes.

With ``reuse="semantic"`` a new or changed CONTEXT row may first take the answer of an answered row of the view
(``reuse``, no call; ``deltamem.reuse``), and a row that reused an answer follows its source through every refresh
above; with ``decompose``, the view is ``deltamem.operators.compose``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from deltamem.changes import ERROR_COLUMN, Delta, Row, RowKey, decode_key, key_order
from deltamem.errors import SchemaError
from deltamem.llm.base import CompletionRequest, Message
from deltamem.llm.memo import call_hash
from deltamem.llm.runner import CallSpec
from deltamem.memory.graph_ppr import Ranking
from deltamem.memory.provenance import copied_spans
from deltamem.memory.strategies import (
    Calibration,
    ChunkChanges,
    ShadowCheck,
    append_request,
    attended,
    attention_share,
    attention_skip,
    calibrate,
    carry_attribution,
    describe_delta,
    is_shadowed,
    lexical_skip,
    plan_patch,
    retrieval_skip,
)
from deltamem.operators.base import MultiInputOperator, OperatorContext, retract
from deltamem.operators.documents import Chunk, DocumentChunks, Documents, split_sentences, whole
from deltamem.operators.graph_retrieval import DEFAULT_K, GraphRetrieval, GraphVersion, describe_ranking
from deltamem.operators.template import Template
from deltamem.reuse.answers import AnswerReuse, ReuseMatch, is_answered, with_checks
from deltamem.store.base import Decision, StateEntry
from deltamem.store.state_vectors import Vector

NO_CHANGES = ChunkChanges({}, {}, {})
STRATEGIES = ("auto", "skip", "patch", "verify", "regenerate", "append", "full", "full+prefix")
MAX_APPROXIMATE_CHAIN = 3  # approximate answers in a row before an output is refreshed exactly
MIN_CHECKS = 5  # shadow checks of an approximate strategy before its agreement is trusted
MIN_AGREEMENT = 0.9  # below this measured agreement, auto stops using the strategy
ATTENTION_THRESHOLD = 0.05  # auto may skip below this attention share on the changed sentences, until calibrated
ANCHORS = 3  # the most attended sentences whose key terms a skipped change must not touch
REFRESH_MODES = ("on_change", "as_of_now")
REUSE_MODES = ("off", "semantic")
MAX_RETRIEVE = 1000
@dataclass(frozen=True)
class _Work:
    """One output to refresh: its CONTEXT row, its current output row, its stored entry and why it is refreshed."""

    row: Row
    before_out: Row | None
    old: StateEntry | None
    reason: str  # insert | update | refresh | retry | data | reuse (the answer it reused changed)
    why: str | None = None  # for "data": how the change reached it, when retrieval knows


@dataclass(frozen=True)
class _Planned:
    """The strategy chosen for one output: the call to run (``spec``), or the entry that needs none (``entry``),
    and an optional full recompute to shadow-check an approximate answer."""

    key: RowKey
    item: _Work
    spec: CallSpec | None
    strategy: str
    why: str
    value: dict
    h: str  # the memo hash of the output's current full prompt: its fingerprint, whatever the strategy
    old: StateEntry | None
    entry: StateEntry | None = None
    shadow: CallSpec | None = None
    evidence: float | None = None  # the attention share an approximate decision rested on
    changes: ChunkChanges = NO_CHANGES  # what changed in its documents (a kept answer's attribution is carried over)


class GenerateOperator(MultiInputOperator):
    """The ``llm_generate`` operator.

    State, under two op ids: ``"<op_id>/docs"`` holds per document its chunks (and their vectors, with retrieval),
    fingerprinted by the document's text; ``"<op_id>"`` holds per CONTEXT key its answer ``{"text", "output_ids",
    "chunks", "kth", "question", "question_vec"}``, fingerprinted by the memo hash of its current full prompt; with
    ``reuse="semantic"`` also ``{"rewritten", "reuse_vec", "checks"}``, and for a reuse ``{"reused_from", "reuse"}``.
    Invariant: an output entry exists exactly for the CONTEXT rows present, and its ``chunks`` are the idents of the
    chunks in the prompt of its last answer (for a reuse: in its source's prompt, which it follows).
    """

    kind: ClassVar[str] = "llm_generate"
    roles: ClassVar[tuple[str, ...]] = ("context", "data_source")

    def __init__(
        self,
        op_id: str,
        prompt: str,
        *,
        retrieve: int | str = "all",
        k: int | None = None,
        auto: dict | None = None,  # the cost model's estimate when retrieve="auto" chose; the plan keeps it to show
        strategy: str = "auto",
        refresh: str = "on_change",
        question: str,
        document: str,
        out: str = "answer",
        max_tokens: int = 64,
        shadow: float = 0.0,
        append_budget: int = 256,
        partition: str | None = None,
        reuse: str = "off",
        max_error: float = 0.02,
        reuse_check: float = 0.1,
    ):
        if not isinstance(prompt, str) or not prompt.strip():
            raise SchemaError("llm_generate needs a non-empty prompt")
        if retrieve not in ("all", "graph") and not (isinstance(retrieve, int) and not isinstance(retrieve, bool)
                                                     and 1 <= retrieve <= MAX_RETRIEVE):
            raise SchemaError(f"retrieve={retrieve!r} is out of range; use 'all', 'graph', 'auto' or a number of "
                              f"chunks from 1 to {MAX_RETRIEVE}")
        if k is not None and retrieve != "graph":
            raise SchemaError(f"k={k!r} is the number of passages of retrieve='graph' (or 'auto'); with "
                              f"retrieve={retrieve!r} leave it out")
        k = DEFAULT_K if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_RETRIEVE:
            raise SchemaError(f"k={k!r} is out of range; use a number of passages from 1 to {MAX_RETRIEVE}")
        if retrieve == "graph" and partition is not None:
            raise SchemaError("retrieve='graph' builds one graph over all of DATA_SOURCE; it does not take partition")
        if retrieve == "graph" and reuse != "off":
            raise SchemaError(f"retrieve='graph' and reuse={reuse!r} cannot be combined yet")
        if strategy not in STRATEGIES:
            raise SchemaError(f"Unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
        if refresh not in REFRESH_MODES:
            raise SchemaError(f"Unknown refresh {refresh!r}; use one of {', '.join(REFRESH_MODES)}")
        if not out.isidentifier():
            raise SchemaError(f"Output column name {out!r} is not an identifier")
        self.op_id = op_id
        self.docs_op = f"{op_id}/docs"
        self.prompt = prompt
        self.retrieve = retrieve
        self.strategy = strategy
        self.refresh = refresh
        self.question = Template(question)
        self.document = Template(document)
        self.out = out
        self.max_tokens = max_tokens
        if not 0.0 <= shadow <= 1.0:
            raise SchemaError(f"shadow={shadow!r} is out of range; use a share from 0 to 1")
        self.shadow = shadow
        self.append_budget = append_budget
        self.partition = partition
        self.graph = GraphRetrieval(op_id, document, k) if retrieve == "graph" else None
        self.documents = DocumentChunks(self.docs_op, self.document, partition, self._embed,
                                        split=split_sentences if self.graph is None else whole)
        if reuse not in REUSE_MODES:
            raise SchemaError(f"Unknown reuse {reuse!r}; use one of {', '.join(REUSE_MODES)}")
        if isinstance(reuse_check, bool) or not isinstance(reuse_check, (int, float)) or not 0 <= reuse_check <= 1:
            raise SchemaError(f"reuse_check={reuse_check!r} is out of range; use a share from 0 to 1")
        self.reuse, self.max_error, self.reuse_check = reuse, max_error, reuse_check
        answer_reuse = AnswerReuse(op_id, max_error=max_error, check_share=reuse_check)  # validates max_error
        self.reuser = answer_reuse if reuse == "semantic" else None

    def output_columns_by_role(self, columns: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
        return (*[c for c in columns["context"] if c != self.out], self.out)

    # --- prompt -------------------------------------------------------------------------------------------------
    def build_request(self, question: str, chunks: Sequence[Chunk]) -> CompletionRequest:
        """Documents first (they change; the question does not), so an edit late in the documents keeps the most
        prompt KV reusable."""
        by_doc: dict[RowKey, list[str]] = {}
        for chunk in sorted(chunks, key=lambda c: c.prompt_order):
            by_doc.setdefault(chunk.doc, []).append(chunk.text)
        documents = "\n".join(f"[{i}] {' '.join(texts)}" for i, texts in enumerate(by_doc.values(), start=1))
        user = f"Documents:\n{documents}\n\nQuestion: {question}\nAnswer briefly."
        return CompletionRequest((Message("system", self.prompt), Message("user", user)), self.max_tokens)

    # --- maintenance --------------------------------------------------------------------------------------------
    def apply_inputs(self, inputs: dict[str, list[Delta]], ctx: OperatorContext) -> list[Delta]:
        return self.apply_on(inputs, ctx, ctx.store.get_all_state(ctx.view))  # documents and answers both live there

    def apply_on(self, inputs: dict[str, list[Delta]], ctx: OperatorContext,
                 state: Mapping[tuple[str, RowKey], StateEntry]) -> list[Delta]:
        """``apply_inputs`` on the view's ``state`` as read at the start of this version (an operator that embeds
        this one, ``compose``, passes the state it has read)."""
        docs, changes = self.documents.apply(  # both by partition
            inputs.get("data_source", []), {k: e for (op, k), e in state.items() if op == self.docs_op}, ctx)
        graph = None if self.graph is None else self.graph.apply(inputs.get("data_source", []), ctx, state)
        stored = {key: e for (op, key), e in state.items() if op == self.op_id}
        before = dict(stored)
        answers = dict(stored)  # every current answer: the candidates a new question may reuse
        work: dict[RowKey, _Work] = {}
        out: list[Delta] = []
        for delta in inputs.get("context", []):
            old = stored.pop(delta.key, None)
            before_out = self._output_for(delta.before, old)
            if delta.forget or delta.after is None:
                answers.pop(delta.key, None)
                retracted = retract(self.op_id, delta, old, before_out, ctx)
                if retracted:
                    out.append(retracted)
                    if not retracted.forget:
                        self._decide(ctx, delta.key, "retract", "its CONTEXT row was deleted")
                continue
            reason = "refresh" if ctx.building else "insert" if old is None else "update"
            work[delta.key] = _Work(delta.after, before_out, old, reason)
        for key, entry in stored.items():  # outputs whose CONTEXT row did not change
            if entry.value and "reused_from" in entry.value:
                continue  # a reuse follows its source (_follow_sources), never its own prompt
            if entry.error is not None:
                work[key] = _Work(entry.input_row, self._output_for(entry.input_row, entry), entry, "retry")
            elif (changes.get(self.documents.part_of(entry.input_row)) or graph and graph.change) and \
                    self.refresh == "on_change":
                work[key] = _Work(entry.input_row, self._output_for(entry.input_row, entry), entry, "data")
        refreshed = self._refresh(work, docs, changes, ctx, answers, graph)
        if self.reuser is not None:
            refreshed += self._follow_sources(stored, before, answers, docs, changes, ctx)
        return out + refreshed

    def _refresh(self, work: dict[RowKey, "_Work"], docs_by_part: dict[str, "Documents"],
                 changes_by_part: dict[str, ChunkChanges], ctx: OperatorContext,
                 answers: dict[RowKey, StateEntry], graph: GraphVersion | None = None) -> list[Delta]:
        """Decide a strategy per output, run the calls in one batch, and return the output deltas. ``answers`` is
        every current answer; it is updated with the new ones."""
        model = ctx.runner.backend.model_id
        question_vecs = self._embed_questions(work, ctx)
        planned: list[_Planned] = []
        ranked: dict[RowKey, tuple[list[Chunk], Ranking, str | None]] = {}
        if graph is not None:
            ranked = self._rank_by_graph(work, docs_by_part.get("") or Documents([], {}),
                                         changes_by_part.get("") or NO_CHANGES, graph, question_vecs, ctx, planned)
        reuse_vecs = self._reuse_vectors(work, ctx)
        candidates = {k: e for k, e in answers.items() if k not in work}  # answers in flux are no candidates
        index = self.reuser.candidates(candidates, self.documents.part_of) if reuse_vecs else None
        answered_prompts = {e.fingerprint for e in candidates.values() if is_answered(e)} if reuse_vecs else set()
        matches: dict[RowKey, ReuseMatch] = {}
        calibration = self._calibrate(ctx) if self.strategy == "auto" and changes_by_part else None
        for key in sorted(work, key=key_order):
            if graph is not None and key not in ranked:
                continue  # skipped: the change provably did not reach its passages
            item = work[key]
            part = self.documents.part_of(item.row)
            docs = docs_by_part.get(part) or Documents([], {})
            changes = changes_by_part.get(part) or NO_CHANGES
            question = self.question.render(item.row)
            old = item.old
            in_prompt = set() if old is None else {tuple(i) for i in old.value.get("chunks", ())}
            if item.reason == "data" and self.strategy in ("auto", "skip") and isinstance(self.retrieve, int):
                why = retrieval_skip(in_prompt, old.value.get("kth"), self.retrieve, changes, question_vecs.get(key))
                if why is not None:
                    self._decide(ctx, key, "skip", why)
                    continue
            ranking = None
            if key in ranked:
                chunks, ranking, reached = ranked[key]
                item = replace(item, why=reached)
                kth = ranking.kth
            else:
                chunks, kth = self._retrieve(docs, question_vecs.get(key))
            request = self.build_request(question, chunks)
            h = call_hash(model, request)
            value = {"chunks": [list(c.ident) for c in chunks], "kth": kth, "question": question,
                     "question_vec": None if key not in question_vecs else Vector(question_vecs[key])}
            if ranking is not None:
                value["graph"] = ranking.to_json()
            if key in reuse_vecs:
                value.update(self.reuser.value_for(reuse_vecs[key], old))
                # An answered question with this very prompt: the memo answers it exactly, no reuse decision needed.
                if item.reason in ("insert", "update", "reuse") and h not in answered_prompts:
                    match = index.match(ctx, key, *reuse_vecs[key], part)
                    if match is not None and match.served:
                        planned.append(self._plan_reuse(ctx, key, item, h, value, match, candidates[match.source]))
                        continue
                    if match is not None:
                        matches[key] = match
            identical = old is not None and old.fingerprint == h and old.error is None and item.reason != "reuse"
            if identical and not (item.reason == "data" and self.strategy.startswith("full")):
                # The same prompt may come from other chunks of the same text (a document edited around an
                # unchanged sentence): the provenance follows them, or a later change to them would be missed.
                provenance = {**old.value, "chunks": value["chunks"], "kth": value["kth"],
                              **({"graph": value["graph"]} if ranking is not None else {})}
                kept = old if old.input_row == item.row and provenance == old.value else \
                    StateEntry(key, h, item.row, provenance, None, old.cost)
                if item.reason == "data":
                    self._decide(ctx, key, "skip", "the rebuilt prompt is identical" + (
                        f" (re-ranked, as {item.why}: the same passages)" if item.why else ""))
                planned.append(_Planned(key, item, None, "skip", "", value, h, old, entry=kept))
                continue
            texts = tuple(c.text for c in chunks)
            planned.append(self._plan(ctx, key, item, request, h, value, texts, changes, in_prompt, calibration))
        calls = [(p, spec) for p in planned for spec in (p.spec, p.shadow) if spec is not None]
        results = iter(ctx.run_calls(self.op_id, [spec for _p, spec in calls]))
        out: list[Delta] = []
        entries: dict[RowKey, StateEntry] = {}
        for p in planned:
            entry = p.entry
            if p.spec is not None:
                entry = self._store_result(ctx, p, next(results))
            if p.shadow is not None:
                entry = self._check_shadow(ctx, p, entry, next(results))
            entries[p.key] = entry
            out.append(Delta(p.key, p.item.before_out, self._output_for(p.item.row, entry)))
        for source, checks in self.reuser.observe(ctx, matches, entries, candidates).items() if matches else ():
            entries[source] = with_checks(entries.get(source) or answers[source], checks)
        for p in planned:
            if entries[p.key] is not p.old:
                ctx.put_state(self.op_id, entries[p.key])
        for source in entries.keys() - {p.key for p in planned}:  # a source whose only change is a new check
            ctx.put_state(self.op_id, entries[source])
        answers.update(entries)
        return [d for d in out if d.forget or d.before != d.after]

    def _plan(self, ctx, key, item, request, h, value, texts, changes, in_prompt,
              calibration: Calibration | None) -> "_Planned":
        """The cheapest strategy the evidence allows for one output whose prompt changed."""
        old = item.old
        spec_reason = "update" if item.reason in ("data", "reuse") else item.reason
        can = ctx.runner.backend.capabilities
        kv = can.kv_cache
        cache_key = f"{ctx.view}/{key}"
        # The baselines do not pay for attribution; every other strategy keeps it as evidence for later changes.
        attribute_to = texts if can.attention and not self.strategy.startswith("full") else None
        if old is None or old.error is not None or item.reason != "data":
            why = {"insert": "a new CONTEXT row", "refresh": "the view was built", "update": "its CONTEXT row changed",
                   "retry": "its last call failed", "data": "its last call failed",
                   "reuse": "the answer it reused changed or left"}[item.reason]
            keep_kv = kv and self.strategy != "full"  # so that the next refresh can reuse this prompt's KV
            spec = CallSpec(request, spec_reason, cache_key=cache_key if keep_kv else None, attribute_to=attribute_to)
            return _Planned(key, item, spec, "full", why, value, h, old)
        answer = old.value.get("text") or ""
        replacements = changes.replacements(in_prompt)
        chain = old.value.get("approximate", 0)
        exact_now = chain >= MAX_APPROXIMATE_CHAIN  # approximations must not compound: this refresh is exact
        can_verify = kv and can.logits
        approximate: list[tuple[str, str | None, str | None, float | None]] = []
        if self.strategy == "auto" and not can_verify and not exact_now:  # else verify tests what this guesses
            attribution = old.value.get("attribution")
            share = attention_share(attribution, in_prompt & set(changes.removed))
            if share is not None:
                known = {**dict(zip((tuple(i) for i in value["chunks"]), texts)), **changes.removed}
                anchors = [known[i] for i in attended(attribution, ANCHORS) if i in known]
                why = attention_skip(share, calibration.attention_threshold, changes, in_prompt, value["question"],
                                     answer, anchors)
            else:
                why = lexical_skip(answer, value["question"], replacements or {})
            approximate.append(("skip", why, answer, share))
        # On a backend that verifies, auto tests the old answer exactly rather than guessing its rewrite.
        if (self.strategy == "patch" or self.strategy == "auto" and not can_verify) and not exact_now:
            patch = plan_patch(answer, replacements or {})
            approximate.append(("patch", patch and patch[1], patch and patch[0], None))
        for strategy, why, text, share in approximate:
            if why is None or (calibration is not None and strategy in calibration.disabled):
                continue
            # A skip keeps the answer, so its token ids (the next draft) and attribution still describe it.
            kept = {"output_ids": old.value.get("output_ids"),
                    "attribution": carry_attribution(old.value.get("attribution"), changes)} if strategy == "skip" else {}
            entry = StateEntry(key, h, item.row, {**value, "text": text, "output_ids": [], **kept,
                                                  "approximate": chain + 1}, None, old.cost)
            shadow = CallSpec(request, "update", attribute_to=attribute_to) if self.strategy == "auto" and is_shadowed(
                ctx.view, key, ctx.version, self.shadow) else None
            self._decide(ctx, key, strategy, why + ("" if strategy == "skip" else " (no call)"), evidence=share)
            return _Planned(key, item, None, strategy, why, value, h, old, entry=entry, shadow=shadow, evidence=share)
        why = item.why or ("a chunk it depends on changed" if self.retrieve != "all" else
                           "every document is in its prompt")
        draft = tuple(old.value.get("output_ids") or ()) or None
        if self.strategy in ("auto", "verify") and kv and draft and not exact_now:
            blend = can.kv_blend
            spec = CallSpec(request, spec_reason, cache_key=cache_key, draft=draft, attribute_to=attribute_to,
                            blend=blend)
            how = "on KV blended beyond the prefix, then exactly if that is not conclusive" if blend else "exactly"
            return _Planned(key, item, spec, "verify", f"{why}; re-scoring its answer {how}", value, h, old,
                            changes=changes)
        forced = f" (exact after {chain} approximate answers)" if exact_now else ""
        if self.strategy in ("auto", "verify", "regenerate") and kv:
            spec = CallSpec(request, spec_reason, cache_key=cache_key, draft=draft, attribute_to=attribute_to)
            return _Planned(key, item, spec, "regenerate",
                            why + "; reusing its prompt KV and re-scoring its answer" + forced, value, h, old)
        if self.strategy == "full+prefix" and kv:
            return _Planned(key, item, CallSpec(request, spec_reason, cache_key=cache_key), "full+prefix",
                            why + "; reusing its prompt KV, decoding in full", value, h, old)
        # A re-ranked graph prompt may hold passages no edit touched: the delta would not describe them.
        moved = self.graph is not None and {tuple(c) for c in value["chunks"]} - set(changes.added) != \
            in_prompt - set(changes.removed)
        if not moved and (self.strategy == "append" or (self.strategy == "auto" and "append" not in
                                                        calibration.disabled and not exact_now)):
            planned = self._plan_append(ctx, key, item, request, h, value, changes, why)
            if planned is not None:
                return planned
        return _Planned(key, item, CallSpec(request, spec_reason, attribute_to=attribute_to), "full", why + forced,
                        value, h, old)

    def _plan_append(self, ctx, key, item, request, h, value, changes, why) -> "_Planned | None":
        """``LLM(C + LLM(C) + ΔC)`` while the delta log stays within ``append_budget`` tokens, else None (the full
        recompute that follows makes the current documents the new base: compaction)."""
        base = item.old.value.get("base")
        if base is None:
            return None
        delta = describe_delta(changes)
        log = [tuple(turn) for turn in base["log"]]
        count = ctx.runner.backend.count_tokens
        num_tokens = sum(count(d) + count(a) for d, a in log) + count(delta)
        if num_tokens > self.append_budget:
            return None
        base_request = CompletionRequest(tuple(Message(r, c) for r, c in base["messages"]), self.max_tokens)
        spec = CallSpec(append_request(base_request, log, delta), "update", cache_key=f"{ctx.view}/{key}")
        value = {**value, "base": {"messages": base["messages"], "log": [*base["log"], [delta, None]]}}
        return _Planned(key, item, spec, "append", why + f"; the delta ({num_tokens} tokens) is a new turn", value,
                        h, item.old)

    def _store_result(self, ctx: OperatorContext, p: "_Planned", result) -> StateEntry:
        """The state entry for a planned call's result, and its decision with what it cost."""
        c = result.completion
        if c is None:
            entry = StateEntry(p.key, p.h, p.item.row, p.value, result.error, result.cost)
        else:
            text = c.text.strip()
            value = {**p.value, "text": text, "output_ids": list(c.output_ids),
                     "attribution": None if c.attribution is None else {
                         "columns": p.value["chunks"], **c.attribution.to_json()},
                     "approximate": 0 if c.exact or p.old is None else p.old.value.get("approximate", 0) + 1}
            if c.attribution is None and not c.exact:  # a draft kept on blended KV: the old evidence still holds
                value["attribution"] = carry_attribution(p.old.value.get("attribution"), p.changes)
            if p.strategy == "append":
                value["base"]["log"][-1][1] = text
            else:
                value["base"] = {"messages": [[m.role, m.content] for m in p.spec.request.messages], "log": []}
            entry = StateEntry(p.key, p.h, p.item.row, value, None, result.cost)
        paid = c is not None and not result.memo_hit
        strategy, why = p.strategy, p.why
        if strategy == "verify" and c is not None:
            kept = list(c.output_ids) == list(p.spec.draft or ())
            strategy = "verify" if kept else "regenerate"
            why += ("; kept: its answer reproduced on blended KV (approximate)" if not c.exact else
                    "; kept: every answer token is still the greedy choice (exact)" if kept else
                    "; it changed: decoded from the first divergence (exact)")
        self._decide(
            ctx, p.key, "memo" if result.memo_hit else strategy,
            "an identical call was answered before" if result.memo_hit else why,
            calls=int(paid), prompt_tokens=c.prompt_tokens if paid else 0, reused_tokens=c.reused_tokens if paid else 0,
            output_tokens=c.output_tokens if paid else 0, seconds=c.seconds if paid else 0.0, evidence=p.evidence,
        )
        return entry

    def _check_shadow(self, ctx: OperatorContext, p: "_Planned", approximate: StateEntry, result) -> StateEntry:
        """Compare an approximate answer with the full recompute run beside it; the full answer is kept."""
        full = self._store_result(ctx, _Planned(p.key, p.item, p.shadow, "full", "shadow check", p.value, p.h, p.old),
                                  result)
        ctx.commit.decisions.pop()  # _store_result logged it as "full"; it is logged as "shadow" below
        if full.error is not None:
            return approximate
        agrees = (full.value["text"] == approximate.value["text"])
        c = result.completion
        self._decide(ctx, p.key, "shadow", f"{p.strategy}: {'agrees' if agrees else 'disagrees'} with full recompute",
                     calls=int(not result.memo_hit), prompt_tokens=c.prompt_tokens, reused_tokens=c.reused_tokens,
                     output_tokens=c.output_tokens, seconds=c.seconds, evidence=p.evidence)
        return full

    def _calibrate(self, ctx: OperatorContext) -> Calibration:
        """What this view's shadow checks so far allow ``auto`` (``deltamem.memory.strategies.calibrate``)."""
        checks = []
        for decision in ctx.store.get_decisions(ctx.view, strategy="shadow"):
            strategy, _, verdict = decision.reason.partition(": ")
            checks.append(ShadowCheck(strategy, verdict.startswith("agrees"), decision.evidence))
        return calibrate(checks, default_threshold=ATTENTION_THRESHOLD, min_checks=MIN_CHECKS,
                         min_agreement=MIN_AGREEMENT)

    def _decide(self, ctx: OperatorContext, key: RowKey, strategy: str, reason: str, **cost) -> None:
        ctx.commit.decisions.append(Decision(ctx.view, key, ctx.version, strategy, reason, **cost))

    def _rank_by_graph(self, work: dict[RowKey, _Work], docs: Documents, changes: ChunkChanges,
                       graph: GraphVersion, question_vecs: dict[RowKey, np.ndarray], ctx: OperatorContext,
                       planned: list["_Planned"]) -> dict[RowKey, tuple[list[Chunk], Ranking, str | None]]:
        """``retrieve="graph"``: skip each answer a DATA_SOURCE change provably does not reach (no call, no
        re-ranking; into ``planned``), and rank the others in one batch: per key its chunks, its ranking and how
        the change reached it."""
        reasons: dict[RowKey, str | None] = {}
        for key in sorted(work, key=key_order):
            item = work[key]
            if item.reason != "data":
                reasons[key] = None
                continue
            verdict, kept = self.graph.judge(item.old, self.question.render(item.row), graph.change, changes,
                                             question_vecs.get(key))
            if not verdict.reached and self.strategy in ("auto", "skip"):
                self._decide(ctx, key, "skip", verdict.reason)
                planned.append(_Planned(key, item, None, "skip", verdict.reason, kept.value, kept.fingerprint,
                                        item.old, entry=kept))
                continue
            reasons[key] = verdict.reason if verdict.reached else None
        keys = list(reasons)
        ranked = self.graph.rank(graph, [self.question.render(work[k].row) for k in keys],
                                 [question_vecs.get(k) for k in keys], docs)
        return {k: (chunks, ranking, reasons[k]) for k, (chunks, ranking) in zip(keys, ranked, strict=True)}

    def _retrieve(self, docs: "Documents", question_vec) -> tuple[list[Chunk], float | None]:
        """The chunks for one prompt in prompt order, and the score of the k-th (ties broken by prompt order)."""
        if self.retrieve == "all" or question_vec is None:
            return docs.chunks, None
        scored = sorted(
            ((float(np.dot(question_vec, docs.vectors[chunk.ident])), chunk) for chunk in docs.chunks),
            key=lambda pair: (-pair[0], pair[1].prompt_order),
        )
        top = scored[: self.retrieve]
        return sorted((chunk for _score, chunk in top), key=lambda c: c.prompt_order), (top[-1][0] if top else None)

    def _embed(self, texts: list[str], ctx: OperatorContext) -> np.ndarray | None:
        """Vectors for chunk or question texts, or None when the operator does not retrieve."""
        if self.retrieve == "all" or not texts or ctx.embedder is None:
            return None
        # A failure fails the view's version (an answer cannot retrieve without its vectors); maintenance retries it.
        return ctx.embed_or_raise(self.op_id, texts, ["refresh" if ctx.building else "update"] * len(texts))

    # --- answer reuse across questions (deltamem.reuse) -------------------------------------------------------
    def _reuse_vectors(self, work: dict[RowKey, _Work], ctx: OperatorContext) -> dict[RowKey, tuple[str, list]]:
        if self.reuser is None:
            return {}
        questions = {key: self.question.render(item.row) for key, item in work.items()}
        return self.reuser.embed(ctx, questions, {key: item.old for key, item in work.items()})

    def _plan_reuse(self, ctx, key, item, h, value, match: ReuseMatch, source: StateEntry) -> "_Planned":
        """Serve ``source``'s answer, and its provenance, to ``key`` without a call."""
        entry, why = self.reuser.reused_entry(key, item.row, h, value, match, source)
        self._decide(ctx, key, "reuse", why + " (no call)", evidence=match.verdict.similarity)
        return _Planned(key, item, None, "reuse", why, value, h, item.old, entry=entry)

    def _follow_sources(self, stored: dict[RowKey, StateEntry], before: dict[RowKey, StateEntry],
                        answers: dict[RowKey, StateEntry], docs, changes, ctx: OperatorContext) -> list[Delta]:
        """Keep every reuse whose source changed in this version fresh: it follows a source whose answer reads the
        same (taking its new provenance), and is decided again when the source's answer changed or left."""
        again: dict[RowKey, _Work] = {}
        for key, entry in stored.items():
            source = (entry.value or {}).get("reused_from")
            if source is None:
                continue
            old, new = before.get(source), answers.get(source)
            # A source stays one only while its answer came from a call: one that now reuses another's answer (its
            # question changed to one with the same rewriting) is no source, so its reuses are decided again.
            answered = new is not None and new.error is None and "reused_from" not in (new.value or {})
            if answered and old is not None and all(
                    new.value.get(n) == old.value.get(n) for n in ("text", "chunks", "rewritten")):
                continue  # the source's answer and provenance are as they were
            if answered and old is not None and new.value.get("text") == entry.value[
                    "text"] and new.value.get("rewritten") == old.value.get("rewritten"):
                followed = {**entry.value, "chunks": new.value.get("chunks"), "kth": new.value.get("kth")}
                answers[key] = StateEntry(key, entry.fingerprint, entry.input_row, followed, None)
                ctx.put_state(self.op_id, answers[key])
                self._decide(ctx, key, "reuse", f"followed {decode_key(source)!r}: its answer was refreshed and "
                                                "reads the same (no call)")
                continue
            again[key] = _Work(entry.input_row, self._output_for(entry.input_row, entry), entry, "reuse")
        return self._refresh(again, docs, changes, ctx, answers) if again else []

    def _embed_questions(self, work, ctx: OperatorContext) -> dict[RowKey, np.ndarray]:
        if self.retrieve == "all":
            return {}
        vecs: dict[RowKey, np.ndarray] = {}
        fresh = []
        for key, item in work.items():
            question, old = self.question.render(item.row), item.old
            if old is not None and old.value.get("question") == question and old.value.get("question_vec"):
                vecs[key] = np.asarray(old.value["question_vec"])
            else:
                fresh.append((key, question))
        embedded = self._embed([q for _k, q in fresh], ctx)
        for i, (key, _q) in enumerate(fresh):
            vecs[key] = embedded[i]
        return vecs

    def _output_for(self, row: Row | None, entry: StateEntry | None) -> Row | None:
        if row is None or entry is None:
            return None
        if entry.error is not None:
            return {**row, self.out: None, ERROR_COLUMN: entry.error}
        return {**row, self.out: entry.value.get("text")}

    def describe_output(self, key: RowKey, state: dict[tuple[str, RowKey], StateEntry]) -> dict[str, Any] | None:
        """One output's dependencies, for ``explain``: the sentences in its prompt (document, its version, position,
        text, and whether it is still current), its attention attribution, and the key spans it copies."""
        entry = state.get((self.op_id, key))
        if entry is None or entry.value is None:
            return None
        docs = {doc: e.value for (op, doc), e in state.items() if op == self.docs_op}
        current = {tuple(c["ident"]): c["text"] for d in docs.values() for c in d["chunks"]}
        provenance = []
        for doc, position, digest in entry.value.get("chunks", ()):
            text = current.get((doc, position, digest))
            provenance.append({"doc": doc, "doc_version": docs.get(doc, {}).get("version"), "position": position,
                               "text": text, "current": text is not None})
        answer = entry.value.get("text") or ""
        copied = sorted({s for p in provenance if p["text"] for s in copied_spans(p["text"], answer)})
        attribution = entry.value.get("attribution")
        if attribution is not None:  # label its columns; a skip keeps the attribution of an older prompt
            attribution = {**attribution, "context": [current.get(tuple(c), "(changed since)")
                                                      for c in attribution["columns"]]}
        described = {"provenance": provenance, "attribution": attribution, "key_spans": copied}
        if "reused_from" in entry.value:  # its answer and provenance are its source's
            described["reuse"] = {"reused_from": decode_key(entry.value["reused_from"]), **entry.value["reuse"]}
        if "graph" in entry.value:
            described["graph"] = describe_ranking(entry.value["graph"])
        return described
