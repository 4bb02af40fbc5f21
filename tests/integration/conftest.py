"""One real local model per test session: loading SmolLM2 takes about half a minute on two cores."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def local_llm():
    from deltamem.llm.local import LocalLLM

    return LocalLLM()
