"""``deltamem bench engine``: every batch size maintains every change, and the figures add up."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from deltamem.bench.engine import run_engine_bench
from deltamem.cli import app
from deltamem.errors import ConfigError


def test_each_batch_size_reaches_the_view_and_reports_rates_that_agree_with_its_wall_time():
    result = run_engine_bench(changes=60, batches=[1, 25])
    assert [r["batch"] for r in result["runs"]] == [1, 25]
    assert [r["versions"] for r in result["runs"]] == [60, 3]
    for r in result["runs"]:
        assert r["changes_per_second"] == pytest.approx(60 / r["wall_seconds"], rel=0.01)


def test_bad_sizes_are_refused():
    with pytest.raises(ConfigError, match="at least 1"):
        run_engine_bench(changes=10, batches=[0])
    result = CliRunner().invoke(app, ["bench", "engine", "--batches", "1,x"])
    assert result.exit_code == 1 and "not a comma-separated list" in result.output
