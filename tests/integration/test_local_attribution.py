"""Attention attribution on the real local model: captured while generating, the same whether the answer was
decoded from scratch or regenerated over a reused KV cache with a draft, and drawn by ``deltamem explain --heatmap``."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import deltamem as dm
from deltamem.bench.datasets import default_data_dir, load_questions
from deltamem.cli import app
from deltamem.llm.base import CompletionRequest, Message
from deltamem.operators.documents import split_sentences

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def question():
    return load_questions(default_data_dir() / "2wikimultihopqa" / "dev_000_099.json")[3]


def rag(paragraphs: list[tuple[str, str]], question: str) -> tuple[CompletionRequest, tuple[str, ...]]:
    sentences = [s for title, text in paragraphs for s in split_sentences(f"{title}: {text}")]
    docs = "\n".join(f"[{i}] {title}: {text}" for i, (title, text) in enumerate(paragraphs, start=1))
    content = f"Documents:\n{docs}\n\nQuestion: {question}\nAnswer briefly."
    return CompletionRequest((Message("user", content),), max_tokens=16), tuple(sentences)


def test_attribution_is_captured_while_generating_and_changes_nothing(local_llm, question):
    request, sentences = rag([(p.title, p.text) for p in question.paragraphs[:4]], question.question)
    plain = local_llm.complete(request)
    attributed = local_llm.complete(request, attribute_to=sentences)
    assert attributed.output_ids == plain.output_ids and plain.attribution is None
    matrix = np.asarray(attributed.attribution.matrix)
    assert matrix.shape == (len(attributed.attribution.output_sentences), len(sentences))
    assert np.allclose(matrix.sum(axis=1), 1.0, atol=1e-3) and (matrix >= 0).all()
    assert " ".join(attributed.attribution.output_sentences).split() == attributed.text.split()


def test_a_regenerated_answer_has_the_attribution_of_a_from_scratch_one(local_llm, question):
    paragraphs = [(p.title, p.text) for p in question.paragraphs[:4]]
    request, sentences = rag(paragraphs, question.question)
    first = local_llm.complete(request, cache_key="attr", attribute_to=sentences)
    title, text = paragraphs[2]
    paragraphs[2] = (title, text.replace(".", ", as later sources say.", 1))
    edited, edited_sentences = rag(paragraphs, question.question)
    regenerated = local_llm.complete(edited, cache_key="attr", draft=first.output_ids, attribute_to=edited_sentences)
    scratch = local_llm.complete(edited, attribute_to=edited_sentences)
    assert regenerated.reused_tokens > 0 and regenerated.output_ids == scratch.output_ids
    assert np.allclose(regenerated.attribution.matrix, scratch.attribution.matrix, atol=1e-3)


def test_explain_draws_the_heat_map_of_a_generated_answer(local_llm, question, tmp_path):
    path = str(tmp_path / "rag.db")
    db = dm.connect(path, llm=local_llm, embedder="test", background=False)
    db.table("questions", key="qid", columns={"qid": "text", "question": "text"}).upsert(
        {"qid": question.qid, "question": question.question})
    db.table("docs", key="title", columns={"title": "text", "text": "text"}).upsert(
        [{"title": p.title, "text": p.text} for p in question.paragraphs[:3]])
    db.generate("answers", prompt="Answer from the documents.", context=db.table("questions"),
                data_source=db.table("docs"), max_tokens=16).rows(fresh=True)
    (deps,) = db.view("answers").explain(question.qid)["dependencies"].values()
    assert len(deps["attribution"]["context"]) == len(deps["provenance"]) > 3
    db.close()
    out = tmp_path / "heat.png"
    result = CliRunner().invoke(app, ["explain", path, "answers", question.qid, "--heatmap", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"\x89PNG")
