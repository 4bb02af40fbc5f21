"""What maintaining an ``LLM_GENERATE`` view costs with each retrieval, estimated from what the ledger measured.

    estimate = db.view("answers").estimate()      # or: EXPLAIN VIEW answers

Three retrievals are compared at the view's current rates: ``all`` (every passage in every prompt), ``dense`` (the
``k`` sentences closest to the question, ``retrieve=k``) and ``graph`` (the ``k`` passages PPR reaches,
``retrieve="graph"``). Each costs a build (its calls over the current rows) and, per DATA_SOURCE change, its calls:
graph pays one extraction per inserted or edited passage, and every retrieval asks again the answers the change
reaches. A call costs ``prompt tokens / prompt rate + output tokens / output rate`` seconds.

Every input is measured where the view's history holds it and a stated prior otherwise (``CostInputs.sources``
says which): the share of changes that reach an answer is measured only for the retrieval the view uses; the rates
are scaled so that the ledger's calls would have taken the seconds they took. The estimate is an expectation, not a
bound: ``EXPLAIN VIEW`` prints it beside its inputs so that a user can check them. ``retrieve="auto"`` takes, at
definition, the retrieval cheapest over a build and ``HORIZON`` changes, and keeps it (the view's answers depend on
its retrieval, so it is not switched behind the user's back).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from deltamem.errors import SchemaError
from deltamem.llm.embedding_runs import is_embedding_operator
from deltamem.operators.compose import ComposeOperator
from deltamem.operators.documents import split_sentences
from deltamem.operators.generate import GenerateOperator
from deltamem.operators.graph import SYSTEM as EXTRACTION_SYSTEM
from deltamem.operators.graph_retrieval import DEFAULT_K
from deltamem.operators.shard_union import is_shard_union
from deltamem.operators.template import Template

if TYPE_CHECKING:
    from deltamem.engine import Database

RETRIEVALS = ("all", "dense", "graph")
MIN_RATE_SPAN = 60.0  # seconds of change history below which an edit rate is not extrapolated to an hour
HORIZON = 100  # DATA_SOURCE changes over which auto compares a build plus maintenance
PROMPT_RATE = 500.0  # prior prompt tokens per second (the local model on 2 cores)
OUTPUT_RATE = 20.0  # prior output tokens per second
EXTRACTION_OUTPUT = 80.0  # prior output tokens of one extraction (its prompt: the passage and the instruction)
CONTEXT_REASONS = ("the view was built", "a new CONTEXT row", "its CONTEXT row changed", "its last call failed")


@dataclass(frozen=True)
class CostInputs:
    """What the estimate rests on; ``sources`` names, per input, ``measured`` or ``prior``."""

    passages: int  # DATA_SOURCE rows
    outputs: int  # standing answers (CONTEXT rows)
    passage_tokens: float  # mean tokens of a rendered passage
    sentence_tokens: float  # mean tokens of one of its sentences
    question_tokens: float
    output_tokens: float  # mean tokens of an answer
    extraction_calls: float  # extraction calls per inserted or edited passage
    extraction_tokens: tuple[float, float]  # prompt and output tokens of one extraction
    k: int  # passages of graph retrieval, sentences of dense
    reach: dict[str, float]  # per retrieval, the share of (change, answer) pairs that asks the answer again
    delete_share: float  # the share of DATA_SOURCE changes that delete a passage
    edit_rate: float | None  # DATA_SOURCE changes per hour, when the history spans time
    prompt_rate: float  # prompt tokens per second
    output_rate: float  # output tokens per second
    sources: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RetrievalCost:
    retrieval: str
    prompt_tokens: float  # of one answer call
    build_calls: float
    build_seconds: float
    change_calls: float  # per DATA_SOURCE change
    change_seconds: float
    hour_seconds: float | None  # at the measured edit rate

    @property
    def horizon_seconds(self) -> float:
        return self.build_seconds + HORIZON * self.change_seconds


@dataclass(frozen=True)
class Estimate:
    inputs: CostInputs
    costs: list[RetrievalCost]
    current: str  # the retrieval the view uses

    @property
    def cheapest_per_change(self) -> str:
        return min(self.costs, key=lambda c: (c.change_seconds, RETRIEVALS.index(c.retrieval))).retrieval

    @property
    def cheapest_with_build(self) -> str:
        return min(self.costs, key=lambda c: (c.horizon_seconds, RETRIEVALS.index(c.retrieval))).retrieval


def prior_reach(retrieval: str, passages: int, k: int) -> float:
    """The share of changes that reach an answer, before any is measured: every one for ``all``; for top-k
    retrieval a change reaches an answer when it edits one of its k passages or adds one that ranks in, about
    2k of the passages' share."""
    if retrieval == "all" or passages == 0:
        return 1.0
    return min(1.0, 2.0 * k / passages)


def retrieval_of(plan: dict) -> str:
    """The plan's retrieval as the model names it: ``all``, ``dense`` or ``graph``."""
    retrieve = plan.get("retrieve", "all")
    return "graph" if retrieve == "graph" else "dense" if isinstance(retrieve, int) else "all"


def estimate(inputs: CostInputs, current: str) -> Estimate:
    i = inputs
    call_out = i.output_tokens / i.output_rate

    def seconds(prompt: float, output_seconds: float = call_out) -> float:
        return prompt / i.prompt_rate + output_seconds

    prompts = {"all": i.passages * i.passage_tokens + i.question_tokens,
               "dense": i.k * i.sentence_tokens + i.question_tokens,
               "graph": min(i.k, i.passages) * i.passage_tokens + i.question_tokens}
    extraction = seconds(i.extraction_tokens[0], i.extraction_tokens[1] / i.output_rate) * i.extraction_calls
    costs = []
    for retrieval in RETRIEVALS:
        answer = seconds(prompts[retrieval])
        asked = i.outputs * i.reach[retrieval]
        extra_calls = i.extraction_calls * (1.0 - i.delete_share) if retrieval == "graph" else 0.0
        extra_seconds = extraction * (1.0 - i.delete_share) if retrieval == "graph" else 0.0
        build_calls = i.outputs + (i.passages * i.extraction_calls if retrieval == "graph" else 0.0)
        build_seconds = i.outputs * answer + (i.passages * extraction if retrieval == "graph" else 0.0)
        change_seconds = asked * answer + extra_seconds
        costs.append(RetrievalCost(retrieval, prompts[retrieval], build_calls, build_seconds, asked + extra_calls,
                                   change_seconds, None if i.edit_rate is None else change_seconds * i.edit_rate))
    return Estimate(inputs, costs, current)


def choose_retrieval(db: "Database", name: str, plan: dict) -> dict:
    """``retrieve="auto"``: ``plan`` with the retrieval cheapest over a build and ``HORIZON`` changes at the current
    rows and rates, and the estimate of each under ``auto`` (seconds)."""
    if plan.get("partition") is not None:
        raise SchemaError(f"{name!r}: retrieve='auto' may choose graph retrieval, which does not take partition; "
                          "choose the retrieval")
    if name in db.views():  # declared again: the pick it made then, so that the definition is the same
        stored = db.view(name).definition.plan

        def rest(p: dict) -> dict:
            return {key: v for key, v in p.items() if key not in ("retrieve", "k", "auto")}

        if "auto" in stored and rest(stored) == rest(plan):
            return stored
    k = plan.get("k") or DEFAULT_K
    found = estimate(inputs_for(db, {**plan, "retrieve": "graph", "k": k}), "graph")
    chosen = found.cheapest_with_build
    retrieval = {"all": {"retrieve": "all"}, "dense": {"retrieve": k}, "graph": {"retrieve": "graph", "k": k}}
    auto = {"chose": chosen, **{c.retrieval: round(c.horizon_seconds, 1) for c in found.costs}}
    return {**{key: v for key, v in plan.items() if key != "k"}, **retrieval[chosen], "auto": auto}


def measured_reach(decisions: Sequence) -> float | None:
    """The share of an answer's DATA_SOURCE-driven decisions that asked it again (anything but a skip), or None
    before the view has had one."""
    driven = [d for d in decisions if d.strategy not in ("retract", "shadow", "reuse")
              and not d.reason.startswith(CONTEXT_REASONS)]
    if not driven:
        return None
    return sum(d.strategy != "skip" for d in driven) / len(driven)


def calibrated_rates(prompt_tokens: int, output_tokens: int, seconds: float) -> tuple[float, float] | None:
    """The prior rates scaled so that the measured calls would take the measured seconds (None without any)."""
    predicted = prompt_tokens / PROMPT_RATE + output_tokens / OUTPUT_RATE
    if seconds <= 0 or predicted <= 0:
        return None
    scale = predicted / seconds
    return PROMPT_RATE * scale, OUTPUT_RATE * scale


def describe(estimate: Estimate) -> list[tuple[str, str]]:
    """The estimate as (part, detail) lines, for ``EXPLAIN VIEW`` and the CLI."""
    i = estimate.inputs
    rate = "unknown" if i.edit_rate is None else f"{i.edit_rate:.3g}/h"
    lines = [("estimate inputs",
              f"passages={i.passages} outputs={i.outputs} passage_tokens={i.passage_tokens:.0f} "
              f"sentence_tokens={i.sentence_tokens:.0f} output_tokens={i.output_tokens:.0f} k={i.k} "
              f"extraction_calls/passage={i.extraction_calls:.2f} deletes={i.delete_share:.0%} edit_rate={rate} "
              f"rates={i.prompt_rate:.0f}/{i.output_rate:.1f} tok/s "
              + " ".join(f"reach[{r}]={i.reach[r]:.3f}" for r in RETRIEVALS)),
             ("estimate sources", " ".join(f"{name}={source}" for name, source in sorted(i.sources.items())))]
    for c in estimate.costs:
        mark = " (this view)" if c.retrieval == estimate.current else ""
        hour = "" if c.hour_seconds is None else f", {c.hour_seconds:.1f} s/hour"
        lines.append((f"estimate {c.retrieval}{mark}",
                      f"prompt {c.prompt_tokens:.0f} tokens; build {c.build_calls:.0f} calls {c.build_seconds:.1f} s; "
                      f"per change {c.change_calls:.2f} calls {c.change_seconds:.2f} s{hour}"))
    lines.append(("estimate verdict", f"cheapest per change: {estimate.cheapest_per_change}; over a build and "
                                      f"{HORIZON} changes: {estimate.cheapest_with_build}"))
    return lines


def generate_head(plan: dict) -> dict | None:
    """The ``llm_generate`` (or ``compose``) node at the head of a view's plan, inside its shards' union if it has
    one; None for any other view."""
    head = plan["of"] if is_shard_union(plan) else plan
    return head if head.get("op") in (GenerateOperator.kind, ComposeOperator.kind) else None


def _peers(db: "Database", data_source: str) -> dict[str, list[str]]:
    """Per retrieval, the stored views (shards included) of the ``LLM_GENERATE`` views over ``data_source``."""
    found: dict[str, list[str]] = {r: [] for r in RETRIEVALS}
    for name in db.views():
        plan = db.view(name).definition.plan
        head = generate_head(plan)
        if head is not None and head["data_source"]["name"] == data_source:
            found[retrieval_of(head)] += plan["views"] if is_shard_union(plan) else [name]
    return found


def inputs_for(db: "Database", plan: dict, *, sample: int = 200) -> CostInputs:
    """The cost model's inputs for an ``llm_generate`` ``plan``: the tables' rows now, and what the ledgers and the
    decision logs of the ``LLM_GENERATE`` views over its DATA_SOURCE measured (a share of changes reaching an
    answer is measured for each retrieval that such a view uses)."""
    store, count = db.store, db.runner.backend.count_tokens
    data_source, context = plan["data_source"]["name"], plan["context"]["name"]
    documents = list(store.get_rows(data_source).values())
    questions = list(store.get_rows(context).values())
    document, question = Template(plan["document"]), Template(plan["question"])
    texts = [document.render(row) for row in documents[:sample]]
    sentences = [s for t in texts for s in split_sentences(t)]
    retrieve = plan.get("retrieve", "all")
    k = retrieve if isinstance(retrieve, int) else plan.get("k") or DEFAULT_K
    sources = {"passage_tokens": "measured", "question_tokens": "measured"}
    peers = _peers(db, data_source)
    ledger = [e for views in peers.values() for view in views for e in store.get_ledger(view)
              if not is_embedding_operator(e.operator) and e.outcome == "paid"]
    answers = [e for e in ledger if not e.operator.endswith("/graph")]
    extractions = [e for e in ledger if e.operator.endswith("/graph")]
    output_tokens = sum(e.output_tokens for e in answers) / len(answers) if answers else plan.get("max_tokens", 64) / 2
    sources["output_tokens"] = "measured" if answers else "prior"
    reach, built = {}, []
    for r in RETRIEVALS:
        decisions = [d for view in peers[r] for d in store.get_decisions(view)]
        built += [d.version for d in decisions]
        measured = measured_reach(decisions)
        reach[r] = prior_reach(r, len(documents), k) if measured is None else measured
        sources[f"reach[{r}]"] = "prior" if measured is None else "measured on " + ",".join(peers[r])
    history = store.get_changes(1, store.get_latest_version(), [data_source])
    extracted = sum(c.after is not None for c in history)  # each insert or edit needs one extraction
    # The mix and rate of changes are those since the first of those views was built: a bulk load before it is
    # no maintenance.
    changes = [c for c in history if c.version > min(built)] if built else history
    delete_share = sum(c.after is None for c in changes) / len(changes) if changes else 0.0
    extraction_calls = len(extractions) / extracted if extractions and extracted else 1.0
    sources["extraction_calls"] = "measured" if extractions and extracted else "prior"
    sources["extraction_tokens"] = "measured" if extractions else "prior"
    sources["delete_share"] = "measured" if changes else "prior"
    edit_rate = None
    if len({c.version for c in changes}) > 1:
        times = store.get_commit_times(changes[0].version, changes[-1].version)
        span = max(times.values()) - min(times.values()) if times else 0.0
        edit_rate = len(changes) / (span / 3600.0) if span >= MIN_RATE_SPAN else None
    sources["edit_rate"] = "measured" if edit_rate is not None else "unknown"
    rates = calibrated_rates(sum(e.prompt_tokens - e.reused_tokens for e in ledger),
                             sum(e.output_tokens for e in ledger), sum(e.seconds for e in ledger))
    sources["rates"] = "measured" if rates else "prior"
    prompt_rate, output_rate = rates or (PROMPT_RATE, OUTPUT_RATE)
    return CostInputs(
        passages=len(documents), outputs=len(questions),
        passage_tokens=sum(map(count, texts)) / len(texts) if texts else 0.0,
        sentence_tokens=sum(map(count, sentences)) / len(sentences) if sentences else 0.0,
        question_tokens=(sum(count(question.render(q)) for q in questions[:sample]) / min(len(questions), sample)
                         if questions else 0.0),
        output_tokens=output_tokens, extraction_calls=extraction_calls, k=k, reach=reach,
        extraction_tokens=(sum(e.prompt_tokens for e in extractions) / len(extractions),
                           sum(e.output_tokens for e in extractions) / len(extractions)) if extractions else
        (sum(map(count, texts)) / len(texts) + count(EXTRACTION_SYSTEM) if texts else 0.0, EXTRACTION_OUTPUT),
        delete_share=delete_share, edit_rate=edit_rate, prompt_rate=prompt_rate, output_rate=output_rate,
        sources=sources)
