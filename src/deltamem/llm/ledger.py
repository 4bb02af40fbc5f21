"""The usage report: what was paid, what the memo saved, and what a full recompute would have paid.

    usage = db.usage(); usage.calls, usage.prompt_tokens, usage.by_view["digest"].calls

Every call is on the store's ledger (``deltamem.llm.runner`` writes it), completions and embeddings alike. ``paid``
completions are counted in the totals; memo hits are counted apart, with the tokens they saved; failed calls of
either kind are counted as ``failures``, and calls in flight when their process died as ``interrupted``. Embeddings
(one call per text) are counted apart, in ``embeddings`` and the fields after it: ``calls`` and the full-recompute
baseline count LLM calls, and "calls saved" compares those.

The full-recompute baseline of a view is what the same engine would pay without incremental maintenance: at every
version that changed the view's inputs, ask for every output again, the memo answering any call identical to one
paid before (``Store.commit_view`` says how it is counted). For a view run with ``strategy="full"`` it is what the
view paid. Its calls are exact for the row-wise operators and ``LLM_GENERATE``; for ``sem_agg``, ``sem_topk`` and
``sem_join`` the stored values' calls stand in for those a rebuild would make (a rebuilt tree, sort or blocking
could ask for other calls). Tokens and seconds are what each stored value cost when it was paid (an answer kept
without a call is costed at its last paid call): its tokens count the whole prompt, reused KV included, but the
seconds of a value refreshed over reused KV are those of that cheaper call, so for such views the baseline's seconds
understate a full recompute's (``deltamem bench edit-stream`` times both in one run). ``no_memo`` keeps the figure
of a system without a memo either: every stored value paid again at every refresh.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from deltamem.llm.embedding_runs import is_embedding_operator
from deltamem.shards import is_shard_view, parent_view
from deltamem.store.base import Baseline, CallCost, LedgerTotals


@dataclass
class CostTotals:
    """Summed ledger counts for one slice (all, one view, one operator)."""

    calls: int = 0
    prompt_tokens: int = 0  # prompt tokens computed
    reused_tokens: int = 0  # prompt tokens served from a KV / prefix cache
    output_tokens: int = 0
    seconds: float = 0.0
    memo_hits: int = 0
    saved_tokens: int = 0  # prompt + output tokens of the calls the memo answered
    failures: int = 0
    interrupted: int = 0  # calls in flight when their process died: maybe paid, cost unknown, paid again
    embeddings: int = 0  # texts embedded (paid), one embedding call each
    embedding_tokens: int = 0  # their tokens, where the embedder counts them
    embedding_seconds: float = 0.0
    embedding_memo_hits: int = 0  # texts whose embedding the memo answered

    def add(self, row: LedgerTotals) -> None:
        if row.outcome != "failed" and is_embedding_operator(row.operator):
            self._add_embeddings(row)
        elif row.outcome == "paid":
            self.calls += row.calls
            self.prompt_tokens += row.prompt_tokens
            self.reused_tokens += row.reused_tokens
            self.output_tokens += row.output_tokens
            self.seconds += row.seconds
        elif row.outcome == "memo":
            self.memo_hits += row.calls
            self.saved_tokens += row.prompt_tokens + row.reused_tokens + row.output_tokens
        elif row.outcome == "interrupted":
            self.interrupted += row.calls
        else:
            self.failures += row.calls

    def _add_embeddings(self, row: LedgerTotals) -> None:
        if row.outcome == "paid":
            self.embeddings += row.calls
            self.embedding_tokens += row.prompt_tokens
            self.embedding_seconds += row.seconds
        else:
            self.embedding_memo_hits += row.calls


@dataclass(frozen=True)
class FullRecompute:
    """The counterfactual for one view: ``refreshes`` full recomputes costing ``cost`` in all (the memo answering
    identical calls), ``no_memo`` without a memo, and ``once_now``: every stored value paid once more, now."""

    refreshes: int
    cost: CallCost
    once_now: CallCost
    no_memo: CallCost = CallCost()


@dataclass
class Usage(CostTotals):
    """``db.usage()``: totals as attributes, then ``by_view``, ``by_operator`` and ``full_recompute`` per view."""

    by_view: dict[str, CostTotals] = field(default_factory=dict)
    by_operator: dict[tuple[str, str], CostTotals] = field(default_factory=dict)
    full_recompute: dict[str, FullRecompute] = field(default_factory=dict)

    @classmethod
    def build(
        cls, ledger: list[LedgerTotals], baselines: dict[str, Baseline], once_now: dict[str, CallCost]
    ) -> "Usage":
        usage = cls()
        by_view: dict[str, CostTotals] = defaultdict(CostTotals)
        by_operator: dict[tuple[str, str], CostTotals] = defaultdict(CostTotals)
        for row in ledger:  # a shard view's under its sharded view (``deltamem.shards``)
            usage.add(row)
            by_view[parent_view(row.view)].add(row)
            by_operator[(parent_view(row.view), row.operator)].add(row)
        usage.by_view = dict(by_view)
        usage.by_operator = dict(by_operator)
        # A sharded view's baseline is its shards' summed: its own (the union's) pays nothing and would count each
        # version once more.
        sharded = {parent_view(view) for view in baselines if is_shard_view(view)}
        summed: dict[str, Baseline] = defaultdict(Baseline)
        now: dict[str, CallCost] = defaultdict(CallCost)
        for view, baseline in baselines.items():
            if view not in sharded:
                summed[parent_view(view)] += baseline
        for view, cost in once_now.items():
            now[parent_view(view)] += cost
        usage.full_recompute = {view: FullRecompute(b.refreshes, b.cost, now[view], b.no_memo)
                                for view, b in summed.items()}
        return usage

    @property
    def full_recompute_calls(self) -> int:
        """LLM calls a full recompute at every refresh would have paid in this engine, memo included."""
        return sum(f.cost.calls for f in self.full_recompute.values())

    @property
    def full_recompute_no_memo_calls(self) -> int:
        """The same without a memo: every stored value paid again at every refresh."""
        return sum(f.no_memo.calls for f in self.full_recompute.values())

    def rich_table(self):  # -> rich.table.Table; imported lazily so the core does not need rich
        """A table with one row per view and a total: paid against a full recompute at every refresh."""
        from rich.table import Table

        from deltamem.display import literal

        table = Table(title="LLM cost: deltamem (incremental) vs full recompute at every refresh (same engine and "
                            "memo; 'no memo': every stored value paid again)")
        for name in ("view", "refreshes", "calls", "full calls", "tokens", "full tokens", "seconds", "full s",
                     "memo hits", "calls saved", "full calls, no memo"):
            table.add_column(name, justify="left" if name == "view" else "right")
        views = sorted(set(self.by_view) | set(self.full_recompute))
        none = FullRecompute(0, CallCost(), CallCost())
        rows = [(v, self.by_view.get(v, CostTotals()), self.full_recompute.get(v, none)) for v in views]
        total = FullRecompute(sum(f.refreshes for *_, f in rows), sum((f.cost for *_, f in rows), CallCost()),
                              CallCost(), sum((f.no_memo for *_, f in rows), CallCost()))
        for name, paid, full in [*rows, ("total", self, total)]:
            saved = 1 - paid.calls / full.cost.calls if full.cost.calls else 0.0
            table.add_row(
                literal(name), str(full.refreshes), str(paid.calls), str(full.cost.calls),
                str(paid.prompt_tokens + paid.output_tokens), str(full.cost.prompt_tokens + full.cost.output_tokens),
                f"{paid.seconds:.1f}", f"{full.cost.seconds:.1f}", str(paid.memo_hits), f"{saved:.0%}",
                str(full.no_memo.calls), style="bold" if name == "total" else None,
            )
        return table
