"""The bounded load test: 20 writers post 10,000 changes to a real server on loopback while 5 subscribers listen.

Correctness only (timings are `deltamem bench serve`'s job): every subscriber sees every change row of the view
exactly once and in order, and the view ends equal to a from-scratch recompute of the final table.
"""

from __future__ import annotations

from deltamem.bench.serve_load import run_load


def test_twenty_writers_and_five_subscribers_lose_and_repeat_nothing(tmp_path):
    report = run_load(writers=20, changes=10_000, subscribers=5, batch=10, workdir=str(tmp_path))
    assert (report.changes, report.requests, report.versions) == (10_000, 1_000, 1_000)
    assert report.delivered_rows > 10_000  # inserts add one row each; updates retract and add
    assert report.exactly_once
    assert report.equals_recompute
