"""``GET /metrics``: Prometheus text read from the store at scrape time.

    registry = metrics_registry(db, http_errors); generate_latest(registry)

Every figure comes from the store (ledger, baselines, view versions) when scraped, so the numbers survive a
restart and agree with ``deltamem usage``; only ``deltamem_http_errors_total`` is this process's own count.
We use prometheus_client for the exposition format rather than printing it by hand; its registry is per app, not
the library's global one, so two apps in one process never mix their figures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from deltamem.engine import Database


class DeltamemCollector(Collector):
    """Calls, tokens computed and reused, memo savings, the full-recompute counterfactual, lag and errors."""

    def __init__(self, db: "Database", http_errors: Counter[int]):
        self._db = db
        self._http_errors = http_errors

    def collect(self) -> Iterator[Metric]:
        usage = self._db.usage()
        views = self._db.views()
        counters = {
            "llm_calls": ("LLM calls paid", lambda t: t.calls),
            "prompt_tokens_computed": ("Prompt tokens computed by the model", lambda t: t.prompt_tokens),
            "prompt_tokens_reused": ("Prompt tokens served from a KV or prefix cache", lambda t: t.reused_tokens),
            "output_tokens": ("Output tokens generated", lambda t: t.output_tokens),
            "llm_seconds": ("Seconds spent in paid LLM calls", lambda t: t.seconds),
            "memo_hits": ("Calls answered by the memo instead of the model", lambda t: t.memo_hits),
            "memo_saved_tokens": ("Tokens the memo saved", lambda t: t.saved_tokens),
            "llm_failures": ("LLM calls that failed", lambda t: t.failures),
        }
        for name, (doc, read) in counters.items():
            family = CounterMetricFamily(f"deltamem_{name}", doc, labels=["view"])
            for view, totals in sorted(usage.by_view.items()):
                family.add_metric([view], read(totals))
            yield family
        full_calls = CounterMetricFamily("deltamem_full_recompute_calls",
                                         "LLM calls a full recompute at every refresh would have paid (same engine, "
                                         "memo included)", labels=["view"])
        full_tokens = CounterMetricFamily("deltamem_full_recompute_tokens",
                                          "Tokens a full recompute at every refresh would have used", labels=["view"])
        saved = GaugeMetricFamily("deltamem_calls_saved_ratio",
                                  "1 - calls paid / full-recompute calls (0 before the first refresh)", labels=["view"])
        for view, full in sorted(usage.full_recompute.items()):
            paid = usage.by_view.get(view)
            full_calls.add_metric([view], full.cost.calls)
            full_tokens.add_metric([view], full.cost.prompt_tokens + full.cost.output_tokens)
            saved.add_metric([view], 1 - (paid.calls if paid else 0) / full.cost.calls if full.cost.calls else 0.0)
        yield from (full_calls, full_tokens, saved)

        latest = self._db.version
        version = GaugeMetricFamily("deltamem_version", "The latest committed version")
        version.add_metric([], latest)
        yield version
        lag = GaugeMetricFamily("deltamem_view_lag_versions", "Committed versions a view does not reflect yet",
                                labels=["view"])
        lag_seconds = GaugeMetricFamily("deltamem_view_lag_seconds",
                                        "Seconds since the oldest commit a view does not reflect yet", labels=["view"])
        error_rows = GaugeMetricFamily("deltamem_view_error_rows", "Rows of a view whose LLM call failed",
                                       labels=["view"])
        for name in views:
            behind, seconds = self._db.lag(name)
            lag.add_metric([name], behind)
            lag_seconds.add_metric([name], seconds)
            error_rows.add_metric([name], self._db.store.count_view_rows(name)[1])
        yield from (lag, lag_seconds, error_rows)
        maintenance = GaugeMetricFamily("deltamem_maintenance_stopped",
                                        "1 when background maintenance stopped on an error")
        maintenance.add_metric([], 1 if self._db.maintainer.error is not None else 0)
        yield maintenance
        http = CounterMetricFamily("deltamem_http_errors", "HTTP responses with a 4xx or 5xx status, by status",
                                   labels=["status"])
        for status, count in sorted(self._http_errors.items()):
            http.add_metric([str(status)], count)
        yield http


def metrics_registry(db: "Database", http_errors: Counter[int]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DeltamemCollector(db, http_errors))
    return registry
