"""The documentation runs: every module's doctests, the README's Python tour, and a README entry per CLI command."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import deltamem
from deltamem.cli import app, bench_app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MODULES = sorted(
    m.name for m in pkgutil.walk_packages(deltamem.__path__, "deltamem.")
    if m.name not in ("deltamem.llm.local", "deltamem.llm.embed")  # need torch; covered by integration tests
)


@pytest.mark.parametrize("name", MODULES)
def test_module_doctests_pass(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_readme_tour_runs_on_the_test_backend(tmp_path, monkeypatch):
    block = re.search(r"## A five-minute tour\n+```python\n(.*?)```", README, re.S).group(1)
    assert 'dm.connect("app.db")' in block
    code = block.replace('dm.connect("app.db")', 'dm.connect("app.db", llm="test", embedder="test")')
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    db = namespace["db"]
    assert db.view("insights").rows(fresh=True, timeout=10).version == db.version
    namespace["sub"].close()
    db.close()


def test_every_cli_command_has_help_and_a_readme_line():
    commands = [(c.name or c.callback.__name__.replace("_", "-"), c) for c in app.registered_commands]
    commands += [(f"bench {c.name}", c) for c in bench_app.registered_commands]
    for name, command in commands:
        assert command.callback.__doc__ and "Example:" in command.callback.__doc__, name
        assert f"deltamem {name}" in README, f"README does not show `deltamem {name}`"
