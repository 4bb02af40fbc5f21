"""The README's five-minute tour on the local model prints exactly the output the README shows beneath it, and
loading the model draws no progress bar of transformers'."""

from __future__ import annotations

import contextlib
import io
import re
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_the_tour_prints_what_the_readme_shows(tmp_path, monkeypatch, capsys):
    found = re.search(r"## A five-minute tour\n+```python\n(.*?)```\n(.*?)```text\n(.*?)```", README, re.S)
    assert found, "the tour is followed by a ```text block of its output"
    code, shown = found.group(1), found.group(3)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the subscription's thread prints here too
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
        deadline = time.monotonic() + 30
        while out.getvalue().count("\n") < shown.count("\n") and time.monotonic() < deadline:
            time.sleep(0.05)  # the subscription delivers its snapshot on its own thread
        namespace["sub"].close()
    db = namespace["db"]
    assert db.usage().calls == 5
    db.close()
    assert out.getvalue() == shown
    assert "de-quantizing" not in capsys.readouterr().err  # the GGUF loader's raw tqdm bar is silenced
