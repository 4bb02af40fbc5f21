"""Attribution: attention mass per (output sentence, context sentence), and its heat map."""

from __future__ import annotations

import numpy as np

from deltamem.memory.attribution import attribute, locate, output_sentence_of, render_heatmap, token_segments


def test_rows_sum_attention_per_context_sentence_and_normalise():
    # 3 prompt tokens: two in sentence 0, one outside any sentence; 2 output tokens in one sentence
    attention = np.array([[0.2, 0.2, 0.6], [0.5, 0.0, 0.5]])
    matrix = attribute(attention, [0, 0, -1], num_sentences=2, output_sentence=[0, 0])
    assert matrix.shape == (1, 2)
    np.testing.assert_allclose(matrix, [[1.0, 0.0]])


def test_attention_to_two_sentences_splits_by_mass():
    attention = np.array([[0.3, 0.1], [0.0, 0.4]])
    matrix = attribute(attention, [0, 1], num_sentences=2, output_sentence=[0, 1])
    np.testing.assert_allclose(matrix, [[0.75, 0.25], [0.0, 1.0]])


def test_tokens_map_to_the_sentences_that_hold_them():
    text = "Documents: Ada was born in 1815. She wrote notes. Question: when?"
    spans = locate(text, ["Ada was born in 1815.", "She wrote notes."])
    offsets = [(0, 10), (11, 14), (15, 18), (33, 36), (51, 59)]
    assert token_segments(offsets, spans) == [-1, 0, 0, 1, -1]
    assert output_sentence_of(["It", " was", " 1815", ".", " Yes", "."]) == [0, 0, 0, 0, 1, 1]


def test_heatmap_is_written_as_a_png(tmp_path):
    path = tmp_path / "heat.png"
    render_heatmap(np.array([[0.7, 0.3]]), ["Ada was born in 1815."], ["Ada was born in 1815.", "Tea."], str(path),
                   title="q1")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
