"""The documentation runs: every module's doctests, the README's Python tour, and a README entry per CLI command."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import deltamem
from deltamem.cli import app, bench_app
from deltamem.sql.executor import execute_script
from deltamem.sql.planner import GENERATE_OPTIONS

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
    assert db.view("people").rows(fresh=True, timeout=10).version == db.version
    namespace["sub"].close()
    db.close()


def test_readme_tour_shows_what_it_printed_on_the_local_model():
    # The output block itself is checked against a real run by tests/integration/test_readme_tour.py.
    found = re.search(r"## A five-minute tour\n+```python\n(.*?)```\n(.*?)```text\n(.*?)```", README, re.S)
    assert found, "the tour is followed by the output it prints"
    code, output = found.group(1), found.group(3)
    assert "print(" in code and "sem_map(" in code
    mapped = [line for line in output.splitlines() if " -> " in line]
    assert mapped and all(line.split(" -> ")[1].strip() for line in mapped)  # a kept row, and its sem_map output


def test_readme_states_llm_generates_defaults_as_the_signature_has_them():
    block = re.search(r"## Continuous `LLM_GENERATE` views\n+```python\n(.*?)```", README, re.S).group(1)
    stated = re.search(r"# every option, with its default: (.*?)\n(?!#)", block, re.S).group(1)
    stated = " ".join(line.lstrip("# ") for line in stated.splitlines())
    documented = eval(f"dict({stated})")  # noqa: S307 - our own documentation
    signature = inspect.signature(deltamem.Database.generate).parameters.values()
    assert documented == {p.name: p.default for p in signature if p.default is not p.empty}


def test_readme_sql_section_documents_llm_generates_options_and_runs():
    section = README.split("\n## SQL\n", 1)[1].split("\n## ", 1)[0]
    for option in GENERATE_OPTIONS:
        assert f"`{option.upper()}" in section, f"the SQL section does not document {option.upper()}"
    for text in ("CONTEXT = questions", "max_tokens =>", "'all'"):
        assert text in section, text
    for block in re.findall(r"```sql\n(.*?)```", section, re.S):
        with deltamem.connect(":memory:", llm="test", embedder="test", background=False) as db:
            assert all(result.status for _statement, result in execute_script(db, block))


def test_readme_names_every_setting_the_openai_backends_read():
    for name in ("MODEL", "BASE_URL", "API_KEY", "EMBED_MODEL", "EMBED_BASE_URL", "EMBED_API_KEY"):
        assert f"DELTAMEM_OPENAI_{name}" in README, name


def test_every_cli_command_has_help_and_a_readme_line():
    commands = [(c.name or c.callback.__name__.replace("_", "-"), c) for c in app.registered_commands]
    commands += [(f"bench {c.name}", c) for c in bench_app.registered_commands]
    for name, command in commands:
        assert command.callback.__doc__ and "Example:" in command.callback.__doc__, name
        assert f"deltamem {name}" in README, f"README does not show `deltamem {name}`"
